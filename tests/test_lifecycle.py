"""Nothing a user does loses a capture: real processes, real signals, kills at chosen phases,
forced overwrites, the clip MP4 beside the capture, renders killed mid-write."""

import hashlib
import signal
import time

import h5py
import numpy as np
import pytest
from lifecycle_helpers import Proc, opens_everywhere, status_of, write_toy_prompt

from ovi_attn_render.cli import main
from ovi_attn_render.contract.kinds import MAP_KINDS


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A complete toy capture (in this process): the bytes every killed run's steps must match,
    and the old file that forced runs must leave intact."""
    tmp = tmp_path_factory.mktemp("ref")
    prompt = write_toy_prompt(tmp, steps=4)
    out = tmp / "ref.h5"
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress"]) == 0
    return prompt, out


def _same_steps(path, ref, done: int) -> None:
    with h5py.File(path, "r", locking=False) as f, h5py.File(ref, "r") as r:
        for var in ("text_video", "text_audio"):
            sl = (slice(None),) * MAP_KINDS[var].dims.index("step") + (slice(0, done),)
            assert np.array_equal(f[var][sl], r[var][sl], equal_nan=True), var


def _capture_paused(reference, tmp_path, phase: str):
    """A capture of the reference prompt to tmp_path/run.h5, paused at `phase`: (process, path)."""
    out = tmp_path / "run.h5"
    p = Proc(["capture", reference[0], "-o", out, "--no-progress"], tmp_path / "hooks", pause=phase)
    p.wait_for(phase)
    return p, out


def test_sigint_stops_at_the_next_boundary_marks_interrupted_and_exits_130(reference, tmp_path):
    ref = reference[1]
    p, out = _capture_paused(reference, tmp_path, "step-2")
    p.signal(signal.SIGINT)
    time.sleep(0.3)
    p.release("step-2")
    rc, _, err = p.finish()
    assert rc == 130, err
    assert status_of(out) == ("interrupted", 2)
    assert opens_everywhere(out) == 2
    _same_steps(out, ref, 2)
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "2 of 4 captured steps" in lines[0] and f"ovi-attn render {out}" in lines[0]
    assert "Traceback" not in err and not out.with_suffix(".mp4").exists()


def _forced_run_paused(reference, tmp_path, phase: str):
    """A forced capture onto a copy of the reference, paused at `phase`: (process, path, old digest)."""
    prompt, ref = reference
    out = tmp_path / "run.h5"
    out.write_bytes(ref.read_bytes())
    before = _digest(out)
    p = Proc(["capture", prompt, "-o", out, "--force", "--no-progress"], tmp_path / "hooks", pause=phase)
    p.wait_for(phase)
    assert _digest(out) == before  # while the forced run runs, the old file is untouched
    return p, out, before


def test_sigterm_on_a_forced_capture_keeps_the_old_file_and_names_the_partial_one(reference, tmp_path):
    p, out, before = _forced_run_paused(reference, tmp_path, "step-1")
    p.signal(signal.SIGTERM)
    p.release("step-1")
    rc, _, err = p.finish()
    partial = tmp_path / "run.partial.h5"
    assert rc == 143, err
    assert _digest(out) == before
    assert status_of(partial) == ("interrupted", 1) and opens_everywhere(partial) == 1
    assert str(partial) in err and "untouched" in err
    assert main(["info", str(partial), "--no-tokens"]) == 0  # info and render take the partial file


def test_a_second_sigint_exits_at_once_leaving_a_readable_file_that_says_its_writer_is_gone(reference, tmp_path,
                                                                                              capsys):
    ref = reference[1]
    p, out = _capture_paused(reference, tmp_path, "step-2")
    p.signal(signal.SIGINT)
    time.sleep(0.3)
    t0 = time.time()
    p.signal(signal.SIGINT)  # still paused: only the second signal can end it
    rc, _, err = p.finish(timeout=30)
    assert rc == 130 and time.time() - t0 < 10, err
    status, done = status_of(out)
    assert status == "running" and done >= 1  # the writer may have flushed step 2 or not
    assert opens_everywhere(out) == done
    _same_steps(out, ref, done)
    assert main(["info", str(out), "--no-tokens"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # the table wraps long cells
    assert "stopped without finishing" in shown and f"process {p.p.pid} on this host is gone" in shown


@pytest.mark.parametrize("phase,expect", [
    ("loaded", "absent"),  # weights loaded, no file yet
    ("created", "absent"),  # the skeleton exists under its temporary name only
    ("clip", "readable"),  # every step done, the decoded clip about to be written
])
def test_kill_9_leaves_no_file_or_a_readable_one(reference, tmp_path, phase, expect):
    prompt, ref = reference
    p, out = _capture_paused(reference, tmp_path, phase)
    p.kill()
    if expect == "absent":
        assert not out.exists()
    else:
        assert opens_everywhere(out) == 4
        _same_steps(out, ref, 4)
    # the next run at this path is not blocked by what the killed one left, and cleans it up
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress", "--force", "--no-mp4"]) == 0
    assert status_of(out) == ("complete", 4)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


def test_kill_9_during_a_forced_capture_keeps_the_old_file(reference, tmp_path):
    p, out, before = _forced_run_paused(reference, tmp_path, "step-3")
    p.kill()
    assert _digest(out) == before
    assert opens_everywhere(tmp_path / "run.partial.h5") >= 2


def test_the_clip_mp4_goes_beside_the_capture_and_a_kill_while_writing_it_leaves_none(reference, tmp_path):
    # paused with the MP4 written under its temporary name, not yet renamed
    p, out = _capture_paused(reference, tmp_path, "before-replace")
    p.kill()
    assert status_of(out) == ("complete", 4) and not out.with_suffix(".mp4").exists()
    assert [f.name for f in tmp_path.glob(".run.*.mp4")]  # the unfinished one is hidden beside it


def test_the_clip_mp4_is_named_after_the_capture_and_never_overwritten_without_force(reference, tmp_path, capsys):
    import av

    _, ref = reference
    mp4 = ref.with_suffix(".mp4")
    assert mp4.exists() and not list(ref.parent.glob("*seed*.mp4"))
    with av.open(str(mp4)) as f:
        assert f.streams.video[0].frames >= 1
    prompt = write_toy_prompt(tmp_path, steps=2)
    out = tmp_path / "new.h5"
    (tmp_path / "new.mp4").write_bytes(b"someone's video")
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress"]) == 2
    assert "new.mp4 already exists" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "new.mp4").read_bytes() == b"someone's video"


def test_kill_9_during_a_forced_render_keeps_the_old_output(reference, tmp_path):
    _, ref = reference
    gif = tmp_path / "old.gif"
    assert main(["render", str(ref), "--token", "circle", "-o", str(gif)]) == 0
    before = _digest(gif)
    p = Proc(["render", ref, "--token", "bar", "-o", gif, "--force"], tmp_path / "hooks", pause="before-replace")
    p.wait_for("before-replace")
    p.kill()
    assert _digest(gif) == before
    assert main(["render", str(ref), "--token", "bar", "-o", str(gif), "--force"]) == 0
    assert _digest(gif) != before and not [f for f in tmp_path.iterdir() if f.name.startswith(".old")]


def test_sigint_before_the_file_exists_writes_nothing(reference, tmp_path):
    p, out = _capture_paused(reference, tmp_path, "loaded")
    p.signal(signal.SIGINT)
    rc, _, err = p.finish()
    assert rc == 130 and "nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.glob("*.h5")) == [] and list(tmp_path.glob(".*")) == []


def _tiny_layout():
    from ovi_attn_render.contract.format import CaptureLayout
    from ovi_attn_render.contract.token_groups import Token

    tokens = [Token(0, 10, "▁a", 0, 1, "a", 0), Token(1, 1, "</s>", 1, 1, "", -1)]
    return CaptureLayout(grid=(2, 2, 2), audio_tokens=3, steps=[0, 1], layers=[0], groups=["a", "<eos>", "<pad>"],
                         group_kinds=["word", "eos", "pad"], group_members=np.array([[1, 0], [0, 1], [0, 0]]),
                         tokens=tokens, kinds=["text_video"])


def test_the_writer_beats_while_idle_and_its_join_is_bounded(tmp_path, monkeypatch):
    import torch

    import ovi_attn_capture.pipeline.writer as writer_module

    monkeypatch.setattr(writer_module, "HEARTBEAT_SECONDS", 0.05)
    w = writer_module.AsyncCaptureWriter(tmp_path / "w.h5", _tiny_layout())
    with h5py.File(tmp_path / "w.h5", "r", locking=False) as f:
        first = float(f.attrs["heartbeat"])
    time.sleep(0.5)  # no step comes: the writer still says it is alive
    with h5py.File(tmp_path / "w.h5", "r", locking=False) as f:
        assert float(f.attrs["heartbeat"]) > first
    # A writer stuck inside a write: close gives up after its bound instead of hanging.
    release = __import__("threading").Event()
    monkeypatch.setattr(w.file, "write_map", lambda *a: release.wait(30))
    w.put("text_video", 0, 0, 0, torch.zeros(3, 1, 2, 2, 2))
    t0 = time.time()
    assert w.close("complete", timeout=0.3) is False and time.time() - t0 < 2
    release.set()
    w.thread.join(10)
    assert status_of(tmp_path / "w.h5") == ("complete", 0)
