"""Render and info work where torch cannot be imported (a laptop without it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest_render import write_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_render_and_info_without_torch(tmp_path):
    cap = tmp_path / "run.h5"
    write_synthetic(cap)
    script = textwrap.dedent(f"""
        import sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())
        from ovi_attn_render.cli import main
        codes = [main(["info", {str(cap)!r}]),
                 main(["render", {str(cap)!r}, "--token", "man", "--frame", "4"]),
                 main(["render", {str(cap)!r}, "--view", "grid", "--token", "man"]),
                 main(["render", {str(cap)!r}, "--view", "frames", "--token", "man", "--format", "mp4"])]
        assert "torch" not in sys.modules, "torch was imported"
        print("codes", codes)
        sys.exit(max(codes))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "codes [0, 0, 0, 0]" in r.stdout
    assert (tmp_path / "run_steps_man_f4.gif").exists()
    assert (tmp_path / "run_frames_man.mp4").exists()
