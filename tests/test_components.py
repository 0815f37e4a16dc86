"""Frozen components: key conversions, strict loading from the official layout, decoding, tokens."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from ovi_attn_capture.components import checkpoints
from ovi_attn_capture.components.audio_vae import (AudioDecoder, BigVGANConfig, BigVGANGenerator, fold_mp_weight,
                                        fold_weight_norm, kaiser_sinc_filter, mel_vae_from_state,
                                        vocoder_from_state)
from ovi_attn_capture.components.checkpoints import resolve_checkpoint_dir, set_offline, snap_size
from ovi_attn_capture.model.registry import MODELS
from ovi_attn_capture.components.text_encoder import TextEncoder, clean_text, umt5_from_wan_state, wan_t5_to_hf
from ovi_attn_capture.components.tiny import (TINY_BIGVGAN, build_tiny_tokenizer, tiny_bigvgan_state_dict,
                                              tiny_mel_vae_state_dict, tiny_t5_state_dict, wan_t5_shapes,
                                              wan_vae_shapes, write_official_layout)
from ovi_attn_capture.components.video_vae import (LATENT_MEAN, LATENT_STD, VideoVAE, vae_from_wan_state,
                                        wan_vae_config_from_state, wan_vae_to_diffusers)
from ovi_attn_render.common.errors import UserError



@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    fusion = {"video_model.head.head.weight": torch.zeros(4, 4, dtype=torch.bfloat16)}
    write_official_layout(root, "720x720_5s", fusion_state_dict=fusion, seed=0)
    return root


def _meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# ============================================================================ text

XXL = dict(vocab=256384, d_model=4096, inner=4096, num_heads=64, d_ff=10240, num_layers=24, num_buckets=32)


def test_t5_key_mapping_is_complete_at_xxl_size():
    wan = _meta_state(wan_t5_shapes(**XXL))
    model = umt5_from_wan_state(wan, device="meta")  # strict load: nothing missing, nothing unexpected
    cfg = model.config
    assert (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff, cfg.num_layers) == (4096, 64, 64, 10240, 24)
    assert cfg.dense_act_fn == "gelu_new" and cfg.is_gated_act  # tanh GELU gate, as upstream
    ours = {k: tuple(v.shape) for k, v in wan_t5_to_hf(wan).items()}
    assert ours == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert model.encoder.embed_tokens.weight is model.shared.weight


def test_t5_rejects_unknown_key():
    state = tiny_t5_state_dict(300)
    state["blocks.0.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="blocks.0.attn.extra.weight"):
        wan_t5_to_hf(state)


def _reference_umt5(state: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """umT5 encoder straight from Wan's t5.py semantics, on the real tokens only (no padding)."""
    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    x = state["token_embedding.weight"][torch.tensor(ids)]
    n = len(ids)
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    half = 16  # 32 buckets, bidirectional
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    far = 8 + (torch.log(dist.float().clamp(min=1) / 8) / math.log(128 / 8) * 8).long()
    bucket = bucket + torch.where(dist < 8, dist, far.clamp(max=half - 1))
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(layers):
        p = lambda name: state[f"blocks.{i}.{name}"]  # noqa: E731
        heads = p("pos_embedding.embedding.weight").shape[1]
        h = rms(x, p("norm1.weight"))
        q, k, v = (h @ p(f"attn.{c}.weight").T for c in "qkv")
        q, k, v = (t.view(n, heads, -1) for t in (q, k, v))
        bias = p("pos_embedding.embedding.weight")[bucket].permute(2, 0, 1)  # [H, n, n]
        attn = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) + bias, dim=-1)  # no 1/sqrt(d) in T5
        x = x + torch.einsum("hij,jhd->ihd", attn, v).reshape(n, -1) @ p("attn.o.weight").T
        h = rms(x, p("norm2.weight"))
        gate = F.gelu(h @ p("ffn.gate.0.weight").T, approximate="tanh")
        x = x + (gate * (h @ p("ffn.fc1.weight").T)) @ p("ffn.fc2.weight").T
    return rms(x, state["norm.weight"])


