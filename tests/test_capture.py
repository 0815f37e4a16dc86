"""`ovi-attn capture` end to end on the tiny model: the file, exactness, bit-identity, crashes."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ovi_attn_render.cli import main
from ovi_attn_render.contract.kinds import MAP_KINDS
from ovi_attn_render.contract.reader import read_strings

PROMPT = """\
prompt: "A red circle moves left while a blue square stays still. <AUDCAP>a beep<ENDAUDCAP>"
model: tiny
seed: 7
steps: {steps}
capture:
  tokens: {tokens}
  kinds: [text_video, text_audio, video_audio, audio_video]
  branch: both
  dtype: {dtype}
"""


def write_prompt(tmp_path, steps=6, tokens="[circle, square]", dtype="float16", name="p.yaml"):
    p = tmp_path / name
    p.write_text(PROMPT.format(steps=steps, tokens=tokens, dtype=dtype))
    return p


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cap")
    prompt = write_prompt(tmp, tokens="[circle, all]", dtype="float32")
    out = tmp / "run.h5"
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress"]) == 0
    return out


def test_file_opens_in_xarray_with_named_dims_and_coords(captured):
    import xarray as xr

    ds = xr.open_dataset(captured, engine="h5netcdf")
    assert ds.attrs["status"] == "complete" and ds.attrs["steps_done"] == 6
    assert ds.text_video.dims == ("branch", "token", "frame", "step", "layer", "head", "y", "x")
    assert ds.text_audio.dims == ("branch", "token", "step", "layer", "head", "audio_time")
    assert list(ds.branch_label.values) == ["cond", "uncond"]
    assert list(ds.layer.values) == [0, 1] and list(ds.step.values) == list(range(6))
    assert ds.token_label.values[0] == "circle" and ds.token_label.values[-2:].tolist() == ["<eos>", "<pad>"]
    assert ds.timestep.values[0] == 999 and ds.sigma.values[0] == pytest.approx(0.9998, abs=1e-4)
    assert ds.sizes["frame"] == 5 and ds.sizes["y"] == 8 and ds.sizes["x"] == 8
    assert ds.video.shape == (17, 256, 256, 3) and ds.video.dtype == np.uint8
    assert ds.audio.shape == (22 * 512,)
    assert list(ds.latent_frame_of_pixel.values[:6]) == [0, 1, 1, 1, 1, 2]
    settings = ds.attrs["settings"]
    assert '"seed": 7' in settings and "versions" in ds.attrs and ds.attrs["model"] == "tiny"


def test_with_all_tokens_the_groups_sum_to_one_for_every_query(captured):
    with h5py.File(captured, "r") as f:
        labels = read_strings(f["token_label"])
        tv = f["text_video"][0]  # cond: [token, frame, step, layer, head, h, w]
        ta = f["text_audio"][0]  # [token, step, layer, head, La]
    assert labels.count("circle") == 1  # `all` merges the explicit selection, no double counting
    assert np.allclose(tv.sum(axis=0), 1.0, atol=5e-4)
    assert np.allclose(ta.sum(axis=0), 1.0, atol=5e-4)


def test_uncond_branch_skips_the_slg_layer_and_words_missing_from_the_negative_prompt(captured):
    with h5py.File(captured, "r") as f:
        labels = read_strings(f["token_label"])
        tv = f["text_video"][1]  # uncond: [token, frame, step, layer, head, h, w]
        va = f["video_audio"][1]  # [step, layer, head, F, La]
    assert np.isnan(tv[:, :, :, 1]).all() and np.isnan(va[:, 1]).all()  # tiny slg_layer = 1
    assert np.isnan(tv[labels.index("circle"), :, :, 0]).all()  # not in "jitter, bad hands, ..."
    assert np.isfinite(tv[labels.index("<eos>"), :, :, 0]).all()
    assert np.isfinite(va[:, 0]).all()


def test_fusion_rows_are_distributions(captured):
    with h5py.File(captured, "r") as f:
        va = f["video_audio"][0]  # [step, layer, head, F, La]
        av = f["audio_video"][0]  # [step, layer, head, La, F]
        sp = f["audio_video_spatial"][0]  # [F, step, layer, head, h, w]
    assert np.allclose(va.sum(-1), 1, atol=1e-4) and np.allclose(av.sum(-1), 1, atol=1e-4)
    assert np.allclose(sp.sum(axis=(0, -2, -1)), 22, atol=1e-2)  # one unit of mass per audio token


def test_capture_does_not_change_a_single_bit_of_the_generation():
    from ovi_attn_capture.sampling.generate import SamplerSettings, Texts, sample
    from ovi_attn_capture.model.fusion import build_random, tiny_configs
    from ovi_attn_capture.probe.probe import CapturePlan, CaptureProbe, key_groups

    model = build_random(*tiny_configs(), seed=0)
    g = torch.Generator().manual_seed(0)
    texts = Texts(*(torch.randn(n, 64, generator=g).bfloat16() for n in (9, 6, 5)))
    settings = SamplerSettings(steps=5, slg_layer=1, seed=3)
    plain = sample(model, texts, (48, 3, 8, 8), (13, 20), settings, "cpu")

    class Sink:
        n = 0

        def put(self, *a):
            Sink.n += 1

    groups = {(b, t): key_groups([[1, 2], [8], []], 2, 9 if b == "cond" else 6, 512)
              for b in ("cond", "uncond") for t in ("video", "audio")}
    plan = CapturePlan(list(range(5)), [0, 1], ["text_video", "text_audio", "video_audio", "audio_video"],
                       ["cond", "uncond"], True, torch.float32, (3, 4, 4), groups)
    probe = CaptureProbe(plan, Sink())
    model.set_processor(probe, which="all")
    try:
        captured = sample(model, texts, (48, 3, 8, 8), (13, 20), settings, "cpu", probe=probe)
    finally:
        model.set_processor(None, which="all")
    assert Sink.n == 5 * (2 * 5 + 1 * 5)  # cond: 2 layers x 5 maps, uncond: layer 1 skipped
    assert torch.equal(plain[0], captured[0]) and torch.equal(plain[1], captured[1])


def _steps_done(path):
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["steps_done"])
    except Exception:
        return -1


def test_a_capture_killed_at_any_point_leaves_a_readable_partial_file(tmp_path):
    prompt = write_prompt(tmp_path, steps=20, tokens="[circle, square]")
    full = tmp_path / "full.h5"
    assert main(["capture", str(prompt), "-o", str(full), "--no-progress"]) == 0
    rng = random.Random(0)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    partial = 0
    for trial in range(3):
        out = tmp_path / f"killed{trial}.h5"
        target = rng.randint(1, 12)  # kill after a random number of steps, at a random moment within a step
        proc = subprocess.Popen([sys.executable, "-m", "ovi_attn_render.cli", "capture", str(prompt), "-o",
                                 str(out), "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 600  # a loaded machine can take minutes to get there
            while _steps_done(out) < target and time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        with h5py.File(out, "r") as f, h5py.File(full, "r") as ref:
            done = int(f.attrs["steps_done"])
            status = f.attrs["status"]
            assert status in ("running", "complete")
            assert done >= target
            partial += status == "running"
            for var in ("text_video", "text_audio", "video_audio", "audio_video"):
                step_axis = MAP_KINDS[var].dims.index("step")
                sl = (slice(None),) * step_axis + (slice(0, done),)
                assert np.array_equal(f[var][sl], ref[var][sl], equal_nan=True), var
        import xarray as xr

        xr.open_dataset(out, engine="h5netcdf").close()
        from ovi_attn_render.contract.reader import open_capture

        with open_capture(out) as cap:
            assert cap.steps_done == done and cap.partial == (done < 20 or cap.status != "complete")
    assert partial >= 2  # most kills land mid-run


@pytest.mark.parametrize("content,fragment", [
    ("prompt: [unclosed\n", "line"),
    ("prompt: a man\nmodel: tiny\nsede: 3\n", "sede"),
    ("prompt: a man runs\nmodel: tiny\ncapture:\n  tokens: [mna]\n", "man"),
    ("prompt: a man runs\nmodel: tiny\ncapture:\n  layers: 5-7\n", "0"),
])
def test_bad_prompt_files_fail_cleanly_with_exit_code_2(tmp_path, capsys, content, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    assert main(["capture", str(p), "-o", str(tmp_path / "x.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and fragment in err
    assert not (tmp_path / "x.h5").exists()


def test_an_existing_output_is_never_overwritten_without_force(tmp_path, capsys):
    prompt = write_prompt(tmp_path, steps=2)
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


def test_captures_over_the_size_budget_are_refused_before_generating(tmp_path, capsys):
    prompt = write_prompt(tmp_path, steps=2)
    out = tmp_path / "big.h5"
    assert main(["capture", str(prompt), "-o", str(out), "--max-file-gb", "0.0000001", "--no-progress"]) == 2
    assert "budget" in capsys.readouterr().err and not out.exists()


def test_image_to_video_keeps_the_clean_first_latent_frame(tmp_path):
    import cv2

    from ovi_attn_capture.components.loading import image_size_for_area

    img = np.zeros((200, 300, 3), np.uint8)
    img[50:150, 100:200] = (0, 0, 255)  # BGR red square
    cv2.imwrite(str(tmp_path / "first.png"), img)
    prompt = tmp_path / "i2v.yaml"
    prompt.write_text('prompt: "A red square."\nmodel: tiny\nsteps: 3\nmode: i2v\nimage: first.png\n'
                      'capture:\n  tokens: [square]\n  kinds: [text_video]\n')
    out = tmp_path / "i2v.h5"
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress", "--no-mp4"]) == 0
    H, W = image_size_for_area(200, 300, 256 * 256)
    assert (H % 32, W % 32) == (0, 0) and W > H
    with h5py.File(out, "r") as f:
        assert f["video"].shape[1:3] == (H, W) and f.attrs["mode"] == "i2v"
        assert list(f.attrs["video_grid"]) == [5, H // 32, W // 32]


def test_sampling_with_a_first_frame_returns_it_untouched():
    from ovi_attn_capture.sampling.generate import SamplerSettings, Texts, sample
    from ovi_attn_capture.model.fusion import build_random, tiny_configs

    model = build_random(*tiny_configs(), seed=0)
    g = torch.Generator().manual_seed(1)
    texts = Texts(*(torch.randn(n, 64, generator=g).bfloat16() for n in (5, 4, 4)))
    first = torch.randn(48, 1, 8, 8, generator=g).bfloat16()
    video, _ = sample(model, texts, (48, 3, 8, 8), (9, 20), SamplerSettings(steps=3, slg_layer=1), "cpu",
                      first_frame=first)
    assert torch.equal(video[:, :1], first) and not torch.equal(video[:, 1:2], first)


@pytest.mark.parametrize("args", [
    ["--token", "circle", "--frame", "8"],
    ["--token", "circle", "--view", "frames", "--format", "mp4"],
    ["--token", "circle", "--view", "frames"],
    ["--token", "circle", "--view", "grid"],
    ["--token", "circle", "--view", "layers", "--format", "svg"],
    ["--token", "circle", "--token", "red", "--frame", "3"],
    ["--token", "circle", "--token", "red", "--layout", "side"],
    ["--token", "beep", "--view", "audio"],
    ["--view", "sync"],
    ["--token", "circle", "--view", "mask"],
    ["--token", "<eos>", "--view", "diff"],
    ["--token", "circle", "--renorm", "--norm", "step"],
])
def test_every_view_renders_a_real_tiny_capture(captured, tmp_path, args):
    outdir = tmp_path / "views"
    assert main(["render", str(captured), *args, "-o", str(outdir)]) == 0
    files = list(outdir.iterdir())
    assert files and all(f.stat().st_size > 1000 for f in files)


def test_info_and_compare_on_real_captures(captured, tmp_path, capsys):
    assert main(["info", str(captured)]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "circle" in out and "tiny" in out
    assert main(["compare", str(captured), str(captured), "--token", "circle", "--frame", "4",
                 "-o", str(tmp_path / "cmp.gif")]) == 0
    assert (tmp_path / "cmp.gif").stat().st_size > 1000


def test_tokens_command_prints_the_table(tmp_path, capsys):
    prompt = write_prompt(tmp_path, tokens="[circle, all]")
    assert main(["tokens", str(prompt)]) == 0
    out = capsys.readouterr().out
    assert "circle" in out and "square" in out and "<eos>" in out or "</s>" in out


def test_another_process_can_follow_a_capture_with_xarray_while_it_is_written(tmp_path):
    from ovi_attn_render.contract.format import CaptureFileWriter, CaptureLayout
    from ovi_attn_render.contract.token_groups import Token

    tokens = [Token(0, 10, "▁a", 0, 1, "a", 0), Token(1, 1, "</s>", 1, 1, "", -1)]
    layout = CaptureLayout(grid=(2, 2, 2), audio_tokens=3, steps=[0, 1], layers=[0], groups=["a", "<eos>", "<pad>"],
                           group_kinds=["word", "eos", "pad"], group_members=np.array([[1, 0], [0, 1], [0, 0]]),
                           tokens=tokens, kinds=["text_video"])
    path = tmp_path / "live.h5"
    writer = CaptureFileWriter(path, layout)
    try:
        writer.finish_step(1)
        code = (f"import xarray as xr; ds = xr.open_dataset({str(path)!r}, engine='h5netcdf'); "
                "print(ds.attrs['steps_done'], ds.attrs['status'])")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["1", "running"]
    finally:
        writer.close()
