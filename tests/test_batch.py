"""Batches in one process: expansion and naming, a failing prompt, resume, weights loaded once,
sp_size refused before loading (toy model, 1-2 steps)."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ovi_attn_capture.components import loading as components
from ovi_attn_capture.pipeline.batch import expand, is_single
from ovi_attn_capture.parallel.distributed import check_sp_size
from ovi_attn_render.cli import main
from ovi_attn_render.common.errors import UserError

PROMPT = 'prompt: "A red circle number {n} moves left."\nsteps: 1\n{extra}capture:\n  tokens: [circle]\n'


def write(folder: Path, name: str, n: int, extra: str = "") -> Path:
    p = folder / name
    p.write_text(PROMPT.format(n=n, extra=extra))
    return p


def test_expand_names_files_variants_and_seeds(tmp_path):
    sweep = write(tmp_path, "sweep.yaml", 1, "seeds: [3, 4]\n")
    folder = tmp_path / "more"
    folder.mkdir()
    write(folder, "b.yaml", 2, "seed: 9\n")
    (folder / "variants.yml").write_text(
        '- prompt: "A red circle."\n  seed: 5\n'
        '- prompt: "A blue square."\n  seed: 6\n  capture:\n    tokens: [triangle]\n')
    (folder / "notes.txt").write_text("not a prompt")
    jobs = expand([sweep, folder], {}, tmp_path / "out")
    assert [j.label for j in jobs] == ["sweep.yaml seed 3", "sweep.yaml seed 4", "b.yaml seed 9",
                                       "variants.yml #0 seed 5", "variants.yml #1"]
    assert [j.output.name for j in jobs[:4]] == ["sweep_seed3.h5", "sweep_seed4.h5", "b_seed9.h5",
                                                 "variants_v0_seed5.h5"]
    assert [j.run.seed for j in jobs[:4]] == [3, 4, 9, 5] and all(j.run.seeds is None for j in jobs[:4])
    # the bad variant fails alone, its error naming the line of the original file
    assert jobs[4].run is None and "variants.yml, line 6" in jobs[4].error and "triangle" in jobs[4].error
    assert not is_single([sweep]) and is_single([folder / "b.yaml"]) and not is_single([folder])
    assert not is_single([folder / "b.yaml"], {"--seeds": "1,2"})


def test_two_prompts_writing_one_file_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write(a, "x.yaml", 1, "seed: 1\n")
    write(b, "x.yaml", 2, "seed: 1\n")
    with pytest.raises(UserError, match="would both write"):
        expand([a, b], {}, tmp_path / "out")


def test_batch_failing_prompt_resume_and_one_load(tmp_path, monkeypatch, capsys):
    loads = []
    real_load = components.load_components
    monkeypatch.setattr(components, "load_components", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    src = tmp_path / "prompts"
    src.mkdir()
    write(src, "a.yaml", 1, "seeds: [1, 2]\n")
    write(src, "big.yaml", 2, "max_file_gb: 0.000001\n")  # fails at run time: over its file budget
    write(src, "bad.yaml", 3, "sed: 4\n")  # fails validation: unknown key
    out = tmp_path / "runs"
    assert main(["capture", str(src), "-o", str(out), "--no-mp4", "--no-progress"]) == 1
    assert len(loads) == 1  # one load of the weights for the whole batch
    index = json.loads((out / "batch.json").read_text())
    rows = {r["prompt"]: r for r in index["jobs"]}
    assert list(rows) == ["a.yaml seed 1", "a.yaml seed 2", "bad.yaml", "big.yaml seed 100"]
    assert rows["a.yaml seed 1"]["status"] == rows["a.yaml seed 2"]["status"] == "complete"
    assert rows["bad.yaml"]["status"] == "failed" and "unknown key 'sed'" in rows["bad.yaml"]["error"]
    assert rows["big.yaml seed 100"]["status"] == "failed" and "budget" in rows["big.yaml seed 100"]["error"]
    assert rows["a.yaml seed 1"]["file"] == str(out / "a_seed1.h5") and rows["a.yaml seed 1"]["seconds"] > 0
    assert index["counts"] == {"complete": 2, "skipped": 0, "failed": 2}
    err = capsys.readouterr().err
    assert "[1/4] a.yaml seed 1" in err and "overall 2 done, 2 failed, 0 to go" in err

    # rerun: the complete files are skipped, an incomplete one is redone, the fixed prompts run
    with h5py.File(out / "a_seed2.h5", "r+") as f:
        f.attrs["status"] = "failed"
    write(src, "big.yaml", 2)
    write(src, "bad.yaml", 3, "seed: 4\n")
    before = (out / "a_seed1.h5").stat().st_mtime_ns
    assert main(["capture", str(src), "-o", str(out), "--no-mp4", "--no-progress"]) == 0
    rows = {r["prompt"]: r for r in json.loads((out / "batch.json").read_text())["jobs"]}
    assert [r["status"] for r in rows.values()] == ["skipped", "complete", "complete", "complete"]
    assert (out / "a_seed1.h5").stat().st_mtime_ns == before
    with h5py.File(out / "a_seed2.h5") as f:
        assert f.attrs["status"] == "complete"


def test_batch_output_must_be_a_folder(tmp_path, capsys):
    p = write(tmp_path, "a.yaml", 1, "seeds: [1, 2]\n")
    assert main(["capture", str(p), "-o", str(tmp_path / "x.h5")]) == 2
    assert "names a file" in capsys.readouterr().err


def test_sp_size_refused_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(components, "load_components", lambda *a, **k: pytest.fail("loaded before refusing"))
    p = write(tmp_path, "a.yaml", 1, "model: tiny\nsp_size: 2\n")
    assert main(["capture", str(p), "-o", str(tmp_path / "a.h5")]) == 2
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().err
    q = write(tmp_path, "b.yaml", 2, "sp_size: 1\n")
    assert main(["capture", str(p), str(q), "-o", str(tmp_path / "out")]) == 2
    assert "mixes sp_size values (1, 2)" in capsys.readouterr().err
    with pytest.raises(UserError, match="does not divide the 4 processes"):
        check_sp_size(3, 4, 24, "720x720_5s")
    with pytest.raises(UserError, match="does not divide the 1 attention heads of the toy"):
        check_sp_size(2, 2, 1, "toy")
    check_sp_size(4, 8, 24, "720x720_5s")  # 2 groups of 4 ranks, 6 heads each


def test_sp_memory_tables_come_from_the_checkpoint_shapes():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "sp_memory.py")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    params = sum(np.prod(s) for s in json.loads((root / "tests/data/fusion_state_dict_11b.json").read_text()).values())
    assert f"fusion weights {params * 2 / 1e9:.2f} GB" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| 960x960_10s | 54,900 + 314 |")]
    assert [r[2] for r in rows] == ["1", "2", "4", "8"]
    per_rank = [float(r[4].split()[0]) for r in rows]
    assert per_rank[0] == pytest.approx(2 * per_rank[1], rel=0.01) == pytest.approx(8 * per_rank[3], rel=0.01)
