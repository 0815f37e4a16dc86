"""Fixtures shared by the test modules: capture files to read, made once per session.

`run`: a synthetic capture (tests/synthetic.py: grey video, maps hot on known cells), written
through the format's own writer in milliseconds. `toy_run`: a real capture of
data/prompts/example.yaml by the bundled toy model, 4 sampler steps (a few seconds on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


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
