"""The benchmarks still run: each script at toy size (--quick), as a user would start it.

Only that they finish, print their table and ratios, and hold their own invariants (ours
bit-identical to plain, the file read back intact, the read counter sees the reads).
Timings are not asserted: the numbers of a toy run on a shared CI machine mean nothing.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(name: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_file_size_reports_bytes_and_throughput(tmp_path):
    stdout, data = run_bench("file_size", tmp_path)
    assert "ratios: file/raw" in stdout
    stats = data["stats"]
    assert stats["file_bytes"] >= stats["raw_bytes"] > stats["map_bytes"] > 0
    assert data["machine"]["commit"]


def test_render_latency_measures_every_command(tmp_path):
    stdout, data = run_bench("render_latency", tmp_path)
    names = [r["name"] for r in data["results"]]
    assert names == ["info", "gif (steps)", "grid", "layers", "frames mp4"]
    for r in data["results"]:
        assert r["warm_s"] > 0 and r["max_rss"] > 0
        assert r["bytes_read"] > 0  # the counting hook saw the capture being read
    gif = data["results"][1]
    assert gif["bytes_read"] >= gif["subset_bytes"] * 0.5  # it read (about) what it drew, through the hook
    assert "ratios:" in stdout


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS of a child via os.wait4")
def test_capture_overhead_runs_every_mode(tmp_path):
    stdout, data = run_bench("capture_overhead", tmp_path)
    (tiny,) = data["results"]
    modes = tiny["modes"]
    assert list(modes) == ["plain", "ours", "ours+fusion", "naive", "queries"]
    assert modes["ours"]["maps"] > 0 and modes["ours+fusion"]["maps"] > modes["ours"]["maps"]
    assert modes["queries"]["maps"] > 0 and modes["queries"]["file_bytes"] > 0  # and bit-identical (checked inside)
    assert modes["ours"]["memory"] > 0  # measured in its own child process
    assert 0 < modes["naive"]["diff_vs_plain"] < 1  # naive changes the output, a little
    assert "ours/plain =" in stdout and "naive/plain =" in stdout and "queries/plain =" in stdout


def test_a_failed_measurement_exits_non_zero(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "render_latency.py"), "--quick",
                           "--file", str(tmp_path / "missing.h5")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0


def test_encodings_compares_candidates_against_format_1(tmp_path):
    stdout, data = run_bench("encodings", tmp_path, "--only", "format1,int16,float32-deflate")
    assert "ratios: format1 file 1.000" in stdout
    res = {r["name"]: r for r in data["results"]}
    assert list(res) == ["format1", "int16", "float32-deflate"]
    assert res["int16"]["max_abs_error"] <= 0.5 / 65534 + 1e-7 < res["format1"]["max_abs_error"]
    assert res["float32-deflate"]["max_abs_error"] == 0.0  # lossless
    for r in res.values():
        assert abs(r["estimated_bytes"] / r["file_bytes"] - 1) < 0.05
        assert set(r["latency_s"]) == {"info", "gif (steps)", "grid", "layers"}
        assert r["xarray_s"]["DASK_CHUNKS"] > 0


def test_view_latency_drives_the_viewer_api(tmp_path):
    pytest.importorskip("uvicorn")
    stdout, data = run_bench("view_latency", tmp_path, "--no-browser")
    names = [t["name"] for t in data["server"]]
    assert names[:3] == ["new step", "new layer (one)", "new layer range"]
    assert all(t["p95_ms"] > 0 for t in data["server"])
    assert data["peak_rss"] > 0 and data["bytes_read"] > 0
    assert [c[0] for c in data["cli"]] == ["render GIF over steps", "render --view grid"]
    assert "ratios: server new-step p95" in stdout
