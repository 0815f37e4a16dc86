"""What the rendered pictures show, decoded back from the files render wrote.

Synthetic captures (tests/conftest_render.py) have a grey video and maps hot on one
known token cell of one latent frame, so the tests can name the pixels that must light.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from synthetic import GREY, Synth, cell_box, hot_value, write_synthetic

from ovi_attn_render.views import draw
from ovi_attn_render.cli import main
from ovi_attn_render.views.video import spatial_stats

ALPHA = 0.5
SIZE = (256, 256)


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "both.h5"
    write_synthetic(path, Synth(branches=("cond", "uncond")))
    return path


def render(*args) -> None:
    assert main([str(a) for a in args]) == 0


def gif_frames(path) -> np.ndarray:
    """[N, H, W, 3] uint8."""
    return np.asarray(iio.imread(path, index=None))[..., :3]


def picture(frame: np.ndarray) -> np.ndarray:
    """The drawn video frame inside an animation frame: below the caption, left-aligned."""
    top = frame.shape[0] - SIZE[0]
    return frame[top:, : SIZE[1]].astype(np.int32)


def expected_overlay(v: float, cmap: str = draw.DEFAULT_CMAP) -> np.ndarray:
    lut = draw.colormap_lut(cmap)
    return draw.overlay(np.full((1, 1, 3), GREY, np.uint8), np.full((1, 1), v, np.float32), lut, ALPHA)[0, 0]


def region_colour(img: np.ndarray, y: int, x: int) -> np.ndarray:
    ys, xs = cell_box(y, x)
    return np.median(img[ys, xs].reshape(-1, 3), axis=0)


def lit_cells(img: np.ndarray, tol: float = 12) -> set[tuple[int, int]]:
    """Token cells whose colour is far from the picture's coldest colour."""
    cold = expected_overlay(0.0)
    return {(y, x) for y in range(8) for x in range(8)
            if np.abs(region_colour(img, y, x) - cold).max() > tol}


# ---------------------------------------------------------------------- steps view
def test_steps_gif_lights_exactly_the_hot_cell_of_the_right_frame(run, tmp_path):
    out = tmp_path / "a.gif"
    render("render", run, "--token", "man", "--frame", 4, "-o", out)  # pixel 4 -> latent 1
    frames = gif_frames(out)
    assert len(frames) == 4  # one per step
    img = picture(frames[-1])
    assert lit_cells(img) == {(2, 5)}  # (row 2, column 5): not (5, 2)
    ys, xs = cell_box(2, 5)
    block = img[ys, xs]
    assert np.abs(block - expected_overlay(1.0)).max() <= 8  # the whole 32x32 block, edge to edge
    # the cell's neighbours just outside the block are cold
    assert np.abs(img[ys.stop, xs] - expected_overlay(0.0)).max() <= 8
    assert np.abs(img[ys, xs.start - 1] - expected_overlay(0.0)).max() <= 8


def test_steps_gif_other_latent_frame_is_dark(run, tmp_path):
    out = tmp_path / "b.gif"
    render("render", run, "--token", "man", "--frame", 5, "-o", out)  # pixel 5 -> latent 2
    assert lit_cells(picture(gif_frames(out)[-1])) == set()


def test_global_norm_brightness_grows_with_the_map(run, tmp_path):
    out = tmp_path / "g.gif"
    render("render", run, "--token", "man", "--frame", 1, "-o", out)
    frames = gif_frames(out)
    first, last = (region_colour(picture(f), 2, 5) for f in (frames[0], frames[-1]))
    lo, hi = 0.01, hot_value(3)
    v0 = (hot_value(0) - lo) / (hi - lo)  # step 0 on the shared scale
    assert np.abs(first - expected_overlay(v0)).max() <= 10
    assert np.abs(last - expected_overlay(1.0)).max() <= 8


def test_step_norm_makes_every_step_full_scale(run, tmp_path):
    out = tmp_path / "s.gif"
    render("render", run, "--token", "man", "--frame", 1, "--norm", "step", "-o", out)
    for f in gif_frames(out):
        assert np.abs(region_colour(picture(f), 2, 5) - expected_overlay(1.0)).max() <= 8


