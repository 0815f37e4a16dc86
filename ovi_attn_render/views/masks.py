"""`--view mask`: an attention map binarised at a threshold (or Otsu's) drawn as a mask
over the decoded frame, step by step, with a plot of the mask's area over steps.

Maps live on the video token grid [h, w]; each token cell covers (H//h, W//w) pixels
of the decoded frame (32 x 32 for Ovi, whose frame sides are multiples of 32).
Never imports torch; matplotlib is imported inside the plotting functions (Agg, no pyplot).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovi_attn_render.views.audio import agg_figure
from ovi_attn_render.common.errors import UserError

HISTOGRAM_BINS = 256
FILL_ALPHA = 0.4  # how strongly the mask colour covers the frame inside the mask
OUTLINE_THICKNESS = 2  # px
ANIMATION_SUFFIXES = (".gif",)
FIGURE_SUFFIXES = (".png", ".svg")


# ---------------------------------------------------------------------------------------
# Thresholds


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of the finite values: the split of a 256-bin histogram that
    maximises the between-class variance w0 w1 (mu0 - mu1)^2.

    Returned as the midpoint between the largest value below the split and the smallest
    above it, so `values > threshold` is exactly the upper class whatever the dtype.
    A constant input returns that constant (nothing lies above it).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise UserError("the attention map has no finite values to threshold (it was not computed for "
                        "this branch, step or layer); choose another one.")
    lo, hi = v.min(), v.max()
    if lo == hi:
        return float(lo)
    counts, edges = np.histogram(v, bins=HISTOGRAM_BINS, range=(lo, hi))  # [B], [B+1]
    centres = 0.5 * (edges[:-1] + edges[1:])
    # Class 0 = bins 0..k, class 1 = bins k+1..B-1, for every split k at once.
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # [B-1]
    w1 = v.size - w0
    sum0 = np.cumsum(counts * centres)[:-1]
    mu0 = sum0 / np.maximum(w0, 1)
    mu1 = ((counts * centres).sum() - sum0) / np.maximum(w1, 1)
    between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    split = edges[int(np.argmax(between)) + 1]
    # np.histogram puts a value equal to an inner edge in the upper bin.
    below, above = v[v < split], v[v >= split]
    return float(0.5 * (below.max() + above.min()))


def binarise(map2d: np.ndarray, threshold: float | None) -> np.ndarray:
    """[h, w] bool mask: value > threshold (Otsu's threshold of this map when None).
    NaN cells (never computed) are outside the mask."""
    m = np.asarray(map2d, dtype=np.float64)
    t = otsu_threshold(m) if threshold is None else float(threshold)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(m, nan=-np.inf) > t


def binarise_steps(maps: np.ndarray, threshold: float | None, *, shared_otsu: bool = False):
    """Masks for a stack of maps [S, h, w] -> (masks [S, h, w] bool, thresholds [S]).

    threshold None: Otsu per map (each step its own split, default), or one Otsu
    threshold over all steps with shared_otsu (areas then compare on one scale).
    A map with no finite values gets an empty mask and threshold NaN.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if threshold is None and shared_otsu:
        threshold = otsu_threshold(maps)
    masks = np.zeros(maps.shape, dtype=bool)
    thresholds = np.full(maps.shape[0], np.nan)
    for s, m in enumerate(maps):
        if not np.isfinite(m).any():
            continue
        thresholds[s] = otsu_threshold(m) if threshold is None else float(threshold)
        masks[s] = binarise(m, thresholds[s])
    return masks, thresholds


def mask_area_over_steps(maps: np.ndarray, threshold: float | None, *, shared_otsu: bool = False) -> np.ndarray:
    """[S] fraction of the frame inside the mask at each step (NaN for a map never computed)."""
    masks, thresholds = binarise_steps(maps, threshold, shared_otsu=shared_otsu)
    area = masks.reshape(masks.shape[0], -1).mean(axis=1)
    return np.where(np.isfinite(thresholds), area, np.nan)


# ---------------------------------------------------------------------------------------
# Drawing


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] token-grid mask -> [height, width] pixels, nearest: token (y, x) covers rows
    y*ch .. (y+1)*ch and columns x*cw .. (x+1)*cw with (ch, cw) = (height//h, width//w).
    Pixels past h*ch or w*cw (sides not multiples of the grid) repeat the last cell."""
    h, w = mask.shape
    ch, cw = height // h, width // w
    if ch == 0 or cw == 0:
        raise ValueError(f"a {height}x{width} frame is smaller than the {h}x{w} token grid")
    big = np.repeat(np.repeat(mask, ch, axis=0), cw, axis=1)  # [h*ch, w*cw]
    return np.pad(big, ((0, height - h * ch), (0, width - w * cw)), mode="edge")


def overlay_mask(frame_rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 255),
                 alpha: float = FILL_ALPHA) -> np.ndarray:
    """[H, W, 3] uint8 frame with the [h, w] mask drawn on it: a translucent fill of
    `colour` (RGB) inside, and the mask's outline in full colour."""
    import cv2

    frame = np.asarray(frame_rgb, dtype=np.uint8)
    height, width = frame.shape[:2]
    inside = upsample_mask(np.asarray(mask, dtype=bool), height, width)  # [H, W]
    out = frame.astype(np.float32)
    out[inside] = (1 - alpha) * out[inside] + alpha * np.asarray(colour, dtype=np.float32)
    out = np.ascontiguousarray(np.rint(out).astype(np.uint8))
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), OUTLINE_THICKNESS)
    return out


