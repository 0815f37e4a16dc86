"""Our frozen side components against upstream Ovi's own modules, at tiny size, in float32.

Upstream's files are read from a local mirror of character-ai/Ovi at test time into a
temporary folder (never into our tree); without the mirror the tests are skipped. Each test
builds upstream's module at tiny width with random weights, hands its state dict (in
upstream's own key names) to our loader, and compares the decoded output on the same input:

    Wan2.2 VAE   vae2_2.Wan2_2_VAE.decode (de-normalise with its mean/std, decode, clamp)
    audio        MMAudio VAE.decode (mel un-normalise) + BigVGANVocoder (weight norm removed)
    umT5         t5.T5Encoder with a padding mask
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

def _copy_upstream(ovi_mirror, tmp_path: Path, files: list[str]) -> None:
    """Write `files` (and every __init__.py above them, emptied) from the mirror under tmp_path."""
    inits = {str(Path(*Path(f).parts[:i]) / "__init__.py") for f in files for i in range(1, len(Path(f).parts))}
    for f in sorted(set(files) | inits):
        dst = tmp_path / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        # package __init__s pull in the whole pipeline (CLIP, CUDA kernels): keep them empty
        dst.write_text("" if f.endswith("__init__.py") and f not in files else ovi_mirror.show(f))


def _forget_upstream() -> None:
    for mod in [m for m in sys.modules if m == "ovi" or m.startswith("ovi.")]:
        del sys.modules[mod]


@pytest.fixture(autouse=True)
def _fresh_upstream_package():
    """Each test (and the other upstream tests) imports `ovi` from its own tmp_path: none may see another's."""
    _forget_upstream()
    yield
    _forget_upstream()


