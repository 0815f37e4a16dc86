"""Tiny stand-ins for Ovi's frozen components, and a tiny checkpoint folder in the official layout.

Everything here is seeded random weights at test size, written with the SAME file names,
file formats and key names as the real downloads, so the real loaders are the ones tested:

    TextEncoder  umT5: 2 layers, d_model 64, 2 heads, d_ff 128, tokenizer of ~400 pieces
    VideoVAE     Wan2.2 layout at width 8 (still z 48, 16x spatial, 4x temporal)
    AudioDecoder MMAudio mel VAE at width 16 (latent 20, 80 mel bins) + a 3-stage BigVGAN

The state-dict generators below spell out the upstream module names (Wan t5.py, vae2_2.py,
MMAudio) by hand, independently of the key conversions they are used to test.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ovi_attn_capture.components.checkpoints import CheckpointPaths, checkpoint_paths
from ovi_attn_capture.model import registry

TINY_T5 = dict(d_model=64, inner=64, num_heads=2, d_ff=128, num_layers=2, num_buckets=32)
TINY_VAE = dict(dim=8, dec_dim=8, z_dim=48, num_res_blocks=1)
TINY_MEL_VAE = dict(hidden_dim=16, latent_dim=20, mel_bins=80)
TINY_BIGVGAN = dict(num_mels=80, upsample_rates=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8),
                    upsample_initial_channel=32, resblock_kernel_sizes=(3, 5))


# ============================================================================ tokenizer

_WORDS = """
a an the and or but of to in on at by for with from into over under near behind between
is are was were be been being has have had do does did will would can could should may might
i you he she it we they me him her us them my your his its our their this that these those
man woman men women boy girl child children person people dog cat bird horse car street road
city room kitchen table chair door window light sun moon sky rain snow wind water sea river
tree forest mountain field house home stage music song voice sound noise guitar piano drum
speaks says said talks sings plays walks runs looks smiles laughs turns holds opens closes
slowly quickly softly loudly quietly gently while then when where who what why how not no yes
red blue green black white yellow dark bright warm cold old young small big large long short
shot close medium wide camera scene frame video audio speech shirt hat hair face eyes hands
one two three first last hello world good morning night day time today there here up down
""".split()

_PIECES = ["ing", "ed", "er", "est", "ly", "s", "es", "tion", "un", "re", "in", "on", "an", "at",
           "en", "or", "ar", "th", "st", "ch", "sh", "ou", "ea", "ee", "oo", "ll"]

_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"-()<>/[]&%+=*#@")


def build_tiny_tokenizer() -> Tokenizer:
    """A umT5-like Unigram tokenizer: <pad>=0, </s>=1, <unk>=2, '▁'-prefixed word pieces, EOS appended.

    Whole words score best, then sub-word pieces, then single characters, so words outside the
    list split into several pieces; characters outside the list become <unk>.
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -5.0) for w in _WORDS]
    vocab += [(p, -8.0) for p in _PIECES] + [("▁" + p, -8.5) for p in _PIECES]
    vocab += [(c, -10.0) for c in _CHARS] + [("▁" + c, -10.5) for c in _CHARS]
    return unigram_tokenizer(vocab)


