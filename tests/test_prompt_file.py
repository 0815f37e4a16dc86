"""The prompt file: parsing, defaults, overrides, and error messages that name the line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ovi_attn_capture.pipeline.prompt_file import (
    KEYS,
    KINDS,
    OVERRIDABLE,
    default_run_spec,
    load_prompt_file,
    parse_prompt_text,
    resolve_model_defaults,
)
from ovi_attn_render.common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "prompts"
TINY = 'prompt: "A man runs in a park. A man waves."\nmodel: tiny\n'


def parse(text: str, **kw):
    return parse_prompt_text(text, source="p.yaml", **kw)


def error_of(text: str, **kw) -> str:
    with pytest.raises(UserError) as info:
        parse(text, **kw)
    return str(info.value)


# ---------------------------------------------------------------------------- the examples


def test_example_file_loads_and_fits_the_brief():
    spec = load_prompt_file(PROMPTS / "example.yaml")
    assert spec.model == "toy" and spec.steps == 30 and spec.seed == 4 and spec.mode == "t2v"
    assert spec.capture.layers == "all" and spec.capture.steps == "all"
    assert spec.capture.kinds == ["text_video", "text_audio", "video_audio", "audio_video"]
    assert spec.output == PROMPTS / "example.h5"  # relative to the file, not the working dir
    assert spec.source_path == PROMPTS / "example.yaml" and "red circle" in spec.source_text
    resolved = resolve_model_defaults(spec, num_layers=4, native_size=(64, 64), default_slg_layer=1)
    assert resolved.capture.steps == list(range(30)) and resolved.capture.layers == [0, 1, 2, 3]
    assert (resolved.height, resolved.width, resolved.slg_layer) == (64, 64, 1)


@pytest.mark.parametrize("name", ["speech_720.yaml", "every_word_960_10s.yaml", "i2v_720.yaml"])
def test_other_examples_load(name, tmp_path):
    image = tmp_path / "frame.png"
    image.write_bytes(b"\x89PNG")
    spec = load_prompt_file(PROMPTS / name, overrides={"--ckpt-dir": str(tmp_path), "--image": str(image) if "i2v" in name else None})
    resolved = resolve_model_defaults(spec)
    assert resolved.slg_layer == 11 and resolved.ckpt_dir == tmp_path
    assert all(0 <= layer < 30 for layer in resolved.capture.layers)


def test_minimal_file_gets_the_defaults():
    spec = parse('prompt: "A cat."\nmodel: tiny')
    default = default_run_spec()
    for key in ("seed", "steps", "solver", "shift", "video_guidance_scale", "audio_guidance_scale",
                "video_negative_prompt", "audio_negative_prompt", "dtype", "device", "max_file_gb"):
        assert getattr(spec, key) == getattr(default, key)
    assert (spec.height, spec.width, spec.slg_layer, spec.mode) == (None, None, None, "t2v")
    assert spec.capture.tokens == ["all"] and spec.capture.kinds == list(KINDS)
    assert spec.capture.branches == ("cond",)
    assert json.loads(json.dumps(spec.settings()))["capture"]["tokens"] == ["all"]


def test_released_model_defaults_resolve(tmp_path):
    spec = parse(f'prompt: "A cat."\nmodel: 960x960_10s\nckpt_dir: {tmp_path}\ncapture:\n  layers: "28-29"\n')
    resolved = resolve_model_defaults(spec)
    assert (resolved.height, resolved.width, resolved.slg_layer) == (960, 960, 11)
    assert resolved.capture.layers == [28, 29]
    with pytest.raises(ValueError):
        resolve_model_defaults(parse(TINY))  # the tiny model's facts must be passed


# ---------------------------------------------------------------------------- YAML errors


def test_broken_yaml_reports_line_and_column():
    msg = error_of('seed: 3\nprompt: A man says: hello\n')
    assert msg.startswith("p.yaml, line 2, column 19: the YAML does not parse (mapping values are not allowed here)")
    assert "double quotes" in msg
    assert "indent with spaces" in error_of('prompt: "x"\ncapture:\n\ttokens: [a]\n')
    assert error_of("# nothing\n").startswith("p.yaml has no prompt; add a line such as prompt:")
    assert parse("# nothing\n", overrides={"--prompt": "A cat.", "--model": "tiny"}).prompt == "A cat."
    assert "key: value lines" in error_of("- a\n- b\n")


def test_unknown_keys_name_line_and_closest_key():
    assert error_of(TINY + "sead: 5\n") == "p.yaml, line 3: unknown key 'sead'; did you mean 'seed'?"
    assert "belongs under capture:" in error_of(TINY + "tokens: [man]\n")
    assert "here it is steps" in error_of(TINY + "sample_steps: 30\n")
    msg = error_of(TINY + "capture:\n  layer: all\n")
    assert msg == "p.yaml, line 4: unknown key 'capture.layer'; did you mean 'layers'?"
    assert "belongs at the top level" in error_of(TINY + "capture:\n  seed: 1\n")
    assert "the keys under capture: are tokens" in error_of(TINY + "capture:\n  zzz: 1\n")
    assert "is set twice (first on line 3)" in error_of(TINY + "seed: 1\nseed: 2\n")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("seed: abc", "p.yaml, line 3: seed must be a whole number, got 'abc'; write e.g. seed: 100"),
        ("steps: -5", "p.yaml, line 3: steps must be between 1 and 1000, got -5"),
        ("solver: eular", "solver must be one of unipc, euler, dpm++, got 'eular' (did you mean euler?)"),
        ("shift: 0", "shift must be above 0, got 0"),
        ("height: 720.5", "height must be a whole number, got 720.5"),
        ("fp8: maybe", "fp8 must be true or false, got 'maybe'"),
        ("device: gpu", "device must be auto, cpu, cuda or cuda:N"),
        ("seed:", "seed has no value; write e.g. seed: 100, or leave it out to use the default (100)"),
        ("slg_layer: -2", "slg_layer must be at least -1, got -2"),
        ("capture:\n  kinds: [text_video, txt_audio]", "line 4: capture.kinds must be one of text_video"),
        ("capture:\n  branch: all", "capture.branch must be one of cond, uncond, both"),
        ("capture:\n  layers: 3..5", "capture.layers '3..5' is not understood; write e.g. layers"),
        ("capture:\n  steps: {every: 0}", "capture.steps 'every 0' has a zero stride"),
        ("capture: [a]", "p.yaml, line 3: capture must hold indented keys"),
    ],
)
def test_wrong_values_name_key_line_and_fix(line, expected):
    assert expected in error_of(TINY + line + "\n")


def test_impossible_combinations(tmp_path):
    assert "mode is i2v but no image is set" in error_of(TINY + "mode: i2v\n")
    msg = error_of(TINY + "image: nope.png\n", base_dir=tmp_path)
    assert msg.startswith("p.yaml, line 3: image names ") and "not a file" in msg
    (tmp_path / "f.png").write_bytes(b"x")
    assert "only used by mode: i2v" in error_of(TINY + "mode: t2v\nimage: f.png\n", base_dir=tmp_path)
    assert parse(TINY + "image: f.png\n", base_dir=tmp_path).mode == "i2v"  # implied by the image
    msg = error_of('prompt: "A cat."\nmodel: 720x720_5s\n')
    assert msg.startswith("p.yaml, line 2: model is 720x720_5s, which needs ckpt_dir") and "model: tiny" in msg
    assert "is not a folder" in error_of(TINY + f"ckpt_dir: {tmp_path / 'missing'}\n")
    assert "fp8 is only available for 720x720_5s" in error_of(
        f'prompt: "A cat."\nmodel: 960x960_5s\nckpt_dir: {tmp_path}\nfp8: true\n')
    assert "height is set but width is not" in error_of(TINY + "height: 512\n")
    assert "has layers 0 to 29" in error_of(f'prompt: "A cat."\nmodel: 960x960_5s\nckpt_dir: {tmp_path}\nslg_layer: 30\n')
    assert error_of('seed: 1\n').startswith("p.yaml has no prompt")
    assert "line 1: prompt is empty" in error_of('prompt: "  "\nmodel: tiny\n')


def test_capture_ranges_are_checked_against_the_run(tmp_path):
    msg = error_of(TINY + "steps: 20\ncapture:\n  steps: [0, 25]\n")
    assert msg == "p.yaml, line 5: capture.steps 25 is not available; sampler steps: 0-19."
    msg = error_of(f'prompt: "A cat."\nmodel: 720x720_5s\nckpt_dir: {tmp_path}\ncapture:\n  layers: "25-30"\n')
    assert msg == "p.yaml, line 5: capture.layers '25-30' reaches outside the available values; 720x720_5s layers: 0-29."
    spec = parse(TINY + "capture:\n  layers: \"0-7\"\n")  # the tiny model's depth is known later
    with pytest.raises(UserError, match=r"^p.yaml, line 4: capture.layers '0-7' reaches outside the available values; tiny layers: 0-3\.$"):
        resolve_model_defaults(spec, num_layers=4, native_size=(64, 64), default_slg_layer=1)


def test_token_selection_errors_point_at_the_item_line():
    msg = error_of(TINY + "capture:\n  tokens:\n    - man\n    - prak\n")
    assert msg.startswith("p.yaml, line 6: capture.tokens: 'prak' is not a word in the prompt (close matches: park)")
    assert "2 occurrences of 'man'" in error_of(TINY + "capture:\n  tokens: man#3\n")
    assert "no <S>...<E> speech span" in error_of(TINY + "capture:\n  tokens: [speech]\n")


def test_yaml_11_traps_keep_what_was_written():
    spec = parse('prompt: "A cat sits on a mat, yes."\nmodel: tiny\ncapture:\n  tokens: [on, yes, 3]\n  layers: 1:3\n')
    assert spec.capture.tokens == ["on", "yes", 3]  # not True, True
    assert spec.capture.layers == "1:3"  # not the base-60 number 63
    assert parse(TINY + "capture:\n  tokens: man, park\n").capture.tokens == ["man", "park"]
    assert parse(TINY + "capture:\n  steps: {every: 5}\n").capture.steps == {"every": 5}


# ---------------------------------------------------------------------------- overrides


def test_overrides_win_and_are_checked_like_the_file(tmp_path, monkeypatch):
    spec = parse(TINY + "seed: 1\n", overrides={
        "--seed": "7", "--tokens": "man,park", "--layers": "0:4", "--num-steps": "20",
        "--capture-steps": "::5", "--branch": "both", "--fp8": None, "capture.heads": "all"})
    assert spec.seed == 7 and spec.steps == 20 and spec.capture.tokens == ["man", "park"]
    assert spec.capture.layers == "0:4" and spec.capture.steps == "::5" and spec.capture.heads == "all"
    assert spec.capture.branches == ("cond", "uncond") and spec.fp8 is False
    assert spec.where("seed") == "--seed" and spec.where("solver") == "p.yaml" and spec.where("model") == "p.yaml, line 2"
    assert error_of(TINY, overrides={"--seed": "abc"}) == "--seed must be a whole number, got 'abc'; write e.g. --seed 100"
    assert error_of(TINY, overrides={"--tokens": "mna"}).startswith("--tokens: 'mna' is not a word in the prompt")
    assert error_of(TINY + "capture:\n  steps: [45]\n", overrides={"--num-steps": 20}).startswith("p.yaml, line 4: capture.steps 45 is not available")
    with pytest.raises(ValueError):
        parse(TINY, overrides={"--nope": 1})
    # file paths start from the file's folder, flag paths from the working directory
    monkeypatch.chdir(tmp_path)
    assert parse(TINY + "output: a.h5\n", base_dir="/data").output == Path("/data/a.h5")
    assert parse(TINY + "output: a.h5\n", base_dir="/data", overrides={"--output": "b.h5"}).output == tmp_path / "b.h5"


def test_every_key_has_a_flag_and_docs():
    assert sorted(OVERRIDABLE.values()) == sorted(KEYS)
    docs = (ROOT / "docs" / "PROMPT.md").read_text()
    for key in KEYS:
        assert f"`{key.split('.')[-1]}`" in docs, key
    for flag in OVERRIDABLE:
        assert f"`{flag}`" in docs, flag


def test_kinds_match_the_file_format():
    from ovi_attn_render.contract.kinds import variables_of

    assert KINDS == ("text_video", "text_audio", "video_audio", "audio_video")
    assert all(variables_of(k) for k in KINDS)  # every kind a prompt file accepts writes maps


def test_no_torch_needed():
    code = "import sys, ovi_attn_capture.pipeline.prompt_file, ovi_attn_render.contract.token_groups; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------- index sets


@pytest.mark.parametrize(
    "value, expected",
    [
        ("all", list(range(30))),
        (7, [7]),
        ([0, 5, 10], [0, 5, 10]),
        ("10-12,25", [10, 11, 12, 25]),
        ("0:30:10", [0, 10, 20]),
        ("28:", [28, 29]),
        (":3", [0, 1, 2]),
        ("::10", [0, 10, 20]),
        ("every 15", [0, 15]),
        ({"every": 15}, [0, 15]),
        (["1-2", 2, "29"], [1, 2, 29]),
    ],
)
def test_capture_layers_grammar(value, expected):
    assert layers_of(value) == expected


def layers_of(value, num_layers: int = 30) -> list[int]:
    """capture.layers as the prompt file resolves it, for a model of `num_layers` blocks."""
    spec = parse(TINY)
    spec.capture.layers = value
    return resolve_model_defaults(spec, num_layers=num_layers, native_size=(64, 64), default_slg_layer=1).capture.layers


@pytest.mark.parametrize(
    "value, message",
    [
        (30, "30 is not available; tiny layers: 0-29."),
        ([-31], "-31 is not available; tiny layers: 0-29."),
        ("0:31", "'0:31' reaches outside the available values; tiny layers: 0-29."),
        ("5-2", "range '5-2' runs backwards; write it as 2-5."),
        ("0:30:0", "zero stride"),
        ([], "empty list"),
        ({"each": 2}, "{every: N}"),
        ([1.5], "holds 1.5, which is not a selection"),
        ("x", "'x' is not understood"),
    ],
)
def test_capture_layers_errors(value, message):
    with pytest.raises(UserError, match="^p.yaml: capture.layers ") as info:
        layers_of(value)
    assert message in str(info.value)


def test_capture_steps():
    spec = parse(TINY)
    for value, expected in (("::5", list(range(0, 50, 5))), ({"every": 5}, list(range(0, 50, 5))),
                            ("every 5", list(range(0, 50, 5))), ("0:50:10,49", [0, 10, 20, 30, 40, 49]),
                            ([0, 10, 49], [0, 10, 49]), ("-1", [49])):
        spec.capture.steps = value
        got = resolve_model_defaults(spec, num_layers=4, native_size=(64, 64), default_slg_layer=1).capture.steps
        assert got == expected, value
    spec.capture.steps = [50]
    with pytest.raises(UserError, match="^p.yaml: capture.steps 50 is not available; sampler steps: 0-49.$"):
        resolve_model_defaults(spec, num_layers=4, native_size=(64, 64), default_slg_layer=1)