def test_tiny_encoder_matches_independent_umt5():
    enc = TextEncoder.tiny(seed=3)
    state = tiny_t5_state_dict(enc.tokenizer.get_vocab_size(), seed=3)
    texts = ["A woman sings softly in the kitchen.", "jitter, bad hands, blur, distortion"]
    outs = enc.encode(texts)
    for text, out in zip(texts, outs):
        ids = [t.id for t in enc.tokenize(text)]
        assert out.shape == (len(ids), enc.text_dim) and ids[-1] == 1  # trimmed, EOS included
        torch.testing.assert_close(out, _reference_umt5(state, ids), rtol=1e-4, atol=1e-4)


def test_tokens_match_tokenizer_offsets():
    enc = TextEncoder.tiny()
    text = "  The   zebra speaks:&amp;amp; <S>Hello world!<E> <AUDCAP>rain<ENDAUDCAP>"
    cleaned = clean_text(text)
    tokens = enc.tokenize(text)
    encoding = enc.tokenizer.encode(cleaned)
    assert [t.id for t in tokens] == encoding.ids
    assert [(t.start, t.end) for t in tokens[:-1]] == encoding.offsets[:-1]
    assert [t.index for t in tokens] == list(range(len(tokens)))
    eos = tokens[-1]
    assert eos.piece == "</s>" and eos.start == eos.end == len(cleaned)
    # spans point into the cleaned text, and unknown words split into several pieces
    for t in tokens[:-1]:
        assert cleaned[t.start : t.end].strip() == t.piece.replace("▁", " ").strip()
    pieces_per_word = {}
    for t in tokens[:-1]:
        word = len(cleaned[: t.end].split())
        pieces_per_word[word] = pieces_per_word.get(word, 0) + 1
    assert max(pieces_per_word.values()) > 1
    assert len(enc.encode([text])[0]) == len(tokens)


def test_long_prompt_is_truncated_with_eos_last():
    enc = TextEncoder.tiny()
    tokens = enc.tokenize("word " * 700)
    assert len(tokens) == enc.text_len and tokens[-1].id == 1
    assert enc.encode(["word " * 700])[0].shape == (enc.text_len, enc.text_dim)


def test_empty_prompt_is_just_eos_and_eos_is_required():
    enc = TextEncoder.tiny()
    tokens = enc.tokenize("   ")
    assert [(t.id, t.start, t.end) for t in tokens] == [(1, 0, 0)]
    no_eos = build_tiny_tokenizer()
    no_eos.post_processor = None
    with pytest.raises(UserError, match="</s>"):
        TextEncoder(no_eos, enc.model)


def test_clean_text_like_upstream():
    assert clean_text("  caf\u00c3\u00a9 &amp;amp; tea\t\n ok ") == "café & tea ok"
    assert clean_text("a\u00a0\u00a0b") == "a b"


# ============================================================================ video VAE