def unigram_tokenizer(vocab: list[tuple[str, float]], lowercase: bool = False) -> Tokenizer:
    """A umT5-style Unigram tokenizer from (piece, score) pairs whose first three are
    <pad>, </s>, <unk>: '▁' word boundaries, whitespace runs collapsed, EOS appended."""
    seen, unique = set(), []
    for piece, score in vocab:  # a piece may appear as a word and as a character ("a", "i"): keep the first
        if piece not in seen:
            seen.add(piece)
            unique.append((piece, score))
    tokenizer = Tokenizer(models.Unigram(unique, unk_id=2, byte_fallback=False))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps + [normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return tokenizer


# ============================================================================ umT5 (Wan names)

def wan_t5_shapes(vocab: int, d_model: int, inner: int, num_heads: int, d_ff: int, num_layers: int,
                  num_buckets: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of Wan's T5Encoder (t5.py, shared_pos=False: one position bias per block)."""
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (vocab, d_model)}
    for i in range(num_layers):
        b = f"blocks.{i}"
        shapes[f"{b}.norm1.weight"] = (d_model,)
        for name in "qkv":
            shapes[f"{b}.attn.{name}.weight"] = (inner, d_model)
        shapes[f"{b}.attn.o.weight"] = (d_model, inner)
        shapes[f"{b}.norm2.weight"] = (d_model,)
        shapes[f"{b}.ffn.gate.0.weight"] = (d_ff, d_model)
        shapes[f"{b}.ffn.fc1.weight"] = (d_ff, d_model)
        shapes[f"{b}.ffn.fc2.weight"] = (d_model, d_ff)
        shapes[f"{b}.pos_embedding.embedding.weight"] = (num_buckets, num_heads)
    shapes["norm.weight"] = (d_model,)
    return shapes


def tiny_t5_state_dict(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in wan_t5_shapes(vocab, **TINY_T5).items():
        if "norm" in key and "embedding" not in key:
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key == "token_embedding.weight":
            state[key] = torch.randn(shape, generator=gen)
        else:  # fan-in scaled, like upstream's init, so activations stay O(1)
            state[key] = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
    return state


# ============================================================================ Wan2.2 VAE (Wan names)

def wan_vae_shapes(dim: int = 160, dec_dim: int = 256, z_dim: int = 48, num_res_blocks: int = 2,
                   dim_mult=(1, 2, 4, 4), temporal_down=(False, True, True)) -> dict[str, tuple[int, ...]]:
    """Key -> shape of upstream WanVAE_ (vae2_2.py), walked the way its __init__ builds modules."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, c_in, c_out, kernel):
        shapes[f"{name}.weight"] = (c_out, c_in, *kernel)
        shapes[f"{name}.bias"] = (c_out,)

    def resblock(p, c_in, c_out):  # residual = (RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv)
        shapes[f"{p}.residual.0.gamma"] = (c_in, 1, 1, 1)
        conv(f"{p}.residual.2", c_in, c_out, (3, 3, 3))
        shapes[f"{p}.residual.3.gamma"] = (c_out, 1, 1, 1)
        conv(f"{p}.residual.6", c_out, c_out, (3, 3, 3))
        if c_in != c_out:
            conv(f"{p}.shortcut", c_in, c_out, (1, 1, 1))

    def middle(p, c):
        resblock(f"{p}.middle.0", c, c)
        shapes[f"{p}.middle.1.norm.gamma"] = (c, 1, 1)  # image RMS_norm in the AttentionBlock
        conv(f"{p}.middle.1.to_qkv", c, 3 * c, (1, 1))
        conv(f"{p}.middle.1.proj", c, c, (1, 1))
        resblock(f"{p}.middle.2", c, c)

    # encoder: patchified 12 channels in, 2*z out
    dims = [dim * u for u in (1, *dim_mult)]
    conv("encoder.conv1", 12, dims[0], (3, 3, 3))
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        p = f"encoder.downsamples.{i}.downsamples"
        for j in range(num_res_blocks):
            resblock(f"{p}.{j}", c_in if j == 0 else c_out, c_out)
        if i != len(dim_mult) - 1:
            conv(f"{p}.{num_res_blocks}.resample.1", c_out, c_out, (3, 3))
            if temporal_down[i]:
                conv(f"{p}.{num_res_blocks}.time_conv", c_out, c_out, (3, 1, 1))
    middle("encoder", dims[-1])
    shapes["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("encoder.head.2", dims[-1], 2 * z_dim, (3, 3, 3))
    conv("conv1", 2 * z_dim, 2 * z_dim, (1, 1, 1))
    conv("conv2", z_dim, z_dim, (1, 1, 1))

    # decoder: z in, 12 channels out, temporal upsampling mirrored
    dims = [dec_dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
    temporal_up = temporal_down[::-1]
    conv("decoder.conv1", z_dim, dims[0], (3, 3, 3))
    middle("decoder", dims[0])
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
        p = f"decoder.upsamples.{i}.upsamples"
        for j in range(num_res_blocks + 1):
            resblock(f"{p}.{j}", c_in if j == 0 else c_out, c_out)
        if i != len(dim_mult) - 1:
            conv(f"{p}.{num_res_blocks + 1}.resample.1", c_out, c_out, (3, 3))
            if temporal_up[i]:
                conv(f"{p}.{num_res_blocks + 1}.time_conv", c_out, 2 * c_out, (3, 1, 1))
    shapes["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    conv("decoder.head.2", dims[-1], 12, (3, 3, 3))
    return shapes


def _random_like_init(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Norm scales 1, biases small, weights ~ N(0, 1/fan_in): a stable random network."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("gamma"):
            state[key] = torch.ones(shape)
        elif key.endswith("bias"):
            state[key] = 0.01 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
    return state


def tiny_video_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    return _random_like_init(wan_vae_shapes(**TINY_VAE), seed)


# ============================================================================ MMAudio (upstream names)

def tiny_mel_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """v1-16.pth-shaped: raw (unfolded) MP weights, mel statistics, and encoder keys that we skip."""
    from ovi_attn_capture.components.audio_vae import MelVAEDecoder

    gen = torch.Generator().manual_seed(seed)
    names = MelVAEDecoder(**TINY_MEL_VAE).state_dict()
    state = {}
    for key, value in names.items():
        if key.endswith(".weight"):
            state[key] = torch.randn(value.shape, generator=gen)  # folded to unit norm at load
        else:
            state[key] = value.clone()
    bins = TINY_MEL_VAE["mel_bins"]
    state["data_mean"] = torch.linspace(-1.6, -3.0, bins).view(1, bins, 1)  # log10-mel-like levels
    state["data_std"] = torch.full((1, bins, 1), 0.9)
    # stand-ins for the encoder half the real file carries; the loader must ignore them
    state["encoder.conv_in.weight"] = torch.randn(TINY_MEL_VAE["hidden_dim"], bins, 3, generator=gen)
    state["encoder.learnable_gain"] = torch.zeros([])
    return state


def tiny_bigvgan_state_dict(seed: int = 0, folded: bool = False) -> dict[str, torch.Tensor]:
    """A generator state dict in the training-time form: every conv as weight_g / weight_v."""
    from ovi_attn_capture.components.audio_vae import BigVGANConfig, BigVGANGenerator

    gen = torch.Generator().manual_seed(seed)
    names = BigVGANGenerator(BigVGANConfig(**TINY_BIGVGAN)).state_dict()
    state = {}
    for key, value in names.items():
        if key.endswith(".weight") and not folded:
            v = torch.randn(value.shape, generator=gen) / (value[0].numel() ** 0.5)
            norm = v.flatten(1).norm(dim=1).view(-1, *[1] * (v.ndim - 1))
            state[key[: -len("weight")] + "weight_g"] = norm * (0.2 + 0.4 * torch.rand(norm.shape, generator=gen))
            state[key[: -len("weight")] + "weight_v"] = v
        elif key.endswith(".weight"):
            state[key] = torch.randn(value.shape, generator=gen) / (value[0].numel() ** 0.5)
        elif key.endswith(("alpha", "beta")):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)  # log-scale snake parameters
        elif key.endswith("bias"):
            state[key] = 0.01 * torch.randn(value.shape, generator=gen)
        else:  # the anti-aliasing filters are stored in the real file too
            state[key] = value.clone()
    return state


# ============================================================================ the folder

def write_official_layout(ckpt_dir: str | os.PathLike, model: str = "720x720_5s",
                          fusion_state_dict: dict[str, torch.Tensor] | None = None, seed: int = 0) -> CheckpointPaths:
    """Write tiny components under the official names; sizes are recovered from tensor shapes on load.

    The fusion checkpoint is written only when given (as safetensors at Ovi/<model file>).
    """
    if not registry.get(model).released:
        raise ValueError(f"{model!r} is not a released model (no official folder)")
    paths = checkpoint_paths(ckpt_dir, model)
    for path in (paths.t5, paths.audio_vae, paths.fusion):
        path.parent.mkdir(parents=True, exist_ok=True)
    paths.tokenizer_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tiny_tokenizer()
    tokenizer.save(str(paths.tokenizer_dir / "tokenizer.json"))
    torch.save(tiny_t5_state_dict(tokenizer.get_vocab_size(), seed), paths.t5)
    torch.save(tiny_video_vae_state_dict(seed), paths.video_vae)
    torch.save(tiny_mel_vae_state_dict(seed), paths.audio_vae)
    torch.save({"generator": tiny_bigvgan_state_dict(seed)}, paths.vocoder)
    if fusion_state_dict is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in fusion_state_dict.items()}, str(paths.fusion))
    return paths

