"""Fixtures shared by the test modules: capture files to read, made once per session.

`run`: a synthetic capture (tests/synthetic.py: grey video, maps hot on known cells), written
through the format's own writer in milliseconds. `toy_run`: a real capture of
data/prompts/example.yaml by the bundled toy model, 4 sampler steps (a few seconds on a CPU).
`ovi_mirror`: upstream Ovi's source, from the git checkout named by OVI_MIRROR (the parity
tests skip when it is unset or missing). `bench_path`: bench/ on sys.path for one test, to import
the benchmark scripts' helpers (_common, gpu_check) by name.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class OviMirror:
    """A git checkout of character-ai/Ovi (a bare git dir will do): files are read from HEAD."""

    root: Path

    def show(self, repo_path: str) -> str:
        """The text of upstream's `repo_path` at HEAD."""
        return subprocess.run(["git", "-C", str(self.root), "show", f"HEAD:{repo_path}"],
                              capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def ovi_mirror() -> OviMirror:
    """Upstream Ovi's source, from the environment only; a test that asks for it skips without it."""
    root = os.environ.get("OVI_MIRROR")
    if not root or not Path(root).exists():
        pytest.skip(f"no local mirror of character-ai/Ovi at {root or '(OVI_MIRROR unset)'} (set OVI_MIRROR)")
    return OviMirror(Path(root))


@pytest.fixture
def bench_path(monkeypatch) -> Path:
    """bench/ on sys.path for this test only (bench/ holds scripts, not a package)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return ROOT / "bench"


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "run.h5"
    write_synthetic(path)
    return path


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    from ovi_attn_render.cli import main

    path = tmp_path_factory.mktemp("toy") / "run.h5"
    code = main(["capture", str(ROOT / "data/prompts/example.yaml"), "-o", str(path), "--num-steps", "4",
                 "--no-progress", "--no-mp4"])
    assert code == 0, "the toy capture of data/prompts/example.yaml failed"
    return path