def _import(monkeypatch, tmp_path: Path, name: str):
    """Import `name` from the upstream files copied under tmp_path (on sys.path for this test only)."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


# ============================================================================ Wan2.2 video VAE

def test_video_vae_decode_matches_upstream(tmp_path, ovi_mirror, monkeypatch):
    pytest.importorskip("einops")  # upstream's vae2_2.py uses einops.rearrange
    _copy_upstream(ovi_mirror, tmp_path, ["ovi/modules/vae2_2.py"])
    vae2_2 = _import(monkeypatch, tmp_path, "ovi.modules.vae2_2")
    from ovi_attn_capture.components.tiny import TINY_VAE, tiny_video_vae_state_dict
    from ovi_attn_capture.components.video_vae import VideoVAE, vae_from_wan_state

    # upstream's Wan2_2_VAE hard-codes dec_dim 256 and 2 res blocks (only c_dim is an argument):
    # pass the tiny ones through to its builder, whose cfg.update(**kwargs) accepts them
    build = vae2_2._video_vae
    tiny = dict(dec_dim=TINY_VAE["dec_dim"], num_res_blocks=TINY_VAE["num_res_blocks"])
    monkeypatch.setattr(vae2_2, "_video_vae", lambda **kw: build(**tiny, **kw))
    state = tiny_video_vae_state_dict(seed=3)
    torch.save(state, tmp_path / "vae.pth")
    up = vae2_2.Wan2_2_VAE(z_dim=48, c_dim=TINY_VAE["dim"], vae_pth=str(tmp_path / "vae.pth"), device="cpu")
    ours = VideoVAE(vae_from_wan_state(state, dtype=torch.float32))

    # upstream's per-channel statistics are the ones we de-normalise with
    assert torch.allclose(up.scale[0].view(-1), ours.mean.view(-1))
    assert torch.allclose(up.scale[1].view(-1), ours.inv_std.view(-1))

    latent = 1.5 * torch.randn(48, 3, 2, 3, generator=torch.Generator().manual_seed(0))  # 3 latent frames
    with torch.no_grad():
        expected = up.decode([latent])[0]  # clamped to [-1, 1]
    got = ours.decode(latent)
    assert got.shape == expected.shape == (3, 9, 32, 48)
    assert 0.0 < (expected.abs() == 1).float().mean() < 1  # clamp is exercised but not everywhere
    assert (got - expected).abs().max() < 1e-4, (got - expected).abs().max()


# ============================================================================ MMAudio VAE + BigVGAN

AUDIO_FILES = [
    "ovi/modules/mmaudio/ext/autoencoder/vae.py",
    "ovi/modules/mmaudio/ext/autoencoder/vae_modules.py",
    "ovi/modules/mmaudio/ext/autoencoder/edm2_utils.py",
    "ovi/modules/mmaudio/ext/autoencoder/distributions.py",
    "ovi/modules/mmaudio/ext/bigvgan/models.py",
    "ovi/modules/mmaudio/ext/bigvgan/activations.py",
    "ovi/modules/mmaudio/ext/bigvgan/utils.py",
    "ovi/modules/mmaudio/ext/bigvgan/alias_free_torch/__init__.py",
    "ovi/modules/mmaudio/ext/bigvgan/alias_free_torch/act.py",
    "ovi/modules/mmaudio/ext/bigvgan/alias_free_torch/filter.py",
    "ovi/modules/mmaudio/ext/bigvgan/alias_free_torch/resample.py",
]


def _upstream_audio(tmp_path, ovi_mirror, monkeypatch):
    pytest.importorskip("einops")  # vae_modules.py uses einops.rearrange
    _copy_upstream(ovi_mirror, tmp_path, AUDIO_FILES)
    vae = _import(monkeypatch, tmp_path, "ovi.modules.mmaudio.ext.autoencoder.vae")
    # bigvgan/__init__ (emptied) would import omegaconf; the vocoder class itself needs only a config
    models = _import(monkeypatch, tmp_path, "ovi.modules.mmaudio.ext.bigvgan.models")
    return vae, models


def test_audio_decode_matches_upstream(tmp_path, ovi_mirror, monkeypatch):
    vae_mod, models = _upstream_audio(tmp_path, ovi_mirror, monkeypatch)
    from ovi_attn_capture.components.audio_vae import AudioDecoder, mel_vae_from_state, vocoder_from_state
    from ovi_attn_capture.components.tiny import TINY_BIGVGAN, TINY_MEL_VAE, tiny_bigvgan_state_dict

    torch.manual_seed(0)
    up_vae = vae_mod.VAE(data_dim=TINY_MEL_VAE["mel_bins"], embed_dim=TINY_MEL_VAE["latent_dim"],
                         hidden_dim=TINY_MEL_VAE["hidden_dim"]).eval()
    # raw MP weights + the real 80-bin mel statistics + encoder; cloned, as the fold below is in place
    vae_state = {k: v.clone() for k, v in up_vae.state_dict().items()}
    up_vae.remove_weight_norm()  # as AutoEncoderModule does after loading

    h = SimpleNamespace(resblock="1", num_mels=TINY_BIGVGAN["num_mels"], activation="snakebeta",
                        snake_logscale=True, upsample_rates=list(TINY_BIGVGAN["upsample_rates"]),
                        upsample_kernel_sizes=list(TINY_BIGVGAN["upsample_kernel_sizes"]),
                        upsample_initial_channel=TINY_BIGVGAN["upsample_initial_channel"],
                        resblock_kernel_sizes=list(TINY_BIGVGAN["resblock_kernel_sizes"]),
                        resblock_dilation_sizes=[[1, 3, 5]] * len(TINY_BIGVGAN["resblock_kernel_sizes"]))
    up_voc = models.BigVGANVocoder(h).eval()
    voc_state = tiny_bigvgan_state_dict(seed=1)  # legacy weight_g / weight_v names, non-trivial snake params
    up_voc.load_state_dict(voc_state, strict=True)  # torch's weight-norm hook takes the legacy names
    up_voc.remove_weight_norm()

    ours = AudioDecoder(mel_vae_from_state(vae_state), vocoder_from_state({"generator": voc_state}),
                        dtype=torch.float32)
    latents = torch.randn(6, TINY_MEL_VAE["latent_dim"], generator=torch.Generator().manual_seed(0))  # [La, 20]
    with torch.no_grad():
        mel = up_vae.decode(latents.T.unsqueeze(0))  # [1, 80, 12]
        expected = up_voc(mel)[0, 0]
        got_mel = ours.vae(latents.T.unsqueeze(0))
    got = ours.decode(latents)
    assert got.shape == expected.shape == (6 * 256 * 2,)
    assert (got_mel - mel).abs().max() < 1e-5, (got_mel - mel).abs().max()
    assert expected.abs().max() > 1e-3  # not a silent output
    assert (got - expected).abs().max() < 1e-5, (got - expected).abs().max()


# ============================================================================ umT5 encoder

def test_umt5_encoder_matches_upstream(tmp_path, ovi_mirror, monkeypatch):
    _copy_upstream(ovi_mirror, tmp_path, ["ovi/modules/t5.py", "ovi/modules/tokenizers.py"])
    # t5.py evaluates torch.cuda.current_device() as a default argument at import: give it a CPU answer
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    t5 = _import(monkeypatch, tmp_path, "ovi.modules.t5")
    from ovi_attn_capture.components.text_encoder import TextEncoder, umt5_from_wan_state
    from ovi_attn_capture.components.tiny import TINY_T5, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    up = t5.T5Encoder(vocab=tokenizer.get_vocab_size(), dim=TINY_T5["d_model"], dim_attn=TINY_T5["inner"],
                      dim_ffn=TINY_T5["d_ff"], num_heads=TINY_T5["num_heads"], num_layers=TINY_T5["num_layers"],
                      num_buckets=TINY_T5["num_buckets"], shared_pos=False, dropout=0.0).eval()
    with torch.no_grad():  # upstream's init leaves norms at 1 and position biases tiny: make both matter
        for name, p in up.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
            if "pos_embedding" in name:
                p.normal_(std=1.0)
    ours = TextEncoder(tokenizer, umt5_from_wan_state(up.state_dict(), dtype=torch.float32), text_len=24)

    texts = ["a man speaks slowly to the camera", "rain", "two dogs run near the river while a girl sings"]
    ids, mask = ours._ids_and_mask(texts)  # [3, 24] padded with <pad>, as upstream's tokenizer call
    assert 0 < mask.sum(dim=1).min() < mask.sum(dim=1).max() < 24  # ragged lengths, padding in every row
    with torch.no_grad():
        expected = up(ids, mask)  # [3, 24, 64]
        padded = ours.model(input_ids=ids, attention_mask=mask).last_hidden_state
    got = ours.encode(texts)
    for row, out in enumerate(got):
        n = int(mask[row].sum())
        assert out.shape == (n, TINY_T5["d_model"])
        assert (out - expected[row, :n]).abs().max() < 1e-5, (out - expected[row, :n]).abs().max()
    assert (padded - expected).abs().max() < 1e-5  # the padded positions agree too