def test_absolute_norm_shows_probability(run, tmp_path):
    out = tmp_path / "abs.gif"
    render("render", run, "--token", "man", "--frame", 1, "--norm", "absolute", "-o", out)
    img = picture(gif_frames(out)[-1])
    assert np.abs(region_colour(img, 2, 5) - expected_overlay(hot_value(3))).max() <= 10
    assert np.abs(region_colour(img, 0, 0) - expected_overlay(0.01)).max() <= 10


def test_renorm_divides_by_real_token_mass(run, tmp_path):
    # <eos> 0.2 and <pad> 0.3 leave 0.5 for real tokens: renorm doubles the map
    out = tmp_path / "rn.gif"
    render("render", run, "--token", "man", "--frame", 1, "--norm", "absolute", "--renorm", "-o", out)
    img = picture(gif_frames(out)[-1])
    assert np.abs(region_colour(img, 2, 5) - expected_overlay(2 * hot_value(3))).max() <= 10


def test_multi_token_overlay_uses_legend_colours(run, tmp_path):
    out = tmp_path / "m.gif"
    render("render", run, "--token", "man", "--token", "park", "--frame", 3, "-o", out)
    frame = gif_frames(out)[-1].astype(np.int32)
    legend = frame[-26:]
    img = frame[-26 - SIZE[0]:-26, : SIZE[1]]
    for colour, cell in zip(draw.TOKEN_COLOURS[:2], [(2, 5), (6, 1)]):
        # a legend patch holds exactly this colour
        assert (np.abs(legend - np.array(colour)).max(-1) <= 6).sum() >= 16 * 16
        # the token's cell is the frame blended toward the same colour
        got = region_colour(img, *cell) - GREY
        want = np.array(colour, float) - GREY
        cos = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
        assert cos > 0.98
        assert np.abs(region_colour(img, *cell) - (GREY * (1 - ALPHA) + ALPHA * np.array(colour))).max() <= 8
    assert np.abs(region_colour(img, 0, 0) - GREY).max() <= 4  # no token: the frame itself


def test_side_layout_draws_one_panel_per_token(run, tmp_path):
    out = tmp_path / "side.gif"
    render("render", run, "--token", "man", "--token", "park", "--frame", 2, "--layout", "side", "-o", out)
    frame = gif_frames(out)[-1]
    assert frame.shape[1] > 2 * SIZE[1]


# ---------------------------------------------------------------------- frames view
def test_frames_view_maps_pixel_frames_to_latent_frames(run, tmp_path):
    out = tmp_path / "fr.gif"
    render("render", run, "--view", "frames", "--token", "man", "--token", "man#2", "-o", out)
    frames = gif_frames(out)
    assert len(frames) == 9  # pixel frames 0..8
    for n, f in enumerate(frames):
        img = f[f.shape[0] - 26 - SIZE[0]: f.shape[0] - 26, : SIZE[1]].astype(np.int32)
        lit = {c for c in [(2, 5), (0, 0)] if np.abs(region_colour(img, *c) - GREY).max() > 20}
        latent = 0 if n == 0 else (n + 3) // 4
        assert lit == {1: {(2, 5)}, 2: {(0, 0)}, 0: set()}[latent], f"pixel frame {n}"


def test_frames_view_mp4_has_video_and_audio(run, tmp_path):
    import av

    out = tmp_path / "fr.mp4"
    render("render", run, "--view", "frames", "--token", "man", "-o", out)
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        frames = [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]
    assert len(frames) == 9
    img = frames[2][frames[2].shape[0] - SIZE[0]:, : SIZE[1]].astype(np.int32)
    assert np.abs(region_colour(img, 2, 5) - expected_overlay(1.0)).max() <= 20  # lossy codec


# ---------------------------------------------------------------------- other views
def test_grid_has_one_lit_cell_per_layer_and_step(run, tmp_path):
    import cv2

    out = tmp_path / "grid.png"
    render("render", run, "--view", "grid", "--token", "man", "--frame", 4, "--norm", "frame", "-o", out)
    img = iio.imread(out)[..., :3].astype(np.int32)
    hot = (np.abs(img - expected_overlay(1.0)).max(-1) <= 3).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(hot)
    blobs = [s for s in stats[1:] if s[4] >= 16]
    assert len(blobs) == 4 * 3  # steps x layers, each lit in the same place of its cell


