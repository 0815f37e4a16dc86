"""The Python API (docs/API.md): every code block of the page runs, in order, on a real toy capture."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import ovi_attn_render as oa

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "API.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_code_block_of_the_api_page_runs(toy_run, monkeypatch):
    blocks = python_blocks(API_DOC.read_text())
    assert len(blocks) >= 6
    monkeypatch.chdir(toy_run.parent)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/API.md block {i + 1}", "exec"), namespace)
    assert Path(toy_run.parent / "grid.png").is_file()


def test_text_video_dims_and_coordinates_come_from_the_file(toy_run):
    with oa.open_capture(toy_run) as cap:
        m = cap.text_video("red")
        assert m.dims == ("step", "layer", "frame", "y", "x")
        assert list(m.step.values) == list(cap.steps) and list(m.layer.values) == list(cap.layers)
        assert m.sizes["frame"] == cap.grid[0]
        raw = cap.file.text_video(cap.file.token_index("red"))  # the reader's: the file's dims, less token
        assert raw.dims == tuple(d for d in cap.file.map_dims["text_video"] if d not in ("branch", "token"))
        assert str(raw.token_label.values) == "red" and list(raw.step.values) == list(cap.steps)
        raw = raw.transpose("step", "layer", "head", "frame", "y", "x").values
        np.testing.assert_array_equal(m.values, raw[:, :, 0])
        one = cap.text_video("red", frame=8, steps=-1, layers=[1])
        assert one.dims == ("step", "layer", "y", "x") and int(one.frame) == 2 and int(one.pixel_frame) == 8
        np.testing.assert_array_equal(one.values[0, 0], raw[-1, 1, 0, 2])


def test_renorm_divides_by_the_mass_on_real_tokens(toy_run):
    with oa.open_capture(toy_run) as cap:
        plain, renormed = cap.text_video("red"), cap.text_video("red", renorm=True)
        rest = 1 - cap.text_video("<eos>") - cap.text_video("<pad>")
        np.testing.assert_allclose(renormed.values, plain.values / np.maximum(rest.values, 1e-6), rtol=1e-6)


def test_selections_out_of_range_are_user_errors(toy_run):
    with oa.open_capture(toy_run) as cap:
        with pytest.raises(oa.UserError, match="layers 7 is not available"):
            cap.text_video("red", layers=7)
        with pytest.raises(oa.UserError, match="not captured"):
            cap.text_video("green")
        with pytest.raises(oa.UserError, match="mean over heads only"):
            cap.text_video("red", heads=0)
        with pytest.raises(oa.UserError, match="no option 'colour'"):
            oa.render(cap, "steps", token="red", colour="red")


def test_render_without_out_returns_the_same_picture_as_the_file(toy_run, tmp_path):
    with oa.open_capture(toy_run) as cap:
        img = oa.render(cap, "grid", token="red", frame=8)
        path = oa.render(cap, "grid", token="red", frame=8, out=tmp_path / "g.png")
    import imageio.v3 as iio

    np.testing.assert_array_equal(img, np.asarray(iio.imread(path))[..., :3])


def test_capture_api_writes_the_file_prints_nothing_and_reports_progress(tmp_path, capsys):
    import ovi_attn_capture as oc

    calls = []
    summary = oc.capture(ROOT / "data/prompts/example.yaml", tmp_path / "api.h5", num_steps=2, mp4=False,
                         on_progress=lambda done, total: calls.append((done, total)))
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert calls == [(1, 2), (2, 2)]
    assert Path(summary.path) == tmp_path / "api.h5" and summary.steps == 2
    with oa.open_capture(summary.path) as cap:
        assert cap.status == "complete" and list(cap.steps) == [0, 1]
    with pytest.raises(oa.UserError, match="give output="):
        oc.capture({"prompt": "a red circle", "model": "toy"})
