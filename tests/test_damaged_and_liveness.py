"""Damaged or foreign files are one sentence (exit 2) in every command; a running file says
whether its writer lives."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from synthetic import Synth, write_synthetic

from ovi_attn_render.cli import main
from ovi_attn_render.contract.liveness import describe_writer, process_start_ticks


@pytest.fixture
def good(run) -> Path:
    return run  # the session's synthetic capture (tests/conftest.py); tests copy it before damaging


def _damaged(good: Path, tmp_path: Path, **attrs) -> Path:
    bad = tmp_path / "bad.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "a") as f:
        for k, v in attrs.items():
            if v is None:
                del f.attrs[k]
            else:
                f.attrs[k] = v
    return bad


COMMANDS = [["info"], ["render", "--token", "man"], ["render", "--view", "grid", "--token", "man"],
            ["render", "--view", "audio", "--token", "man"], ["render", "--view", "sync"]]


@pytest.mark.parametrize("attrs,fragment", [
    ({"format_version": "two"}, "format_version"),
    ({"video_grid": np.array([3, 8])}, "video_grid"),
    ({"video_grid": np.array([3.5, 8, 8])}, "video_grid"),
    ({"steps_done": "many"}, "steps_done"),
    ({"steps_done": np.array([1, 2])}, "steps_done"),
    ({"audio_tokens": 7}, "shape"),  # disagrees with the maps' audio_time
    ({"fps": -3.0}, "fps"),
    ({"audio_sample_rate": "fast"}, "audio_sample_rate"),
])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:3:2]))
def test_attributes_of_the_wrong_type_or_shape_are_one_sentence(good, tmp_path, capsys, attrs, fragment, command):
    bad = _damaged(good, tmp_path, **attrs)
    rc = main([command[0], str(bad), *command[1:], "-o", str(tmp_path)] if command[0] == "render"
              else [command[0], str(bad)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "bad.h5" in err and fragment in err and "internal error" not in err and "Traceback" not in err


def _break_chunk_index(path: Path) -> None:
    """Overwrite the signature of every chunk-index node (HDF5 v1 B-tree, type 1): the file
    opens (coordinates are contiguous) but any map read fails inside HDF5."""
    data = bytearray(path.read_bytes())
    i = data.find(b"TREE\x01")
    assert i >= 0
    while i >= 0:
        data[i:i + 4] = b"XXXX"
        i = data.find(b"TREE\x01", i + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("command", COMMANDS[1:], ids=lambda c: c[2] if len(c) > 3 else c[0])
def test_an_hdf5_read_error_in_the_middle_of_a_view_is_one_sentence(good, tmp_path, capsys, command):
    bad = tmp_path / "bad.h5"
    shutil.copy(good, bad)
    _break_chunk_index(bad)
    rc = main([command[0], str(bad), *command[1:], "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "bad.h5" in err and "damaged" in err and "internal error" not in err
    assert not [f for f in tmp_path.iterdir() if f.suffix in (".gif", ".png", ".svg", ".mp4")]


def test_a_live_writer_is_running_with_the_age_of_its_last_write():
    attrs = {"writer_host": socket.gethostname(), "writer_pid": os.getpid(),
             "writer_start_ticks": process_start_ticks(os.getpid()), "heartbeat": time.time() - 3}
    alive, text = describe_writer(attrs)
    assert alive and text == "running, last write 3 s ago"


def test_a_dead_writer_on_this_host_is_stopped_without_finishing():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is free now
    attrs = {"writer_host": socket.gethostname(), "writer_pid": child.pid, "heartbeat": time.time() - 600}
    alive, text = describe_writer(attrs)
    assert not alive
    assert text == f"stopped without finishing (no write for 10 min; process {child.pid} on this host is gone)"


def test_a_reused_pid_is_not_mistaken_for_the_writer():
    attrs = {"writer_host": socket.gethostname(), "writer_pid": os.getpid(),
             "writer_start_ticks": process_start_ticks(os.getpid()) + 12345, "heartbeat": time.time() - 5}
    if not process_start_ticks(os.getpid()):
        pytest.skip("no /proc here: pid reuse cannot be seen")
    assert describe_writer(attrs)[0] is False


def test_another_hosts_writer_is_judged_by_its_heartbeat():
    fresh = {"writer_host": "gpu-node-7", "writer_pid": 99, "heartbeat": time.time() - 20}
    stale = dict(fresh, heartbeat=time.time() - 3600)
    assert describe_writer(fresh) == (True, "running on gpu-node-7, last write 20 s ago")
    alive, text = describe_writer(stale)
    assert not alive and "no write for 60 min" in text and "gpu-node-7" in text


def test_info_and_render_say_a_running_capture_is_live(tmp_path, capsys):
    """A file still being written (the writer is this test process) is `running, last write ...`."""
    from ovi_attn_render.contract.format import CaptureFileWriter

    s = Synth(steps_done=2)
    path = tmp_path / "live.h5"
    write_synthetic(path, s)  # writes with status running and 2 steps
    with h5py.File(path, "r") as f:
        assert f.attrs["writer_pid"] == os.getpid()
    assert main(["info", str(path), "--no-tokens"]) == 0
    assert "running, last write" in capsys.readouterr().out
    assert main(["render", str(path), "--token", "man", "-o", str(tmp_path)]) == 0
    assert "is running, last write" in capsys.readouterr().err
    assert CaptureFileWriter  # the same writer capture uses wrote it
