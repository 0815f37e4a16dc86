"""Issue 14, render side: what a new user tripped over, one test (or more) per item.

Synthetic captures (synthetic.py) where a test must name pixels; one toy-model
capture with every word (and punctuation) of a prompt where it needs many real groups.
New names are imported inside the tests, so each test fails on its own on the old code.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import imageio.v3 as iio
import numpy as np
import pytest

from cli_calls import fails, ok, written
from synthetic import GREY, Synth, write_synthetic

from ovi_attn_render.views import draw
from ovi_attn_render.cli import main
from ovi_attn_render.contract.reader import open_capture

PROMPT = """\
prompt: "A red circle, a blue square; both move. <AUDCAP>a beep<ENDAUDCAP>"
video_negative_prompt: "a blue blur"
model: toy
seed: 3
steps: 2
capture:
  tokens: all
  kinds: [text_video]
  branch: both
  dtype: float32
"""


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Path:
    """Both branches; 'park' is absent from the negative prompt (its uncond maps are NaN, as capture writes)."""
    path = tmp_path_factory.mktemp("cap") / "both.h5"
    write_synthetic(path, Synth(branches=("cond", "uncond"), map_dtype="float32"))  # raw floats: NaN writes as is
    with h5py.File(path, "a") as f:
        f["text_video"][1, 1] = np.nan  # [branch uncond, token park]
        f.attrs["video_negative_prompt"] = "a man"
    return path


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> Path:
    """A real (toy-model) capture of every word and punctuation mark of a prompt, both branches."""
    pytest.importorskip("torch")
    tmp = tmp_path_factory.mktemp("words")
    prompt = tmp / "p.yaml"
    prompt.write_text(PROMPT)
    out = tmp / "words.h5"
    assert main(["capture", str(prompt), "-o", str(out), "--no-progress", "--no-mp4"]) == 0
    return out


# ---------------------------------------------------------------------- 1. uncond of an absent word
def test_uncond_map_of_a_word_absent_from_the_negative_prompt_says_why(capsys, both, tmp_path):
    for args in (["--view", "diff"], ["--branch", "uncond"]):
        msg = fails(capsys, "render", both, "--token", "park", *args, "-o", tmp_path)
        assert "'park' is not in the video negative prompt ('a man')" in msg, msg
        assert "--branch cond" in msg
    assert list(tmp_path.iterdir()) == []  # nothing blank was written
    ok(capsys, "render", both, "--token", "man", "--view", "diff", "-o", tmp_path)  # a word that is there draws


def test_uncond_of_real_capture_names_the_negative_prompt(capsys, words, tmp_path):
    msg = fails(capsys, "render", words, "--token", "red", "--branch", "uncond", "-o", tmp_path)
    assert "not in the video negative prompt ('a blue blur')" in msg
    ok(capsys, "render", words, "--token", "blue", "--branch", "uncond", "-o", tmp_path)


# ---------------------------------------------------------------------- 2. overlays past 8 tokens
def test_overlay_of_more_tokens_than_colours_is_refused_with_the_limit(capsys, words, tmp_path):
    names = ["A", "red", "circle", "a#2", "blue", "square", "both", "move", "beep"]
    args = [x for n in names for x in ("--token", n)]
    msg = fails(capsys, "render", words, *args, "-o", tmp_path)
    assert "at most 8 tokens" in msg and "--layout side" in msg and "--view sheet" in msg
    out, _ = ok(capsys, "render", words, *args, "--layout", "side", "-o", tmp_path)
    assert written(out)


def _ink_at_right_edge(img: np.ndarray, columns: int = 5) -> bool:
    return bool((img[:, -columns:] > 60).any())


def test_long_caption_lines_wrap_instead_of_running_off_the_picture():
    line = "'moves left' + 'audio_caption' + 'square' + 'circle' cond frame 60 (latent 15) layers 0-29 (mean)"
    bar = draw.caption_bar([line], 384)
    assert not _ink_at_right_edge(bar)
    assert bar.shape[0] > draw.caption_bar(["short"], 384).shape[0]  # it took more rows
    assert not _ink_at_right_edge(draw.caption_bar(["x" * 120], 200))  # one over-long word breaks too


def test_mask_banner_wraps_a_long_title():
    from ovi_attn_render.views.masks import _banner

    title = "'a man in a red jacket rides a bicycle' cond frame 120 (latent 30) threshold 0.5 on the global map"
    assert not _ink_at_right_edge(_banner(384, [title, "step 49   area 12.5%"]))


def test_legend_of_eight_tokens_keeps_every_entry_inside_the_picture():
    names = ["moves left", "audio_caption", "square", "circle", "red", "blue", "stays still", "beeps"]
    img = draw.legend(names, draw.TOKEN_COLOURS, 384)
    assert img.shape[1] == 384 and not _ink_at_right_edge(img)
    for c in draw.TOKEN_COLOURS:  # every patch is drawn
        assert (img == np.asarray(c, np.uint8)).all(-1).sum() >= 16 * 16


# ---------------------------------------------------------------------- 3. -o with a suffix
def test_output_with_a_suffix_is_a_file_and_an_unknown_suffix_is_refused(capsys, run, tmp_path):
    msg = fails(capsys, "render", run, "--token", "man", "-o", tmp_path / "r" / "x.jpg")
    assert ".jpg" in msg and ".gif or .mp4" in msg
    assert not (tmp_path / "r").exists()
    out, _ = ok(capsys, "render", run, "--token", "man", "-o", tmp_path / "x.mp4")
    assert written(out) == [tmp_path / "x.mp4"] and (tmp_path / "x.mp4").is_file()


# ---------------------------------------------------------------------- 6. compare names the file
def test_compare_says_which_file_lacks_the_token(capsys, run, words, tmp_path):
    msg = fails(capsys, "compare", run, words, "--token", "park", "-o", tmp_path)
    assert "in words.h5: token 'park' was not captured" in msg, msg
    msg = fails(capsys, "compare", words, run, "--token", "circle", "-o", tmp_path)
    assert "in run.h5: token 'circle' was not captured" in msg, msg


# ---------------------------------------------------------------------- 7. ignored options
@pytest.mark.parametrize("args, flag", [
    (["--view", "sync", "--token", "man"], "--token"),
    (["--token", "man", "--threshold", "0.5"], "--threshold"),
    (["--token", "man", "--view", "grid", "--background", "spectrogram"], "--background"),
    (["--token", "man", "--view", "layers", "--alpha", "0.9"], "--alpha"),
    (["--token", "man", "--view", "frames", "--frame", "3"], "--frame"),
], ids=["token-sync", "threshold-steps", "background-grid", "alpha-layers", "frame-frames"])
def test_options_a_view_does_not_use_are_refused(capsys, run, tmp_path, args, flag):
    msg = fails(capsys, "render", run, *args, "-o", tmp_path)
    assert f"{flag} does not apply to --view" in msg and "drop it" in msg
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- 8. output names
def test_options_that_change_the_picture_change_the_name(capsys, run, tmp_path):
    a = written(ok(capsys, "render", run, "--token", "man", "--view", "mask", "--threshold", "0.3", "-o", tmp_path)[0])
    b = written(ok(capsys, "render", run, "--token", "man", "--view", "mask", "--threshold", "0.6", "-o", tmp_path)[0])
    assert a[0] != b[0] and "thr0.3" in a[0].name
    c = written(ok(capsys, "render", run, "--token", "man", "--view", "audio", "-o", tmp_path)[0])
    d = written(ok(capsys, "render", run, "--token", "man", "--view", "audio", "--background", "spectrogram",
                   "-o", tmp_path)[0])
    assert c[0] != d[0]


def test_the_same_picture_gets_the_same_name(capsys, run, tmp_path):
    first = written(ok(capsys, "render", run, "--token", "man", "--steps", "1-2", "-o", tmp_path)[0])[0]
    for same in (["--token", "Man", "--steps", "1-2"], ["--token", "man", "--steps", "1:3"],
                 ["--token", "man", "--steps", "1,2", "--frame", "4"]):  # frame 4 is the default (middle)
        msg = fails(capsys, "render", run, *same, "-o", tmp_path)
        assert f"{first.name} already exists" in msg, (same, msg)


def test_punctuation_tokens_get_names_of_their_own(capsys, words, tmp_path):
    with open_capture(words) as cap:
        marks = [g for g in cap.groups if not any(ch.isalnum() for ch in g)]
    assert {",", ";", "."} <= set(marks)
    names = set()
    for mark in marks:
        names.add(written(ok(capsys, "render", words, "--token", mark, "-o", tmp_path)[0])[0].name)
    assert len(names) == len(marks)


# ---------------------------------------------------------------------- 9. one grammar, one unit
def test_frame_minus_one_is_the_last_frame_like_steps_minus_one(capsys, run, tmp_path):
    last = written(ok(capsys, "render", run, "--token", "man", "--frame", "-1", "--steps", "-1", "-o", tmp_path)[0])
    assert last[0].name == "run_steps_man_f8_s3.gif"  # 9 frames, 4 steps: the last of each


def test_bad_numbers_get_our_sentence(capsys, run, tmp_path):
    msg = fails(capsys, "render", run, "--token", "man", "--frame", "abc", "-o", tmp_path)
    assert msg == "error: --frame 'abc' is not a whole number; give one like --frame 60."


def test_info_prints_decimal_megabytes(capsys, tmp_path):
    path = tmp_path / "big.h5"
    write_synthetic(path, Synth(grid=(3, 40, 40), steps=6, layers=tuple(range(6))))
    size = path.stat().st_size
    assert size > 1_100_000  # big enough that 1000 and 1024 disagree in the first decimal
    out, _ = ok(capsys, "info", path, "--no-tokens")
    assert f"({size / 1e6:.1f} MB)" in " ".join(out.split())


# ---------------------------------------------------------------------- 11. layers view colours
def test_layers_view_has_one_flat_colour_per_layer(capsys, run, tmp_path):
    out, _ = ok(capsys, "render", run, "--token", "man", "--view", "layers", "-o", tmp_path)
    img = iio.imread(written(out)[0])[..., :3]
    H, W = img.shape[:2]
    column = img[int(0.14 * H):int(0.88 * H), int(0.926 * W)]  # down the middle of the colour bar
    colours = {tuple(int(v) for v in px) for px in column}
    assert len(colours) <= 3 + 3, len(colours)  # three layers (+ the edges between swatches)


# ---------------------------------------------------------------------- 12. progress without a TTY
def test_long_render_prints_progress_lines_when_not_on_a_terminal(capsys, run, tmp_path, monkeypatch):
    monkeypatch.setenv("OVI_ATTN_PROGRESS_SECONDS", "0")
    _, err = ok(capsys, "render", run, "--token", "man", "--view", "frames", "-o", tmp_path)
    lines = [x for x in err.splitlines() if x.startswith("drawing: ")]
    assert lines[0].startswith("drawing: 1/9 frames") and lines[-1].startswith("drawing: 9/9 frames")


def test_progress_draws_a_bar_on_a_terminal():
    import io

    from rich.console import Console

    from ovi_attn_render.common.progress import Progress

    out = io.StringIO()
    with Progress("denoising", 3, "steps", console=Console(file=out, force_terminal=True, width=80)) as p:
        for i in range(3):
            p.update(i + 1)
    assert "━" in out.getvalue() and "denoising: " not in out.getvalue()


# ---------------------------------------------------------------------- 13. masks as data
def test_masks_export_as_npz_and_png_and_as_a_dataarray(capsys, run, tmp_path):
    target = tmp_path / "man_masks.npz"
    ok(capsys, "render", run, "--token", "man", "--view", "mask", "--threshold", "0.5", "-o", target)
    data = np.load(target)  # no pickle needed
    masks = data["masks"]
    assert masks.dtype == bool and masks.shape == (9, 8, 8)
    assert str(data["threshold"]) == "0.5" and str(data["token"]) == "man"
    hot = np.zeros((8, 8), bool)
    hot[2, 5] = True
    for n in range(9):  # 'man' is hot on cell (2, 5) of latent frame 1 = pixel frames 1-4
        assert (masks[n] == (hot if 1 <= n <= 4 else np.zeros_like(hot))).all(), n
    png = cv2.imread(str(tmp_path / "man_masks" / "frame_0002.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (256, 256) and png[2 * 32 + 5, 5 * 32 + 5] == 255 and png.sum() == 255 * 32 * 32
    assert len(list((tmp_path / "man_masks").glob("frame_*.png"))) == 9
    import ovi_attn_render as oa

    ok(capsys, "render", run, "--token", "man", "--view", "mask", "--frames", "0:3", "-o", target, "--force")
    assert sorted(p.name for p in (tmp_path / "man_masks").iterdir()) == [f"frame_000{n}.png" for n in range(3)]
    msg = fails(capsys, "render", run, "--token", "man", "--view", "mask", "--frame", "3", "-o", tmp_path / "x.npz")
    assert "--frame does not apply to the mask export" in msg
    with oa.open_capture(run) as cap:
        da = cap.mask("man", threshold=0.5)
        assert da.dims == ("pixel_frame", "y", "x") and da.dtype == bool
        assert da.attrs["threshold"] == "0.5" and (da.values == masks).all()
        otsu = cap.mask("man")  # Otsu per latent frame; the value used is recorded per frame
        assert otsu.attrs["threshold"] == "otsu" and otsu["threshold"].shape == (9,)


# ---------------------------------------------------------------------- 14. contact sheet
def test_contact_sheet_draws_every_group_on_one_scale(capsys, run, tmp_path):
    msg = fails(capsys, "render", run, "--token", "all", "-o", tmp_path)
    assert "--view sheet" in msg
    out, _ = ok(capsys, "render", run, "--token", "all", "--view", "sheet", "--frame", "4", "-o", tmp_path)
    assert "3 groups" in out  # man, park, man#2 (not <eos>, <pad>)
    img = iio.imread(written(out)[0])[..., :3].astype(int)
    top = (0.5 * GREY + 0.5 * draw.colormap_lut("inferno")[255]).astype(int)  # --alpha 0.5 over the grey clip
    brightest = (np.abs(img - top).sum(-1) < 40).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(brightest)
    cells = [s for s in stats[1:] if s[cv2.CC_STAT_AREA] >= 900]
    # frame 4 = latent 1: 'man' and 'park' are equally hot there, so on one shared scale both
    # panels reach the top colour; 'man#2' (hot in latent 2) stays dark
    assert len(cells) == 2, [s[cv2.CC_STAT_AREA] for s in stats[1:]]


def test_contact_sheet_of_a_real_capture_dims_words_missing_from_the_negative_prompt(capsys, words, tmp_path):
    out, err = ok(capsys, "render", words, "--view", "sheet", "--branch", "uncond", "-o", tmp_path)
    assert written(out) and "not in the negative prompt" in " ".join(err.split())
