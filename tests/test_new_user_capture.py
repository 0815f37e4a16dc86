"""Issue 14, capture side: eval, model overrides, token-index messages, --help, units, progress."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_calls import fails, ok  # noqa: E402

torch = pytest.importorskip("torch")


ROOT = Path(__file__).resolve().parents[1]
TINY = """\
prompt: "A red circle moves left. <AUDCAP>a beep<ENDAUDCAP>"
model: toy
seed: 7
steps: 3
capture:
  tokens: [circle]
  kinds: [text_video]
"""
EVAL = """\
steps: 1
seed: 1000
prompts:
  - prompt: "a red cross moves left. <AUDCAP>the cross beeps<ENDAUDCAP>"
  - prompt: "a green circle moves right. <AUDCAP>the circle beeps<ENDAUDCAP>"
"""


@pytest.fixture
def eval_file(tmp_path) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text(EVAL)
    return path


# ---------------------------------------------------------------------- 4. eval
def test_eval_refuses_to_overwrite_and_replaces_all_of_an_earlier_run_with_force(capsys, tmp_path, monkeypatch,
                                                                                  eval_file):
    monkeypatch.setenv("OVI_ATTN_PROGRESS_SECONDS", "0")
    out = tmp_path / "ev"
    out.mkdir()
    (out / "eval.json").write_text("{}")
    (out / "prompt_05.h5").write_bytes(b"an earlier run")
    (out / "notes.txt").write_text("mine")
    msg = fails(capsys, "eval", eval_file, "-o", out, "--prompts", "1")
    assert "already holds an evaluation" in msg and "--force" in msg
    assert (out / "eval.json").read_text() == "{}"  # untouched
    _, err = ok(capsys, "eval", eval_file, "-o", out, "--prompts", "1", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "notes.txt", "prompt_00.h5"]  # no stale run left
    assert "evaluating: 1/1 prompts" in err  # progress on stderr without a terminal


def test_eval_prompts_zero_is_refused(capsys, tmp_path, eval_file):
    msg = fails(capsys, "eval", eval_file, "-o", tmp_path / "ev", "--prompts", "0")
    assert "--prompts 0 selects no prompts" in msg
    assert not (tmp_path / "ev").exists()


def test_eval_names_a_model_that_is_no_toy_and_missing_weights_before_creating_its_folder(capsys, tmp_path, eval_file):
    msg = fails(capsys, "eval", eval_file, "-o", tmp_path / "ev", "--model", "720x720_5s")
    assert "--model 720x720_5s is not a toy model" in msg and "toy_tracking" in msg
    msg = fails(capsys, "eval", eval_file, "-o", tmp_path / "ev", "--weights", tmp_path / "nowhere")
    assert "nowhere/toy.safetensors is missing" in msg and "data/toy/README.md" in msg
    assert not (tmp_path / "ev").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_a_missing_device_fails_before_creating_its_folder(capsys, tmp_path, eval_file):
    msg = fails(capsys, "eval", eval_file, "-o", tmp_path / "ev", "--device", "cuda")
    assert "CUDA is not available" in msg
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------------- 5. --model override
def test_model_override_drops_what_only_the_files_model_needs(capsys):
    out, err = ok(capsys, "tokens", ROOT / "data/prompts/every_word_960_10s.yaml", "--model", "toy")
    assert "rain" in out  # the token table of the file's prompt
    note = " ".join(err.split())
    assert "--model toy replaces the file's 960x960_10s" in note and "ckpt_dir" in note


def test_model_override_keeps_a_flag_given_with_it(tmp_path):
    from ovi_attn_capture.pipeline.prompt_file import load_prompt_file

    run = load_prompt_file(ROOT / "data/prompts/every_word_960_10s.yaml", {"--model": "toy", "--height": "256",
                                                                           "--width": "256"})
    assert run.ckpt_dir is None and run.capture.layers == "all" and (run.height, run.width) == (256, 256)
    same = load_prompt_file(ROOT / "data/prompts/speech_720.yaml", {"--ckpt-dir": str(tmp_path)})
    assert same.notes == []  # no model change, nothing dropped


# ---------------------------------------------------------------------- 9. messages agree
def test_token_index_messages_give_the_prompts_own_range(capsys):
    example = ROOT / "data/prompts/example.yaml"
    far = fails(capsys, "tokens", example, "--tokens", "#999")
    near = fails(capsys, "tokens", example, "--tokens", "#100")
    rng = re.search(r"this prompt has tokens 0 to \d+", near).group(0)
    assert rng in far and "511" not in far


def test_bad_seed_gets_our_sentence(capsys, tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(TINY)
    msg = fails(capsys, "capture", p, "--seed", "abc")
    assert msg == "error: --seed 'abc' is not a whole number; give one like --seed 100."


# ---------------------------------------------------------------------- 9 + 12. capture: units, progress
def test_capture_size_matches_info_and_progress_prints_lines_without_a_terminal(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OVI_ATTN_PROGRESS_SECONDS", "0")
    p = tmp_path / "p.yaml"
    p.write_text(TINY)
    out = tmp_path / "run.h5"
    _, err = ok(capsys, "capture", p, "-o", out, "--no-mp4")
    lines = [x for x in err.splitlines() if x.startswith("denoising: ")]
    assert [x.split(" steps")[0] for x in lines] == ["denoising: 1/3", "denoising: 2/3", "denoising: 3/3"]
    from ovi_attn_render.common.units import format_bytes

    size = format_bytes(out.stat().st_size)
    panel = re.sub(r"[\s│]", "", err)  # the summary panel, however rich wrapped it
    assert f"run.h5{size.replace(' ', '')}" in panel
    info, _ = ok(capsys, "info", out, "--no-tokens")
    assert f"({size})" in info


# ---------------------------------------------------------------------- 10. capture --help
def test_capture_help_names_every_option_in_full_with_help_and_defaults(capsys, monkeypatch):
    from ovi_attn_capture.pipeline.prompt_file import KEYS, OVERRIDABLE

    monkeypatch.setenv("COLUMNS", "80")
    out, _ = ok(capsys, "capture", "--help")
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    entries = re.split(r"\n  (?=-)", out.split("Options:", 1)[1])
    helps = {}
    for entry in entries:
        names = re.findall(r"--[a-z0-9-]+", entry.split("  ", 1)[0])
        text = " ".join(entry.split())
        for n in names:
            helps[n] = text
    for flag in OVERRIDABLE:
        if flag in ("--output",):
            continue
        assert flag in helps, flag
        assert len(helps[flag].split()) > 3, f"{flag} has no help text"
    # defaults shown agree with the prompt file's
    for flag, shown in [("--seed", "100"), ("--num-steps", "50"), ("--solver", "unipc"), ("--shift", "5.0"),
                        ("--video-guidance-scale", "4.0"), ("--audio-guidance-scale", "3.0"),
                        ("--max-file-gb", "20"), ("--model", "toy"), ("--branch", "cond"), ("--heads", "mean"),
                        ("--map-dtype", "int16"), ("--device", "auto"), ("--dtype", "bfloat16")]:
        assert f"[default: {shown}]" in helps[flag], (flag, helps[flag])
        default = KEYS[OVERRIDABLE[flag]].default
        assert shown == (f"{default:g}" if isinstance(default, float) and flag == "--max-file-gb" else str(default))
    for flag in ("--video-negative-prompt", "--audio-negative-prompt"):
        assert KEYS[OVERRIDABLE[flag]].default in helps[flag]
