"""The mask view: Otsu's threshold against a brute-force search, mask areas, and the
overlay's pixels (the right token cell lights the right pixel block)."""

import imageio.v3 as iio
import numpy as np
import pytest

from ovi_attn_render.views import masks as mk
from ovi_attn_render.common.errors import UserError

GREY = 100
CYAN = (0, 255, 255)


def between_class_variance(values: np.ndarray, upper: np.ndarray) -> float:
    """w0 w1 (mu0 - mu1)^2 of the split of `values` into ~upper and upper."""
    n0, n1 = (~upper).sum(), upper.sum()
    if n0 == 0 or n1 == 0:
        return 0.0
    return n0 / values.size * n1 / values.size * (values[~upper].mean() - values[upper].mean()) ** 2


def brute_force_otsu_variance(values: np.ndarray) -> float:
    """The largest between-class variance over every split between sorted values."""
    v = np.sort(values)
    n = v.size
    prefix = np.cumsum(v)
    k = np.arange(1, n)  # class 0 = the k smallest values
    mu0 = prefix[k - 1] / k
    mu1 = (prefix[-1] - prefix[k - 1]) / (n - k)
    return float(np.max(k / n * (n - k) / n * (mu0 - mu1) ** 2))


# ---- Otsu --------------------------------------------------------------------------------

def test_otsu_on_a_bimodal_sample_splits_the_modes_like_brute_force():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 700), rng.normal(0.6, 0.05, 300)])
    t = mk.otsu_threshold(values)
    assert 0.2 < t < 0.45
    upper = values > t
    assert upper.sum() == 300 and upper[700:].all()
    assert between_class_variance(values, upper) >= 0.999 * brute_force_otsu_variance(values)


def test_otsu_matches_brute_force_on_a_skewed_attention_like_map():
    rng = np.random.default_rng(1)
    values = rng.exponential(0.01, 22 * 22)  # most cells tiny, a long tail: like one word's map
    values[:30] += rng.uniform(0.05, 0.2, 30)
    t = mk.otsu_threshold(values)
    assert between_class_variance(values, values > t) >= 0.99 * brute_force_otsu_variance(values)
    # the threshold sits strictly between the two classes, so > and >= agree
    assert np.array_equal(values > t, values >= t)


def test_otsu_edge_cases():
    assert mk.otsu_threshold(np.full(10, 0.25)) == 0.25
    assert mk.otsu_threshold(np.array([0.0, 1.0])) == 0.5
    assert mk.otsu_threshold(np.array([np.nan, 0.0, 1.0, np.inf])) == 0.5  # non-finite ignored
    with pytest.raises(UserError, match="no finite values"):
        mk.otsu_threshold(np.full((3, 3), np.nan))


# ---- binarise and areas ------------------------------------------------------------------

def test_binarise_with_threshold_otsu_and_nan():
    m = np.array([[0.0, 0.1, np.nan], [0.9, 1.0, 0.05]])
    np.testing.assert_array_equal(mk.binarise(m, 0.08), [[False, True, False], [True, True, False]])
    np.testing.assert_array_equal(mk.binarise(m, None), [[False, False, False], [True, True, False]])


def test_mask_area_over_steps_counts_cells():
    maps = np.zeros((4, 4, 5))  # 20 cells per step
    for s in range(3):
        maps[s].flat[: s + 1] = 1.0  # step s: s + 1 hot cells
    maps[3] = np.nan  # a step never computed
    np.testing.assert_allclose(mk.mask_area_over_steps(maps, 0.5), [1 / 20, 2 / 20, 3 / 20, np.nan])
    np.testing.assert_allclose(mk.mask_area_over_steps(maps, None), [1 / 20, 2 / 20, 3 / 20, np.nan])
    masks, thresholds = mk.binarise_steps(maps, None)
    assert masks[3].sum() == 0 and np.isnan(thresholds[3])


def test_shared_otsu_uses_one_threshold_for_all_steps():
    maps = np.zeros((2, 2, 2))
    maps[0] = [[0.0, 1.0], [0.0, 0.0]]
    maps[1] = [[0.0, 0.3], [0.0, 0.0]]  # Otsu of this step alone keeps its 0.3 cell
    np.testing.assert_allclose(mk.mask_area_over_steps(maps, None), [0.25, 0.25])
    _, thresholds = mk.binarise_steps(maps, None, shared_otsu=True)
    assert thresholds[0] == thresholds[1]
    np.testing.assert_allclose(mk.mask_area_over_steps(maps, None, shared_otsu=True), [0.25, 0.0])


