"""One selection grammar (contract/selection.py) and one token resolver (token_groups.TokenTable)
at capture and at render: the same words select the same values, out-of-range parts are
errors (exit 2, one sentence), `-1` names files with the real value, `man#1` and `#3-4` work
at render as they do at capture."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_calls import fails, ok, written

from ovi_attn_capture.pipeline.prompt_file import parse_prompt_text, resolve_model_defaults
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.reader import open_capture
from ovi_attn_render.contract.selection import resolve

ROOT = Path(__file__).resolve().parents[1]
TINY = 'prompt: "A man runs in a park."\nmodel: tiny\nsteps: 30\n'

SPECS = [
    ("7", [7]),
    (7, [7]),
    ("-1", [29]),
    ("-3", [27]),
    ("10-12,25", [10, 11, 12, 25]),
    ("0:30:10", [0, 10, 20]),
    ("28:", [28, 29]),
    (":3", [0, 1, 2]),
    ("every 15", [0, 15]),
    ({"every": 15}, [0, 15]),
    ("all", list(range(30))),
    ([1, "3-4", "every 10"], [0, 1, 3, 4, 10, 20]),
]


def captured(value, key: str, n: int = 30) -> list[int]:
    """What capture records for capture.<key> = value: steps of an n-step run, layers of an n-block model."""
    spec = parse_prompt_text(TINY.replace("steps: 30", f"steps: {n}"), source="p.yaml")
    setattr(spec.capture, key, value)
    resolved = resolve_model_defaults(spec, num_layers=n, native_size=(64, 64), default_slg_layer=0)
    return getattr(resolved.capture, key)


@pytest.mark.parametrize("value, expected", SPECS, ids=[str(v) for v, _ in SPECS])
def test_capture_and_render_select_the_same_values(value, expected):
    available = np.arange(30)
    for key in ("steps", "layers"):
        assert captured(value, key) == expected
        assert list(available[resolve(value, available, key)]) == expected


def test_render_selects_values_not_positions():
    every_5th = np.arange(0, 50, 5)  # a capture of steps: every 5
    assert list(every_5th[resolve("10-20", every_5th, "steps")]) == [10, 15, 20]
    assert list(every_5th[resolve("-1", every_5th, "steps")]) == [45]
    assert list(every_5th[resolve("every 10", every_5th, "steps")]) == [0, 10, 20, 30, 40]
    with pytest.raises(UserError, match=r"^--steps 7 is not available; steps: 0,5,10,15,20,25,30,35,40,45\.$"):
        resolve("7", every_5th, "steps", what="steps")
    with pytest.raises(UserError, match=r"^--steps '1-4' selects nothing; steps: "):
        resolve("1-4", every_5th, "steps", what="steps")


@pytest.mark.parametrize("spec", ["0-5", "2:9", "3", "-4", "0:50:5", "1-3"])
def test_out_of_range_is_an_error_at_capture_and_render(spec):
    with pytest.raises(UserError) as at_capture:
        captured(spec, "layers", n=3)
    with pytest.raises(UserError) as at_render:
        resolve(spec, np.arange(3), "layers", what="captured layers")
    for err in (at_capture.value, at_render.value):
        message = str(err)
        assert message.endswith(".") and ". " not in message  # one sentence
        assert "layers: 0-2." in message  # names what is available
    assert str(at_capture.value).startswith(f"p.yaml: capture.layers {spec}") or f"'{spec}'" in str(at_capture.value)
    assert str(at_render.value).startswith("--layers ")


def test_render_layers_past_the_capture_is_an_error_not_clipped(capsys, run):
    message = fails(capsys, "render", run, "--token", "man", "--layers", "0-5")
    assert message == "error: --layers '0-5' reaches outside the available values; captured layers: 0-2."
    message = fails(capsys, "render", run, "--token", "man", "--steps", "2:9")
    assert message.startswith("error: --steps '2:9' reaches outside the available values; readable steps")
    assert "captured layers: 0-2." in fails(capsys, "render", run, "--token", "man", "--layers", "7")


def test_capture_flags_out_of_range_exit_2_before_anything_runs(capsys, tmp_path):
    out = tmp_path / "x.h5"
    message = fails(capsys, "capture", ROOT / "data/prompts/example.yaml", "-o", out, "--num-steps", "4",
                    "--capture-steps", "0-9", "--no-progress", "--no-mp4")
    assert message == "error: --capture-steps '0-9' reaches outside the available values; sampler steps: 0-3."
    message = fails(capsys, "capture", ROOT / "data/prompts/example.yaml", "-o", out, "--num-steps", "4",
                    "--layers", "0-99", "--no-progress", "--no-mp4")  # the toy's depth is known once it loads
    assert message.startswith("error: --layers '0-99' reaches outside the available values; toy layers: 0-")
    assert not out.exists()


def test_minus_one_names_files_with_the_real_value(capsys, run, tmp_path):
    out, _ = ok(capsys, "render", run, "--token", "man", "--steps", "-1", "--layers", "-1", "-o", tmp_path)
    (path,) = written(out)
    assert path.name == "run_steps_man_f4_s3_l2.gif"  # 4 steps, 3 layers: the last of each
    out, _ = ok(capsys, "render", run, "--token", "man", "--steps", "3", "--layers", "2", "-o", tmp_path, "--force")
    assert written(out) == [path]  # -1 and the value it means are one picture, one name


def test_token_names_resolve_at_render_as_at_capture(capsys, run, tmp_path):
    with open_capture(str(run)) as cap:
        man = cap.token_index("man")
        assert cap.token_index("man#1") == cap.token_index("MAN#1") == man
        assert cap.token_index("#1") == cap.token_index(1) == man  # token 1 is the first "man"
        assert cap.token_index("man#2") == cap.groups.index("man#2")
        with pytest.raises(UserError, match=r"^token 'man#3' was not captured"):
            cap.token_index("man#3")
    out, _ = ok(capsys, "render", run, "--token", "man#1", "-o", tmp_path)
    assert [p.name for p in written(out)] == ["run_steps_man_f4.gif"]  # the canonical label names the file


def test_token_range_at_render_finds_the_captured_phrase(capsys, toy_run, tmp_path):
    with open_capture(str(toy_run)) as cap:
        phrase = cap.groups.index("moves left")
        tokens = [r["index"] for r in cap.token_table() if "moves left" in r["groups"]]
        spec = f"#{tokens[0]}-{tokens[-1]}"  # the phrase's tokens, by index
        assert cap.token_index(spec) == phrase
    out, _ = ok(capsys, "render", toy_run, "--token", spec, "-o", tmp_path)
    assert [p.name for p in written(out)] == ["run_steps_moves-left_f8.gif"]
    assert "was not captured" in fails(capsys, "render", toy_run, "--token", "#0-1", "-o", tmp_path)


def test_capture_records_the_selected_values(capsys, tmp_path):
    out = tmp_path / "sel.h5"
    ok(capsys, "capture", ROOT / "data/prompts/example.yaml", "-o", out, "--num-steps", "4", "--capture-steps",
       "every 2", "--layers", "-1", "--tokens", "circle#1,#3-4", "--no-progress", "--no-mp4")
    with h5py.File(out) as f:
        assert list(f["step"][...]) == [0, 2] and len(f["layer"]) == 1
    with open_capture(str(out)) as cap:
        assert cap.groups[:2] == ["circle", "#3-4"]
        assert list(cap.layers) == [int(cap.attrs["num_layers"]) - 1]  # -1: the last block
        assert cap.token_index("circle#1") == 0 and cap.token_index("#3-4") == 1
    out_dir = tmp_path / "r"
    o, _ = ok(capsys, "render", out, "--token", "#3-4", "--steps", "every 2", "-o", out_dir)
    assert len(written(o)) == 1


def test_api_takes_the_same_words(run):
    import ovi_attn_render as oa

    with oa.open_capture(str(run)) as cap:
        a = cap.text_video("man#1", steps=[0, "2-3"], layers="every 2")
        assert list(a["step"].values) == [0, 2, 3] and list(a["layer"].values) == [0, 2]
        with pytest.raises(UserError, match=r"reaches outside the available values; captured layers: 0-2\.$"):
            cap.text_video("man", layers="0-5")


def test_viewer_checks_selections_with_the_same_grammar():
    from ovi_attn_render.viewer.state import BadParameter, parse_state

    assert parse_state({"layers": "every 2"}, 1).layers == "every 2"
    assert parse_state({"heads": "-1"}, 1).heads == "-1"
    with pytest.raises(BadParameter, match="runs backwards; write it as 2-5"):
        parse_state({"layers": "5-2"}, 1)