def _banner(width: int, lines: list[str]) -> np.ndarray:
    """A black strip with white text lines, to sit above an animation frame."""
    import cv2

    from ovi_attn_render.views.draw import wrap_text

    scale = float(np.clip(width / 1400, 0.35, 0.8))
    line_height = int(round(28 * scale / 0.5))
    lines = [piece for text in lines for piece in wrap_text(text, width - 12, scale)]  # never cut off
    strip = np.zeros((line_height * len(lines) + 6, width, 3), dtype=np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(strip, text, (6, line_height * (i + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def _area_plot(ax, step_labels: list[str], areas: np.ndarray, caption: str) -> None:
    x = np.arange(len(step_labels))
    ax.plot(x, 100 * np.asarray(areas, dtype=np.float64), marker="o", markersize=3, color="tab:cyan")
    every = max(1, int(np.ceil(len(x) / 20)))
    ax.set_xticks(x[::every], [step_labels[i] for i in x[::every]])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("step")
    ax.set_ylabel("mask area (% of frame)")
    ax.grid(alpha=0.3)
    if caption:
        ax.set_title(caption, fontsize=9)


def _check_inputs(frame_rgb, masks, step_labels, areas) -> None:
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"frame_rgb must be uint8 [H, W, 3], got {frame_rgb.dtype} {frame_rgb.shape}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be [S, h, w], got {masks.shape}")
    if not len(step_labels) == len(areas) == masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks, {len(step_labels)} labels, {len(areas)} areas")


def render_mask(
    frame_rgb: np.ndarray,
    masks: np.ndarray,
    *,
    step_labels: list[str],
    areas: np.ndarray,
    title: str = "",
    caption: str = "",
    colour=(0, 255, 255),
    out_path: str | Path,
    seconds_per_step: float = 0.5,
    max_panels: int = 8,
    dpi: int = 120,
) -> tuple[Path, ...]:
    """Write the mask view and return the paths written, the main one first.

    frame_rgb: [H, W, 3] uint8 decoded frame; masks: [S, h, w] bool, one per step;
    areas: [S] mask area fractions (NaN allowed); caption: e.g. "threshold 0.05" or
    "Otsu per step", shown with the area plot.
    - out_path *.gif: an animation, one frame per step (banner with title, step and area
      above the overlaid frame), and beside it `<stem>_area.png`, the area over steps.
    - out_path *.png / *.svg: one figure, overlays of up to `max_panels` evenly spaced
      steps in a row above the area plot.
    """
    out_path = Path(out_path)
    frame_rgb = np.asarray(frame_rgb)
    masks = np.asarray(masks, dtype=bool)
    areas = np.asarray(areas, dtype=np.float64)
    _check_inputs(frame_rgb, masks, step_labels, areas)
    suffix = out_path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES + FIGURE_SUFFIXES:
        raise UserError(f"--view mask cannot write '{out_path.suffix or out_path.name}' files; give an "
                        f"output path ending in .gif (animation) or .png / .svg (figure).")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in ANIMATION_SUFFIXES:
        return _write_animation(frame_rgb, masks, step_labels, areas, title, caption, colour, out_path,
                                seconds_per_step, dpi)
    return (_write_figure(frame_rgb, masks, step_labels, areas, title, caption, colour, out_path,
                          max_panels, dpi),)


def _write_animation(frame_rgb, masks, step_labels, areas, title, caption, colour, out_path,
                     seconds_per_step, dpi) -> tuple[Path, Path]:
    import imageio.v3 as iio

    width = frame_rgb.shape[1]
    frames = []
    for label, mask, area in zip(step_labels, masks, areas):
        area_text = "n/a" if not np.isfinite(area) else f"{100 * area:.1f}%"
        banner = _banner(width, [title, f"step {label}   area {area_text}"])
        frames.append(np.concatenate([banner, overlay_mask(frame_rgb, mask, colour)], axis=0))
    iio.imwrite(out_path, np.stack(frames), duration=int(1000 * seconds_per_step), loop=0)

    plot_path = out_path.with_name(out_path.stem + "_area.png")
    fig = agg_figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    _area_plot(ax, step_labels, areas, caption)
    if title:
        fig.suptitle(title)
    fig.savefig(plot_path, dpi=dpi)
    return out_path, plot_path


def _write_figure(frame_rgb, masks, step_labels, areas, title, caption, colour, out_path,
                  max_panels, dpi) -> Path:
    steps = masks.shape[0]
    chosen = np.unique(np.linspace(0, steps - 1, min(steps, max_panels)).round().astype(int))
    fig = agg_figure(figsize=(2.2 * len(chosen) + 0.5, 2.4 + 3.0), layout="constrained")
    grid = fig.add_gridspec(2, len(chosen), height_ratios=[2.2, 2.6])
    for column, s in enumerate(chosen):
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(overlay_mask(frame_rgb, masks[s], colour), interpolation="nearest")
        ax.set_title(f"step {step_labels[s]}", fontsize=9)
        ax.set_axis_off()
    _area_plot(fig.add_subplot(grid[1, :]), step_labels, areas, caption)
    if title:
        fig.suptitle(title)
    fig.savefig(out_path, dpi=dpi)
    return out_path


# ---------------------------------------------------------------------------------------
# Masks as data


def mask(cap, token: str, threshold=None, *, steps=None, layers=None, frames=None, branch="cond",
         norm: str = "global", reduce: str = "mean", heads=None, renorm: bool = False):
    """A token's attention map binarised, per decoded frame: xarray.DataArray of bool with
    dims (pixel_frame, y, x) on the video token grid (a cell covers frame_size / grid pixels).

    The map is averaged over `steps` (default: the last readable step) and reduced over
    `layers` and heads as render does, scaled to [0, 1] by `norm` over all selected frames,
    then thresholded: `threshold` a value in [0, 1] on that scale, or None / "otsu" for
    Otsu's threshold of each latent frame. Pixel frames in one latent frame share its mask.
    Selections use render's grammar ("0:50:5", "10-19", "-1"); `frames` picks pixel frames.
    The threshold used per frame is the coordinate `threshold`; attrs record the rest.
    """
    import xarray as xr

    from ovi_attn_render.views import video as views
    from ovi_attn_render.contract.selection import describe_values, parse_threshold, resolve

    text = None if threshold is None else str(threshold)
    value = parse_threshold(text)
    o = views.Options(view="mask", tokens=[str(token)], steps=steps, layers=layers, heads=heads, branch=branch,
                      norm=norm, reduce=reduce, renorm=renorm, threshold=text)
    views.check_options(o)
    p = views.pick(cap, o, default_steps=views.default_steps(cap, "mask", export=True))
    pixel = [int(n) for n in resolve(frames, np.arange(cap.num_pixel_frames), "frames", what="decoded frames")]
    latents = cap.latent_frames_of(pixel)
    m = views._reduce(views.token_maps(cap, p, o, p.tokens[0], latents, check=True), 0, "mean")  # [F', h, w]
    lo, hi = views.limits(m[None], "global" if norm == "step" else norm)  # ([1, F'], [1, F'])
    normed = np.where(np.isnan(m), np.nan, views.draw.normalise(m, lo[0][:, None, None], hi[0][:, None, None]))
    binary, used = binarise_steps(normed, value)  # [F', h, w] bool, [F']
    at = [latents.index(cap.latent_frame(n)) for n in pixel]
    return xr.DataArray(
        binary[at], dims=("pixel_frame", "y", "x"),
        coords={"pixel_frame": pixel, "latent_frame": ("pixel_frame", [latents[i] for i in at]),
                "threshold": ("pixel_frame", used[at])},
        name="mask",
        attrs={"token": cap.groups[p.tokens[0]], "threshold": "otsu" if value is None else f"{value:g}",
               "threshold_scale": f"the {norm}-normalised map, 0..1", "norm": norm,
               "steps": describe_values(cap.steps[p.steps]), "layers": describe_values(cap.layers[p.layers]),
               "reduce": reduce, "branch": cap.branches[p.branch], "renorm": int(renorm),
               "source": str(cap.path)})


def write_mask_export(da, npz_path: str | Path, frame_size: tuple[int, int]) -> str:
    """Write `mask(...)` as npz_path (arrays + the selection, loadable without pickle) and
    one 8-bit PNG per pixel frame (255 inside) at the decoded frame's size in the folder
    named like npz_path without its suffix (replacing the frame PNGs an earlier export left
    there; the caller has checked --force). Returns that folder."""
    import cv2

    npz_path = Path(npz_path)
    folder = npz_path.with_suffix("")
    folder.mkdir(exist_ok=True)
    _remove_frames(folder)  # an earlier export's frames (the caller checked --force)
    H, W = frame_size
    for n, m in zip(da["pixel_frame"].values, da.values):
        png = folder / f"frame_{int(n):04d}.png"
        if not cv2.imwrite(str(png), upsample_mask(m, H, W).astype(np.uint8) * 255):
            raise UserError(f"could not write {png}; check that the folder is writable.")
    attrs = {k: np.asarray(str(v)) for k, v in da.attrs.items()}
    np.savez(npz_path, masks=da.values, pixel_frame=da["pixel_frame"].values,
             latent_frame=da["latent_frame"].values, threshold_used=da["threshold"].values, **attrs)
    return str(folder)


def _remove_frames(folder: Path) -> None:
    for stale in Path(folder).glob("frame_[0-9][0-9][0-9][0-9].png"):
        stale.unlink()


def move_export_folder(drawn: str | Path, final: str | Path) -> None:
    """Move a freshly drawn folder of frame PNGs into place: the earlier export's frames at
    `final` go, anything else a user keeps there stays."""
    final = Path(final)
    final.mkdir(exist_ok=True)
    _remove_frames(final)
    for item in Path(drawn).iterdir():
        item.replace(final / item.name)