def test_grid_global_norm_orders_steps(run, tmp_path):
    out = tmp_path / "grid_g.png"
    render("render", run, "--view", "grid", "--token", "man", "--frame", 4, "--layers", "1", "-o", out)
    img = iio.imread(out)[..., :3].astype(np.int32)
    top = (np.abs(img - expected_overlay(1.0)).max(-1) <= 3)
    assert 16 <= top.sum() <= 40 * 40  # only the last step's cell reaches the top of the scale


def test_spatial_stats_of_a_delta_map():
    m = np.zeros((1, 8, 8), np.float32)
    m[0, 2, 5] = 1.0
    st = spatial_stats(m)
    assert st["centroid_y"] == pytest.approx(2) and st["centroid_x"] == pytest.approx(5)
    assert st["spread"] == pytest.approx(0, abs=1e-6) and st["entropy"] == pytest.approx(0, abs=1e-6)
    u = spatial_stats(np.ones((1, 8, 8), np.float32))
    assert u["entropy"] == pytest.approx(1.0) and u["centroid_x"] == pytest.approx(3.5)


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_layers_view_writes_plot(run, tmp_path, fmt):
    out = tmp_path / f"layers.{fmt}"
    render("render", run, "--view", "layers", "--token", "man", "--frame", 4, "-o", out)
    if fmt == "png":
        assert iio.imread(out).shape[0] > 300
    else:
        assert out.read_text().lstrip().startswith("<?xml")


def test_mask_view_marks_the_hot_cell(run, tmp_path):
    out = tmp_path / "mask.gif"
    render("render", run, "--view", "mask", "--token", "man", "--frame", 4, "--threshold", "0.5", "-o", out)
    assert (tmp_path / "mask_area.png").exists()
    img = gif_frames(out)[-1].astype(np.int32)
    img = img[img.shape[0] - SIZE[0]:, : SIZE[1]]
    inside, outside = region_colour(img, 2, 5), region_colour(img, 6, 1)
    assert np.abs(outside - GREY).max() <= 4
    assert inside[2] > GREY + 20 and inside[0] < GREY - 20  # tinted toward cyan


def test_diff_view_is_positive_on_the_cell(both, tmp_path):
    out = tmp_path / "diff.gif"
    render("render", both, "--view", "diff", "--token", "man", "--frame", 4, "-o", out)
    img = picture(gif_frames(out)[-1])
    lut = draw.colormap_lut(draw.DIVERGING_CMAP)
    zero = GREY * (1 - ALPHA) + ALPHA * lut[128].astype(float)
    top = GREY * (1 - ALPHA) + ALPHA * lut[255].astype(float)
    assert np.abs(region_colour(img, 0, 0) - zero).max() <= 8  # no difference: the middle colour
    assert np.abs(region_colour(img, 2, 5) - top).max() <= 8  # cond hotter: the red end


def test_audio_and_sync_views(run, tmp_path):
    render("render", run, "--view", "audio", "--token", "man", "-o", tmp_path / "a.png")
    render("render", run, "--view", "audio", "--token", "man", "--by", "layer", "--background", "spectrogram",
           "-o", tmp_path / "a2.svg")
    render("render", run, "--view", "sync", "-o", tmp_path / "s.png")
    assert iio.imread(tmp_path / "a.png").ndim == 3 and iio.imread(tmp_path / "s.png").ndim == 3


def test_compare_puts_runs_side_by_side(run, both, tmp_path):
    single = tmp_path / "one.gif"
    render("render", run, "--token", "man", "--frame", 4, "-o", single)
    out = tmp_path / "cmp.gif"
    render("compare", run, both, "--token", "man", "--frame", 4, "-o", out)
    a, c = gif_frames(single), gif_frames(out)
    assert len(c) == len(a) and c.shape[2] >= 2 * a.shape[2]


def test_default_output_name_and_no_overwrite(run, tmp_path, capsys):
    import shutil

    local = tmp_path / "myrun.h5"
    shutil.copy(run, local)
    render("render", local, "--token", "man", "--frame", 4, "--steps", "0:4:2")
    out = tmp_path / "myrun_steps_man_f4_s0,2.gif"  # named by the steps it picks
    assert out.exists() and len(gif_frames(out)) == 2
    assert str(out) in capsys.readouterr().out.replace("\n", "")
    assert main(["render", str(local), "--token", "man", "--frame", "4", "--steps", "0:4:2"]) == 2
    assert "--force" in capsys.readouterr().err
    render("render", local, "--token", "man", "--frame", 4, "--steps", "0:4:2", "--force")
