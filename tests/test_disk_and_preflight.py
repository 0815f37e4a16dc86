"""A full disk, the budget, token selections and long prompts: found before the weights
load when they can be, and one sentence with exit 2 when the disk fills anyway."""

import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from lifecycle_helpers import Proc, opens_everywhere, status_of, write_toy_prompt

from ovi_attn_render.cli import main


@pytest.fixture
def small_fs(tmp_path):
    """A real file system of a chosen size (tmpfs; needs root). Yields a function size -> folder."""
    mounted = []

    def make(size: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("mounting a small tmpfs is not permitted here (the injected-ENOSPC tests still run)")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if capture loads any weights."""
    import ovi_attn_capture.pipeline.capture as capture

    def refuse(*a, **k):
        raise AssertionError("the weights were loaded before the check")

    monkeypatch.setattr(capture, "load_components", refuse)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill a file system to `leave` bytes free (really: the writes fail past that)."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * max(0, free - leave))
            fh.flush()
        except OSError:
            pass


def test_too_little_free_space_is_refused_before_the_weights_load(small_fs, tmp_path, capsys, no_weights):
    folder = small_fs("1m")
    prompt = write_toy_prompt(tmp_path, steps=30)
    assert main(["capture", str(prompt), "-o", str(folder / "run.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "free" in err and "Traceback" not in err
    assert list(folder.iterdir()) == []


def test_free_space_check_with_an_injected_small_disk(monkeypatch, tmp_path, capsys, no_weights):
    import ovi_attn_capture.pipeline.outputs as outputs

    real = shutil.disk_usage
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    prompt = write_toy_prompt(tmp_path, steps=4)
    assert main(["capture", str(prompt), "-o", str(tmp_path / "run.h5"), "--no-progress"]) == 2
    assert "has 1.0 kB free" in capsys.readouterr().err and not (tmp_path / "run.h5").exists()


def test_a_disk_that_fills_before_creation_is_one_sentence_and_leaves_nothing(small_fs, tmp_path):
    folder = small_fs("3m")
    prompt = write_toy_prompt(tmp_path, steps=4)
    p = Proc(["capture", prompt, "-o", folder / "run.h5", "--no-progress"], tmp_path / "hooks", pause="checked")
    p.wait_for("checked")  # the free-space check passed; now someone else takes the space
    _fill(folder, leave=20_000)
    p.release("checked")
    rc, _, err = p.finish()
    assert rc == 2, err
    assert "disk filled up while creating" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 12
    assert sorted(f.name for f in folder.iterdir()) == ["filler"]  # no file, no temporary left


def test_space_taken_after_creation_cannot_stop_the_capture(small_fs, tmp_path):
    """Everything is allocated at creation, so filling the disk mid-run changes nothing."""
    folder = small_fs("3m")
    prompt = write_toy_prompt(tmp_path, steps=4)
    out = folder / "run.h5"
    p = Proc(["capture", prompt, "-o", out, "--no-progress", "--no-mp4"], tmp_path / "hooks", pause="step-1")
    p.wait_for("step-1")
    _fill(folder)
    assert shutil.disk_usage(folder).free < 8192
    p.release("step-1")
    rc, _, err = p.finish()
    assert rc == 0, err
    assert status_of(out) == ("complete", 4) and opens_everywhere(out) == 4


def test_a_write_failure_mid_run_stops_keeps_the_steps_and_says_disk_full(tmp_path):
    prompt = write_toy_prompt(tmp_path, steps=4)
    out = tmp_path / "run.h5"
    p = Proc(["capture", prompt, "-o", out, "--no-progress"], tmp_path / "hooks", extra_hook="enospc@write-step-3")
    t0 = time.time()
    rc, _, err = p.finish()
    assert rc == 2, err
    assert "disk filled up while writing" in err and "2 completed steps are kept" in err and "Traceback" not in err
    assert status_of(out) == ("failed: disk full", 2) and opens_everywhere(out) == 2
    assert not out.with_suffix(".mp4").exists() and time.time() - t0 < 300


def test_unknown_selections_and_the_budget_are_refused_before_the_weights_load(tmp_path, capsys, no_weights):
    prompt = write_toy_prompt(tmp_path, steps=4)
    assert main(["capture", str(prompt), "-o", str(tmp_path / "a.h5"), "--tokens", "circel", "--no-progress"]) == 2
    assert "circel" in capsys.readouterr().err
    assert main(["capture", str(prompt), "-o", str(tmp_path / "b.h5"), "--max-file-gb", "0.000001",
                 "--no-progress"]) == 2
    assert "budget" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.h5"))


def _long_prompt(tmp_path, tokens: str, name="long.yaml") -> Path:
    p = tmp_path / name
    words = " ".join(["red circle"] * 300) + " blue bar"  # 602 words and EOS: past the 512 keys
    p.write_text(f'prompt: "{words}"\nvideo_negative_prompt: ""\naudio_negative_prompt: ""\nmodel: toy\n'
                 f"steps: 2\ncapture:\n  tokens: {tokens}\n  kinds: [text_video]\n")
    return p


def test_a_selection_in_the_cut_part_of_a_long_prompt_is_an_error_before_loading(tmp_path, capsys, no_weights):
    prompt = _long_prompt(tmp_path, "[bar]")
    assert main(["capture", str(prompt), "-o", str(tmp_path / "x.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "512-token limit" in err and "bar" in err and "Traceback" not in err


def test_a_long_prompt_says_how_many_tokens_were_cut_records_it_and_hints_are_shell_quoted(tmp_path, capsys):
    import h5py

    prompt = _long_prompt(tmp_path, "[circle]")
    out = tmp_path / "we ird;$(touch pwned).h5"
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress", "--no-mp4"]) == 0
    err = capsys.readouterr().err
    assert "the last 91 are cut" in " ".join(err.split())  # 602 words + EOS = 603 tokens, 512 kept
    with h5py.File(out, "r") as f:
        assert int(f.attrs["text_tokens_cut"]) == 91
    hint = next(line for line in err.splitlines() if line.startswith("next:"))
    assert shlex.quote(str(out)) in hint
    assert main(["info", str(out), "--no-tokens"]) == 0
    assert "91 tokens" in capsys.readouterr().out
    assert not (tmp_path / "pwned").exists()
