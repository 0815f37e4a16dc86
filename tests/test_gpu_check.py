"""bench/gpu_check.py cannot rot: its --smoke mode runs every section on the CPU, without
the packages the device machine lacks, and a wrong kernel makes it exit non-zero."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
NOT_ON_THE_DEVICE = "flash_attn,flash_attn_interface,diffusers,h5netcdf,av,ftfy"

# Runs a script with some top-level packages made unimportable, as on the device machine.
WITHOUT = """
import importlib.abc, os, runpy, sys
blocked = set(sys.argv[1].split(","))
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"No module named {name!r} (not on the device machine)")
        return None
sys.meta_path.insert(0, Missing())
for name in list(sys.modules):
    if name.split(".")[0] in blocked:
        del sys.modules[name]
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.timeout(240)
def test_smoke_runs_every_section_without_the_packages_the_device_lacks(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WITHOUT, NOT_ON_THE_DEVICE, str(SCRIPT), "--smoke", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["status"] == 0 and not data["failed"]
    sections = {c["section"] for c in data["checks"]}
    assert sections == {"setup", "backends", "maps", "identity", "real", "writer"}
    assert data["checks"][0]["value"].startswith("dpm++ (diffusers is not installed")  # ours, not diffusers' UniPC
    names = " | ".join(c["name"] for c in data["checks"])
    for expected in ("sdpa (cpu flash), bfloat16, video->audio masked", "tiny: ours vs plain latents",
                     "tiny: ours+fusion maps in the file vs synchronous copies", "tiny ours_", "tiny_long"):
        assert expected in names
    # Every mode ran at both sizes (the long one for its memory figures), the query-point capture included.
    assert set(data["details"]["real"]["long_memory"]) == {"plain", "ours", "ours+fusion", "naive", "queries"}
    assert "gpu_check: all checks passed" in proc.stdout


def test_a_kernel_with_a_wrong_lse_fails_the_check(tmp_path, monkeypatch, bench_path):
    import gpu_check
    from ovi_attn_capture.model import attention as A

    def flipped(q, k, v, k_lens):  # right values, queries in the wrong order
        out, lse = A._math(q, k, v, k_lens)
        return out.to(q.dtype), lse.flip(-1)

    monkeypatch.setattr(gpu_check, "kernels", lambda device: {"flipped": flipped})
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--smoke", "--only", "backends,maps", "--out", str(tmp_path)])
    assert gpu_check.main() == 1
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {(c["section"], c["name"].split(",")[0]) for c in data["failed"]}
    assert ("backends", "flipped") in failed and ("maps", "flipped") in failed


def test_an_unknown_section_is_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--only", "kernels,speed"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown section" in proc.stderr
