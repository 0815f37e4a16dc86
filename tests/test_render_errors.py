"""Bad input fails cleanly: exit code 2 and one sentence that names what exists."""

from __future__ import annotations

from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest

from synthetic import Synth, write_synthetic

from ovi_attn_render.cli import main
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.reader import open_capture


def fails(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 2
    return " ".join(capsys.readouterr().err.split())


def test_missing_file(capsys, tmp_path):
    assert "does not exist" in fails(capsys, "render", tmp_path / "nope.h5", "--token", "man")
    assert "does not exist" in fails(capsys, "info", tmp_path / "nope.h5")


def test_not_hdf5(capsys, tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    assert "not an HDF5 file" in fails(capsys, "info", p)


def test_foreign_and_newer_hdf5(capsys, tmp_path):
    p = tmp_path / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.zeros(3)
    assert "not an ovi-attn capture" in fails(capsys, "render", p, "--token", "man")
    q = tmp_path / "new.h5"
    with h5py.File(q, "w") as f:
        f.attrs["format"] = "ovi-attn-capture"
        f.attrs["format_version"] = 99
    assert "upgrade ovi-attn" in fails(capsys, "info", q)


def test_truncated_file(capsys, run, tmp_path):
    p = tmp_path / "cut.h5"
    data = run.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    msg = fails(capsys, "info", p)
    assert "truncated" in msg or "damaged" in msg


def test_token_not_captured_names_captured_groups(capsys, run):
    msg = fails(capsys, "render", run, "--token", "mna", "--frame", "4")
    assert "'mna' was not captured" in msg and "'man'" in msg and "'park'" in msg


def test_frame_out_of_range_states_range(capsys, run):
    msg = fails(capsys, "render", run, "--token", "man", "--frame", "40")
    assert "9 decoded frames (0-8)" in msg


def test_selection_errors_state_what_exists(capsys, run):
    assert "readable steps (4 of 4 written): 0-3" in fails(capsys, "render", run, "--token", "man", "--steps", "7")
    assert "captured layers: 0-2" in fails(capsys, "render", run, "--token", "man", "--layers", "10-19")
    assert "not understood" in fails(capsys, "render", run, "--token", "man", "--layers", "a-b")
    assert "branches: cond" in fails(capsys, "render", run, "--token", "man", "--branch", "uncond")
    assert "both branches" in fails(capsys, "render", run, "--view", "diff", "--token", "man")
    assert "--norm" in fails(capsys, "render", run, "--token", "man", "--norm", "loud")
    assert "writes png" in fails(capsys, "render", run, "--view", "grid", "--token", "man", "--format", "gif")


def test_missing_kind_names_captured_kinds(capsys, tmp_path):
    p = tmp_path / "tv.h5"
    write_synthetic(p, Synth(kinds=("text_video",)))
    msg = fails(capsys, "render", p, "--view", "sync")
    assert "no video_audio" in msg or "neither" in msg
    assert "captured kinds: text_video" in fails(capsys, "render", p, "--view", "audio", "--token", "man")


def test_partial_capture_renders_what_exists(capsys, tmp_path):
    p = tmp_path / "part.h5"
    write_synthetic(p, Synth(steps_done=2))
    with open_capture(p) as cap:
        assert cap.partial and cap.status == "running" and cap.steps_done == 2
        with pytest.raises(UserError, match="2 of 4"):
            cap.text_video(0, steps=[3])
    out = tmp_path / "p.gif"
    assert main(["render", str(p), "--token", "man", "--frame", "4", "-o", str(out)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "2 of 4 captured steps exist" in err and "not written yet" in err
    assert len(iio.imread(out, index=None)) == 2
    assert main(["info", str(p)]) == 0
    assert "2 of 4" in capsys.readouterr().out


def test_capture_with_no_step_yet(capsys, tmp_path):
    p = tmp_path / "empty.h5"
    write_synthetic(p, Synth(steps_done=0))
    assert "no complete step yet" in fails(capsys, "render", p, "--token", "man")
