"""Query points in the prompt file: syntax, placement on the token grid, one-sentence errors."""

import math

import pytest

from ovi_attn_capture.pipeline import queries as Q
from ovi_attn_capture.pipeline.prompt_file import parse_prompt_text
from ovi_attn_render.common.errors import UserError

PROMPT = 'prompt: "A man runs in a park."\n'
# The 720x720_5s clip: 121 frames, 31 x 45 x 80 ... here a small stand-in geometry.
GEOMETRY = dict(pixel_frames=121, pixel_size=(720, 1280), grid=(31, 45, 80), audio_tokens=157,
                seconds_per_token=512 / 16000)


def _spec(text: str):
    return parse_prompt_text(PROMPT + text, source="run.yaml")


def test_points_fractions_pixels_labels_and_audio_times():
    spec = _spec("queries:\n"
                 "  - {frame: 60, x: 0.5, y: 0.3, label: face}\n"
                 "  - {frame: 0, x: 640, y: 1}\n"
                 "  - {token: man, frame: 60, step: 10}\n"
                 "  - {time: 1.5, label: clap}\n")
    face, pixel, man, clap = spec.queries
    assert (face.label, face.frame, face.x, face.y, face.tower) == ("face", 60, 0.5, 0.3, "video")
    assert isinstance(pixel.x, int) and pixel.label == "f0_x640_y1"
    assert man.adaptive and (man.token, man.step) == ("man", 10)
    assert clap.tower == "audio" and clap.time == 1.5
    placed = Q.resolve_queries(spec.queries, **GEOMETRY)
    assert (placed[0].latent_frame, placed[0].y, placed[0].x) == (15, int(0.3 * 45), 40)  # frame 60 -> latent 15
    assert placed[0].pixel_x == 640.0 and placed[0].pixel_y == pytest.approx(216.0)
    assert (placed[1].latent_frame, placed[1].y, placed[1].x) == (0, 0, 40)  # pixel 640 of 1280 -> column 40
    assert placed[2].adaptive and placed[2].y == -1 and placed[2].latent_frame == 15
    assert placed[3].audio_token == int(1.5 * 16000 / 512) and math.isnan(placed[3].pixel_x)


def test_fraction_one_is_the_last_cell():
    spec = _spec("queries: [{frame: 120, x: 1.0, y: 1.0}]\n")
    (q,) = Q.resolve_queries(spec.queries, **GEOMETRY)
    assert (q.latent_frame, q.y, q.x) == (30, 44, 79)


def test_no_queries_by_default():
    assert _spec("").queries is None


@pytest.mark.parametrize("text, words", [
    ("queries: [{frame: 60, x: 1.5, y: 0.3}]", ["item 1", "x 1.5", "fraction in [0, 1]"]),
    ("queries: [{frame: 60, x: 0.5}]", ["item 1", "lacks y"]),
    ("queries: [{frame: -2, x: 0.5, y: 0.5}]", ["frame -2", "whole number"]),
    ("queries: [{frame: 6, x: 0.5, y: 0.5, colour: red}]", ["'colour'", "keys are frame, x, y, label"]),
    ("queries: [{time: -1}]", ["time -1", "seconds"]),
    ("queries: [{frame: 1, x: 0.1, y: 0.1, label: a}, {frame: 2, x: 0.2, y: 0.2, label: a}]", ["label 'a' twice"]),
    ("queries: [{token: man, frame: 60}]", ["lacks step"]),
    ("queries: 5", ["must be a list"]),
    ("queries: [{frame: 1, x: 0.1, y: x}]", ["y 'x'"]),
])
def test_bad_queries_are_one_sentence_with_the_line(text, words):
    with pytest.raises(UserError) as e:
        _spec(text + "\n")
    msg = str(e.value)
    assert msg.startswith("run.yaml, line 2: queries ")
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_adaptive_query_names_a_prompt_token_and_a_step_before_the_last():
    with pytest.raises(UserError, match="woman"):
        _spec("queries: [{token: woman, frame: 6, step: 3}]\n")
    with pytest.raises(UserError, match="pick a step below 49"):
        _spec("queries: [{token: man, frame: 6, step: 49}]\n")
    assert _spec("queries: [{token: man, frame: 6, step: 48}]\n").queries[0].step == 48


@pytest.mark.parametrize("query, words", [
    ({"frame": 121, "x": 0.5, "y": 0.5}, ["frame 121", "121 frames (0 to 120)"]),
    ({"frame": 3, "x": 1280, "y": 5}, ["x 1280 pixels", "1280x720"]),
    ({"time": 5.1}, ["5.1 s", "past the end of the audio (5.02 s)"]),
])
def test_points_outside_the_clip_are_user_errors(query, words):
    specs = Q.parse_queries([query])
    with pytest.raises(UserError) as e:
        Q.resolve_queries(specs, **GEOMETRY)
    for w in words:
        assert w in str(e.value)


def test_capture_cli_refuses_a_bad_query_with_exit_two(tmp_path, capsys):
    from tests.cli_calls import fails

    f = tmp_path / "run.yaml"
    f.write_text(PROMPT + "queries: [{frame: 6, x: 2.5, y: 0.1, label: hand}]\n")
    msg = fails(capsys, "capture", f, "-o", tmp_path / "out.h5")
    assert "queries item 1 (hand) has x 2.5" in msg and "Traceback" not in msg
