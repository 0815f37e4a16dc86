"""The wheel carries what a plain `pip install` needs: the toy model (the embedded default) and configs."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_wheel_ships_the_toy_model_and_configs(tmp_path):
    pytest.importorskip("setuptools")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "out", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ovi_attn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("toy.safetensors", "toy_tracking.safetensors", "text_encoder.safetensors", "tokenizer.json",
                 "eval.yaml", "README.md"):
        assert f"ovi_attn_capture/toy/bundled/{name}" in names
    assert "ovi_attn_capture/model/configs/video_released.json" in names
    assert "ovi_attn_render/cli.py" in names
    for name in ("index.html", "app.js", "style.css"):  # the viewer's page
        assert f"ovi_attn_render/viewer/static/{name}" in names
    assert not any(n.startswith(("tests/", "bench/", "data/")) for n in names)