def test_vae_key_mapping_is_complete_at_real_size():
    wan = _meta_state(wan_vae_shapes())
    # names and shapes read by hand off upstream vae2_2.py (WanVAE_(dim=160, dec_dim=256, z_dim=48))
    expected = {
        "encoder.conv1.weight": (160, 12, 3, 3, 3),
        "encoder.downsamples.0.downsamples.0.residual.0.gamma": (160, 1, 1, 1),
        "encoder.downsamples.0.downsamples.2.resample.1.weight": (160, 160, 3, 3),
        "encoder.downsamples.1.downsamples.0.shortcut.weight": (320, 160, 1, 1, 1),
        "encoder.downsamples.1.downsamples.2.time_conv.weight": (320, 320, 3, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1920, 640, 1, 1),
        "encoder.middle.1.norm.gamma": (640, 1, 1),
        "encoder.head.2.weight": (96, 640, 3, 3, 3),
        "conv1.weight": (96, 96, 1, 1, 1),
        "conv2.weight": (48, 48, 1, 1, 1),
        "decoder.conv1.weight": (1024, 48, 3, 3, 3),
        "decoder.upsamples.0.upsamples.0.residual.0.gamma": (1024, 1, 1, 1),
        "decoder.upsamples.0.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.2.upsamples.0.shortcut.weight": (512, 1024, 1, 1, 1),
        "decoder.upsamples.2.upsamples.3.resample.1.weight": (512, 512, 3, 3),
        "decoder.upsamples.3.upsamples.2.residual.6.weight": (256, 256, 3, 3, 3),
        "decoder.head.2.weight": (12, 256, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(wan[key].shape) == shape, key
    assert "decoder.upsamples.2.upsamples.3.time_conv.weight" not in wan  # level 2 is 2-D upsampling
    assert "decoder.upsamples.3.upsamples.3.resample.1.weight" not in wan  # the last level keeps its size
    config = wan_vae_config_from_state(wan)
    assert (config["base_dim"], config["decoder_base_dim"], config["z_dim"], config["num_res_blocks"]) == (
        160, 256, 48, 2)
    vae = vae_from_wan_state(wan, device="meta")  # strict load into AutoencoderKLWan
    ours = {k: tuple(v.shape) for k, v in wan_vae_to_diffusers(wan).items()}
    assert ours == {k: tuple(v.shape) for k, v in vae.state_dict().items()}


def test_vae_rejects_unknown_key():
    wan = _meta_state(wan_vae_shapes(dim=8, dec_dim=8, num_res_blocks=1))
    wan["decoder.upsamples.0.mystery.weight"] = torch.empty(1, device="meta")
    with pytest.raises(UserError, match="mystery"):
        wan_vae_to_diffusers(wan)


def test_video_vae_from_official_layout(tiny_dir):
    paths = checkpoints.checkpoint_paths(tiny_dir, "720x720_5s")
    loaded = VideoVAE.from_file(paths.video_vae, dtype=torch.float32)
    tiny = VideoVAE.tiny(seed=0)
    latents = torch.randn(48, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    video = loaded.decode(latents)
    assert video.shape == (3, 9, 64, 64) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.01
    torch.testing.assert_close(video, tiny.decode(latents), rtol=0, atol=0)
    # decode un-normalises with Wan2.2's statistics before the network
    mean = torch.tensor(LATENT_MEAN).view(-1, 1, 1, 1)
    std = torch.tensor(LATENT_STD).view(-1, 1, 1, 1)
    with torch.no_grad():
        raw = loaded.vae.decode((latents * std + mean).unsqueeze(0)).sample[0]
    torch.testing.assert_close(video, raw, rtol=1e-4, atol=1e-4)
    image = video[:, 0]
    latent = loaded.encode(image)
    assert latent.shape == (48, 1, 4, 4) and latent.dtype == torch.float32


def test_video_vae_rounds_weights_to_bf16(tiny_dir):
    paths = checkpoints.checkpoint_paths(tiny_dir, "720x720_5s")
    vae = VideoVAE.from_file(paths.video_vae)  # default: bf16 weights, float32 compute
    weight = vae.vae.decoder.conv_in.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, weight.bfloat16().float(), rtol=0, atol=0)


# ============================================================================ audio

def test_audio_decoder_from_official_layout(tiny_dir):
    paths = checkpoints.checkpoint_paths(tiny_dir, "720x720_5s")
    loaded = AudioDecoder.from_files(paths.audio_vae, paths.vocoder, dtype=torch.float32)
    latents = torch.randn(12, 20, generator=torch.Generator().manual_seed(2))
    wave = loaded.decode(latents)
    assert wave.shape == (12 * 512,) and wave.dtype == torch.float32
    assert wave.abs().max() <= 1 and wave.std() > 0
    torch.testing.assert_close(wave, AudioDecoder.tiny(seed=0).decode(latents), rtol=0, atol=0)
    # upstream's numerics: bf16 weights under bf16 autocast, float32 out
    bf16 = AudioDecoder.from_files(paths.audio_vae, paths.vocoder)
    assert bf16.vocoder.conv_pre.weight.dtype == torch.bfloat16
    wave16 = bf16.decode(latents)
    assert wave16.dtype == torch.float32 and wave16.shape == wave.shape
    assert (wave16 - wave).abs().max() < 0.05 * wave.abs().max() + 1e-3


def test_mel_vae_loads_strictly_and_skips_encoder():
    state = tiny_mel_vae_state_dict(0)
    vae = mel_vae_from_state(state)  # the encoder.* stand-ins are ignored, everything else consumed
    assert not any(k.startswith("encoder.") for k in vae.state_dict())
    torch.testing.assert_close(vae.data_mean, state["data_mean"])
    state["decoder.surprise.weight"] = torch.zeros(1, 1, 1)
    with pytest.raises(RuntimeError, match="surprise"):
        mel_vae_from_state(state)


def test_mp_weight_fold_gives_unit_norm_rows():
    w = torch.randn(6, 5, 3) * 7
    folded = fold_mp_weight(w)  # rms-normalised rows (norm sqrt(fan_in)), divided by sqrt(fan_in)
    row_norms = folded.flatten(1).norm(dim=1)
    torch.testing.assert_close(row_norms, torch.ones(6), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(folded / folded.flatten(1).norm(dim=1).view(-1, 1, 1),
                               w / w.flatten(1).norm(dim=1).view(-1, 1, 1))


def test_weight_norm_folded_and_unfolded_forms_agree():
    unfolded = tiny_bigvgan_state_dict(5)
    # torch's own weight-norm parametrization is the reference for one conv and one transposed conv
    for prefix, layer in (("conv_pre", torch.nn.Conv1d(80, 32, 7)), ("ups.0.0", torch.nn.ConvTranspose1d(32, 16, 16))):
        layer = torch.nn.utils.parametrizations.weight_norm(layer)
        with torch.no_grad():
            layer.parametrizations.weight.original0.copy_(unfolded[f"{prefix}.weight_g"])
            layer.parametrizations.weight.original1.copy_(unfolded[f"{prefix}.weight_v"])
        torch.testing.assert_close(fold_weight_norm(unfolded)[f"{prefix}.weight"], layer.weight)
    parametrized = {k.replace(".weight_g", ".parametrizations.weight.original0")
                     .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in unfolded.items()}
    folded = fold_weight_norm(unfolded)
    assert not any(k.endswith(("weight_g", "weight_v")) for k in folded)
    mel = torch.randn(1, 80, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [vocoder_from_state({"generator": s})(mel) for s in (unfolded, parametrized, folded)]
    assert outs[0].shape == (1, 1, 4 * 256)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=0)


def test_bigvgan_real_config_names_and_filters():
    with torch.device("meta"):
        real = BigVGANGenerator(BigVGANConfig())
    keys = set(real.state_dict())
    for key in ("conv_pre.weight", "ups.0.0.weight", "ups.5.0.bias", "resblocks.17.convs2.2.weight",
                "resblocks.0.activations.5.act.beta", "resblocks.0.activations.0.upsample.filter",
                "resblocks.0.activations.0.downsample.lowpass.filter", "activation_post.act.alpha",
                "conv_post.weight"):
        assert key in keys, key
    assert len(real.resblocks) == 18 and real.conv_pre.weight.shape == (1536, 80, 7)
    taps = kaiser_sinc_filter(0.25, 0.3, 12)
    assert taps.shape == (1, 1, 12) and torch.isclose(taps.sum(), torch.tensor(1.0))
    torch.testing.assert_close(taps.flip(-1), taps)  # symmetric low-pass
    tiny = BigVGANGenerator(BigVGANConfig(**TINY_BIGVGAN))
    assert tiny.cfg.upsample_rates == (8, 8, 4)


# ============================================================================ folder, offline, sizes

def test_resolve_lists_every_missing_path(tmp_path):
    with pytest.raises(UserError) as err:
        resolve_checkpoint_dir(tmp_path, "960x960_10s")
    message = str(err.value)
    for part in ("Ovi/model_960x960_10s.safetensors", "models_t5_umt5-xxl-enc-bf16.pth", "umt5-xxl/tokenizer.json",
                 "Wan2.2_VAE.pth", "ext_weights/v1-16.pth", "ext_weights/best_netG.pt"):
        assert part in message
    assert f"python3 download_weights.py --output-dir {tmp_path}" in message and "6 file(s)" in message
    write_official_layout(tmp_path, "960x960_10s")  # everything but the fusion file
    with pytest.raises(UserError) as err:
        resolve_checkpoint_dir(tmp_path, "960x960_10s")
    assert "1 file(s)" in str(err.value) and "model_960x960_10s.safetensors" in str(err.value)
    with pytest.raises(UserError, match="download_weights.py"):
        TextEncoder.tokenizer_only(tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown model"):
        resolve_checkpoint_dir(tmp_path, "480p")
    with pytest.raises(ValueError, match="fp8"):  # the user's fp8 is checked by the prompt file, once
        resolve_checkpoint_dir(tmp_path, "960x960_5s", fp8=True)


def test_resolve_complete_folder(tiny_dir):
    paths = resolve_checkpoint_dir(tiny_dir, "720x720_5s")
    assert paths.fusion.name == "model.safetensors" and paths.fusion.is_file()
    assert paths.tokenizer_dir.name == "umt5-xxl"
    fp8 = checkpoints.checkpoint_paths(tiny_dir, "720x720_5s", fp8=True)
    assert fp8.fusion.name == "model_fp8_e4m3fn.safetensors"


def test_loading_from_folder_needs_no_network(tiny_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    set_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    paths = resolve_checkpoint_dir(tiny_dir, "720x720_5s")
    text = TextEncoder.from_checkpoint_dir(tiny_dir, dtype=torch.float32)
    torch.testing.assert_close(text.encode(["a dog barks"])[0], TextEncoder.tiny().encode(["a dog barks"])[0],
                               rtol=0, atol=0)
    assert text.encode(["a dog barks"])[0].dtype == torch.float32
    assert TextEncoder.from_checkpoint_dir(tiny_dir).dtype == torch.bfloat16
    tokens_only = TextEncoder.tokenizer_only(tiny_dir)
    assert tokens_only.tokenize("a dog barks") == text.tokenize("a dog barks") and tokens_only.text_dim is None
    VideoVAE.from_file(paths.video_vae).decode(torch.zeros(48, 1, 2, 2))
    AudioDecoder.from_files(paths.audio_vae, paths.vocoder, dtype=torch.float32).decode(torch.zeros(4, 20))


def test_snap_size_matches_upstream_examples():
    assert snap_size(720, 720, 720 * 720) == (704, 704, True)  # round(22.5) = 22, as in Python
    assert snap_size(704, 1280, 960 * 960) == (704, 1280, False)
    assert snap_size(960, 960, 960 * 960) == (960, 960, False)
    assert snap_size(3, 5, 100) == (32, 32, True)
    with pytest.raises(UserError):
        snap_size(0, 10, 100)


def test_model_specs_and_prompt_formatters():
    released = [m for m in MODELS.values() if m.released]
    assert [(m.video_latent_frames, m.audio_latents) for m in released] == [(31, 157), (31, 157), (61, 314)]
    assert MODELS["960x960_10s"].fusion_file == "model_960x960_10s.safetensors"
    assert MODELS["720x720_5s"].format_prompt("A dog. Audio: barking") == "A dog. <AUDCAP>barking<ENDAUDCAP>"
    assert MODELS["960x960_5s"].format_prompt("A dog. <AUDCAP>barking<ENDAUDCAP>") == "A dog. Audio: barking"
    assert MODELS["960x960_5s"].format_prompt("A dog. Audio: barking") == "A dog. Audio: barking"