# ---- overlay pixels ----------------------------------------------------------------------

def grey_frame(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def one_cell_mask(h: int, w: int, y: int, x: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y, x] = True
    return mask


def test_upsample_puts_token_y_x_on_rows_y_and_columns_x():
    big = mk.upsample_mask(one_cell_mask(5, 6, 1, 4), 80, 96)  # cells of 16 x 16 px
    expected = np.zeros((80, 96), dtype=bool)
    expected[16:32, 64:80] = True
    np.testing.assert_array_equal(big, expected)
    # sides that are not multiples of the grid: the last cell absorbs the remainder
    big = mk.upsample_mask(one_cell_mask(4, 6, 3, 5), 70, 100)  # cells of 17 x 16 px
    assert big.shape == (70, 100)
    assert big[51:, 80:].all() and big.sum() == (70 - 51) * (100 - 80)


def test_overlay_tints_exactly_the_cell_and_outlines_it():
    frame = grey_frame(80, 96)
    out = mk.overlay_mask(frame, one_cell_mask(5, 6, 1, 4), CYAN)
    fill = np.rint((1 - mk.FILL_ALPHA) * GREY + mk.FILL_ALPHA * np.array(CYAN)).astype(np.uint8)
    margin = mk.OUTLINE_THICKNESS + 1
    # inside the block, away from the outline: the translucent fill
    assert np.all(out[16 + margin:32 - margin, 64 + margin:80 - margin] == fill)
    # on the block's border: the outline in full colour
    assert np.all(out[16, 64:80] == CYAN) and np.all(out[16:32, 64] == CYAN)
    # everything farther than the outline from the block is untouched
    outside = np.ones((80, 96), dtype=bool)
    outside[16 - margin:32 + margin, 64 - margin:80 + margin] = False
    assert np.all(out[outside] == GREY)
    # rows vs columns: the transposed cell (y=4, x=1) -> rows 64..80, columns 16..32 stays grey
    assert np.all(out[64:80, 16:32] == GREY)


def test_empty_mask_leaves_the_frame_alone():
    frame = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(mk.overlay_mask(frame, np.zeros((2, 3), bool)), frame)


# ---- render_mask -------------------------------------------------------------------------

def test_render_mask_gif_shows_each_step_mask_and_writes_the_area_plot(tmp_path):
    frame = grey_frame(80, 96)
    masks = np.stack([one_cell_mask(5, 6, 1, 4), one_cell_mask(5, 6, 3, 0)])
    paths = mk.render_mask(frame, masks, step_labels=["0", "49"], areas=[1 / 30, 1 / 30], title="man",
                           caption="threshold 0.05", out_path=tmp_path / "mask.gif")
    gif, plot = paths
    assert gif == tmp_path / "mask.gif" and plot == tmp_path / "mask_area.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frames = iio.imread(gif, index=None)[..., :3].astype(int)  # [S, banner + H, W, 3]
    assert frames.shape[0] == 2 and frames.shape[2] == 96
    banner = frames.shape[1] - 80
    fill = (1 - mk.FILL_ALPHA) * GREY + mk.FILL_ALPHA * np.array(CYAN)
    for step, (y, x) in enumerate([(1, 4), (3, 0)]):
        image = frames[step, banner:]
        block = image[16 * y + 4:16 * y + 12, 16 * x + 4:16 * x + 12]
        assert np.abs(block - fill).max() <= 8  # GIF palettes may round a little
        other = (3, 0) if step == 0 else (1, 4)
        assert np.abs(image[16 * other[0] + 8, 16 * other[1] + 8] - GREY).max() <= 8


def test_render_mask_png_is_one_figure(tmp_path):
    masks = np.zeros((12, 4, 4), dtype=bool)
    masks[:, 1, 1] = True
    (path,) = mk.render_mask(grey_frame(64, 64), masks, step_labels=[str(s) for s in range(12)],
                             areas=np.full(12, 1 / 16), title="t", out_path=tmp_path / "mask.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_mask_rejects_other_suffixes(tmp_path):
    with pytest.raises(UserError, match=r"\.gif"):
        mk.render_mask(grey_frame(8, 8), np.zeros((1, 2, 2), bool), step_labels=["0"], areas=[0.0],
                       out_path=tmp_path / "mask.mp4")
