"""Calling `ovi-attn` in-process from tests: success, a user mistake (exit 2), what was written."""

from __future__ import annotations

from pathlib import Path

from ovi_attn_render.cli import main


def ok(capsys, *args) -> tuple[str, str]:
    """Run a command that must succeed; (stdout, stderr)."""
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    c = capsys.readouterr()
    return c.out, c.err


def fails(capsys, *args) -> str:
    """Run a command that must fail as a user mistake; its message on one line."""
    assert main([str(a) for a in args]) == 2
    return " ".join(capsys.readouterr().err.split())


def written(out: str) -> list[Path]:
    """The paths a render reported as written."""
    return [Path(line.split("wrote ", 1)[1].strip()) for line in out.splitlines() if "wrote " in line]
