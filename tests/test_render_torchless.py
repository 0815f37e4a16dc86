"""Render and info work where torch cannot be imported (a laptop without it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


def blocking(*packages: str) -> str:
    """The start of a child script in which importing any of `packages` raises ImportError."""
    return textwrap.dedent(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {packages!r}:
                    raise ImportError(name + " is blocked in this test")
                return None

        sys.meta_path.insert(0, Block())
    """)


def test_render_and_info_without_torch(tmp_path):
    cap = tmp_path / "run.h5"
    write_synthetic(cap)
    script = blocking("torch") + textwrap.dedent(f"""
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


def test_render_package_never_imports_the_capture_package():
    """No package cycle: capture builds on render, render finds capture's commands only through the
    entry-point hook (ovi_attn_render.cli.COMMAND_HOOK)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "ovi_attn_render").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("ovi_attn_capture", "torch")]
    assert offenders == []


def test_render_commands_work_when_the_capture_package_is_missing(tmp_path):
    cap = tmp_path / "run.h5"
    write_synthetic(cap)
    script = blocking("torch", "ovi_attn_capture") + textwrap.dedent(f"""
        from importlib import metadata
        real = metadata.entry_points
        metadata.entry_points = lambda **kw: [e for e in real(**kw) if not e.value.startswith("ovi_attn_capture")]
        from ovi_attn_render.cli import main
        sys.exit(main(["render", {str(cap)!r}, "--token", "man", "--frame", "4"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
