"""A released-model run, end to end, from files in the official checkpoint layout.

No weights can be downloaded here, so the test writes tiny components under the official
names (Wan-style .pth for umT5 and the VAE, tokenizer.json, MMAudio .pth files, the fusion
safetensors) and runs `ovi-attn capture` on them exactly as a user with ./ckpts would,
offline with sockets blocked. Only the released sizes (31 latent frames at 720x720) are
shrunk, so the run fits in seconds on a CPU.
"""

import dataclasses
import socket

import h5py
import numpy as np
import pytest

from ovi_attn_capture.model import registry
from ovi_attn_capture.model.fusion import build_random, tiny_configs
from ovi_attn_capture.components.tiny import write_official_layout
from ovi_attn_render.cli import main

PROMPT = """\
prompt: "A red circle moves left. Audio: a beep"
model: 720x720_5s
ckpt_dir: {ckpt}
seed: 3
steps: 4
dtype: float32
slg_layer: 1
capture:
  tokens: [circle, audio_caption]
  layers: [0, 1]
"""


@pytest.fixture
def small_720(monkeypatch):
    spec = dataclasses.replace(registry.MODELS["720x720_5s"], video_latent_frames=2, audio_latents=8,
                               native_size=(64, 64))
    monkeypatch.setitem(registry.MODELS, "720x720_5s", spec)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a network connection was attempted while loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_capture_from_the_official_folder_offline(tmp_path, small_720, no_network, capsys):
    ckpt = tmp_path / "ckpts"
    fusion = build_random(*tiny_configs(), seed=0).state_dict()
    write_official_layout(ckpt, "720x720_5s", fusion_state_dict=fusion)
    prompt = tmp_path / "p.yaml"
    prompt.write_text(PROMPT.format(ckpt=ckpt))
    out = tmp_path / "run.h5"
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress"]) == 0
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "complete" and f.attrs["model"] == "720x720_5s"
        # The 720 model takes the audio caption as <AUDCAP>...<ENDAUDCAP>: the prompt was rewritten.
        assert "<AUDCAP>a beep<ENDAUDCAP>" in f.attrs["prompt"]
        assert f["video"].shape == (5, 64, 64, 3) and f["audio"].shape == (8 * 512,)
        assert np.isfinite(f["text_video"][0]).all()
        assert "model.safetensors" in f.attrs["settings"]
    mp4s = list(tmp_path.glob("*.mp4"))
    assert mp4s == [out.with_suffix(".mp4")]  # the clip beside the capture, with its name
    import av

    with av.open(str(mp4s[0])) as c:
        kinds = sorted(s.type for s in c.streams)
        assert kinds == ["audio", "video"] and c.streams.video[0].codec_context.name == "h264"


def test_a_missing_checkpoint_file_is_named_with_the_download_command(tmp_path, capsys):
    ckpt = tmp_path / "ckpts"
    write_official_layout(ckpt, "720x720_5s", fusion_state_dict=None)  # no fusion file
    prompt = tmp_path / "p.yaml"
    prompt.write_text(PROMPT.format(ckpt=ckpt))
    assert main(["capture", str(prompt), "-o", str(tmp_path / "x.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "download_weights.py" in err and "Traceback" not in err
    assert not (tmp_path / "x.h5").exists()
