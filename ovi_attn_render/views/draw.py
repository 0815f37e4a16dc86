"""Pixels: colormaps, overlays, captions, colour bars, legends and the file writers.

The animated paths (GIF/MP4) use only numpy, OpenCV and Pillow so they start fast;
matplotlib is imported lazily, for a non-default colormap or a plot.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable

import cv2
import numpy as np

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.common.media import write_mp4  # noqa: F401  (the views write MP4s as draw.write_mp4)

# Control points of matplotlib's 'inferno' (perceptually uniform, CC0), sampled at 17
# evenly spaced positions; linear interpolation between them stays within a few levels
# of the full table, and spares the ~0.3 s matplotlib import on the GIF path.
_INFERNO_17 = [
    (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110), (138, 34, 106),
    (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29), (249, 142, 9),
    (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164),
]
# A diverging blue-white-red map for signed differences (cond - uncond).
_DIVERGING_9 = [
    (5, 48, 97), (42, 113, 178), (107, 172, 209), (194, 221, 236), (247, 246, 246),
    (251, 204, 180), (228, 128, 102), (186, 40, 50), (103, 0, 31),
]
# Distinct hues for multi-token overlays, in legend order.
TOKEN_COLOURS = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (245, 130, 48), (240, 50, 230),
]
DEFAULT_CMAP = "inferno"
DIVERGING_CMAP = "diverging"
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (128, 128, 128)


def _interpolate_lut(points) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    x = np.linspace(0, 1, len(pts))
    t = np.linspace(0, 1, 256)
    return np.stack([np.interp(t, x, pts[:, c]) for c in range(3)], 1).round().astype(np.uint8)


@lru_cache(maxsize=16)
def colormap_lut(name: str = DEFAULT_CMAP) -> np.ndarray:
    """A 256-entry uint8 RGB table [256, 3] for a colormap name."""
    if name == "inferno":
        return _interpolate_lut(_INFERNO_17)
    if name == DIVERGING_CMAP:
        return _interpolate_lut(_DIVERGING_9)
    from matplotlib import colormaps  # lazy: only for other colormaps

    if name not in colormaps:
        raise UserError(f"--cmap '{name}' is not a matplotlib colormap; try inferno, magma, viridis or cividis.")
    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------- values
def normalise(maps: np.ndarray, lo, hi) -> np.ndarray:
    """(maps - lo) / (hi - lo) clipped to [0, 1]; NaN -> 0; lo/hi broadcast against maps."""
    lo = np.asarray(lo, np.float32)
    span = np.maximum(np.asarray(hi, np.float32) - lo, 1e-12)
    out = (maps - lo) / span
    return np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0).astype(np.float32)


def upsample(m: np.ndarray, size: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """[h, w] -> [H, W]; nearest keeps each token cell a clean block; bilinear smooths."""
    H, W = size
    interp = cv2.INTER_NEAREST if mode == "nearest" else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(m, np.float32), (W, H), interpolation=interp)


def apply_lut(v: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Normalised values [...], in [0, 1] -> uint8 RGB [..., 3]."""
    return lut[np.clip((v * 255.0 + 0.5).astype(np.int32), 0, 255)]


def overlay(frame: np.ndarray, v: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """Colour-mapped values over a frame with constant alpha, so a colour reads against the bar.

    frame uint8 [H, W, 3]; v normalised [H, W]."""
    col = apply_lut(v, lut).astype(np.float32)
    return (frame.astype(np.float32) * (1 - alpha) + col * alpha + 0.5).astype(np.uint8)


def overlay_tokens(frame: np.ndarray, vs: list[np.ndarray], colours, alpha: float) -> np.ndarray:
    """Several normalised maps [H, W] in their own hue; each pixel's alpha is alpha * value,
    shared out between tokens when they overlap so the total never exceeds alpha."""
    a = np.stack([alpha * v for v in vs], 0)  # [T, H, W]
    total = a.sum(0)
    scale = np.where(total > alpha, alpha / np.maximum(total, 1e-12), 1.0)
    a = a * scale
    out = frame.astype(np.float32) * (1 - a.sum(0))[..., None]
    for ai, c in zip(a, colours):
        out += ai[..., None] * np.asarray(c, np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    H, W = size
    if img.shape[:2] == (H, W):
        return img
    interp = cv2.INTER_AREA if H < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (W, H), interpolation=interp)


MIN_SIDE = 384  # small clips (the toy model's 128x128) are enlarged so captions fit


def display_size(H: int, W: int, max_side: int) -> tuple[int, int]:
    """Scale (H, W) so the longer side is at most max_side; a clip smaller than MIN_SIDE is
    enlarged by a whole factor (token cells stay equal blocks), within max_side."""
    longest = max(H, W)
    if longest < MIN_SIDE and max_side > longest:
        k = max(1, min(MIN_SIDE, max_side) // longest)
        return H * k, W * k
    s = min(1.0, max_side / longest) if max_side > 0 else 1.0
    return max(1, round(H * s)), max(1, round(W * s))


# ---------------------------------------------------------------------- text and furniture
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def text_width(text: str, scale: float = 0.45) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def put_text(img: np.ndarray, text: str, x: int, y: int, colour=WHITE, scale: float = 0.45) -> None:
    """Anti-aliased text with its baseline at y (in place)."""
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, colour, 1, cv2.LINE_AA)


def wrap_text(line: str, width: int, scale: float = 0.45) -> list[str]:
    """Break a line at spaces (a word wider than `width` pixels at its characters) so that
    every piece fits: text is never cut off at the picture's edge."""
    pieces: list[str] = []
    current = ""
    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, scale) <= width or not candidate.strip():
            current = candidate
            continue
        if current:
            pieces.append(current)
        current = word
        while text_width(current, scale) > width and len(current) > 1:  # one over-long word
            k = len(current) - 1
            while k > 1 and text_width(current[:k], scale) > width:
                k -= 1
            pieces.append(current[:k])
            current = current[k:]
    pieces.append(current)
    return pieces


def caption_bar(lines: list[str], width: int, scale: float = 0.45) -> np.ndarray:
    """Black bar with white lines of text, uint8 [18*rows + 6, width, 3]; a line too long
    for the width wraps onto the next row."""
    rows = [piece for line in lines for piece in wrap_text(line, width - 12, scale)]
    bar = np.zeros((18 * len(rows) + 6, width, 3), np.uint8)
    for i, line in enumerate(rows):
        put_text(bar, line, 6, 18 * (i + 1), WHITE, scale)
    return bar


def fmt_value(v: float) -> str:
    if v == 0 or not np.isfinite(v):
        return "0" if v == 0 else "nan"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"


def colour_bar(height: int, lo: float, hi: float, lut: np.ndarray, label: str = "") -> np.ndarray:
    """Vertical colour bar, hi at the top, with its value range written beside it."""
    labels = [fmt_value(hi), fmt_value((lo + hi) / 2), fmt_value(lo)]
    tw = max(text_width(t, 0.4) for t in labels + [label[:10]])
    bar_w, pad = 16, 6
    img = np.zeros((height, pad + bar_w + pad + tw + pad, 3), np.uint8)
    top, bottom = 12, height - 12
    ramp = np.linspace(1, 0, max(1, bottom - top))
    img[top:bottom, pad:pad + bar_w] = apply_lut(ramp, lut)[:, None, :]
    x = pad + bar_w + pad
    put_text(img, labels[0], x, top + 8, WHITE, 0.4)
    put_text(img, labels[1], x, (top + bottom) // 2 + 4, WHITE, 0.4)
    put_text(img, labels[2], x, bottom, WHITE, 0.4)
    if label:
        put_text(img, label[:10], x, (top + bottom) // 2 + 22, (200, 200, 200), 0.4)
    return img


def legend(names: list[str], colours, width: int) -> np.ndarray:
    """Colour patches (exactly the overlay hues) with the token names, in as many rows of
    26 px as the width needs; an entry wider than the width widens the legend instead."""
    entries = [(name, c, 22 + text_width(name) + 14) for name, c in zip(names, colours)]
    rows: list[list] = [[]]
    x = 6
    for entry in entries:
        if rows[-1] and x + entry[2] > width:
            rows.append([])
            x = 6
        rows[-1].append(entry)
        x += entry[2]
    widest = max(6 + sum(e[2] for e in row) for row in rows)
    img = np.zeros((26 * len(rows), max(width, widest), 3), np.uint8)
    for r, row in enumerate(rows):
        x, y = 6, 26 * r
        for name, c, w in row:
            img[y + 5:y + 21, x:x + 16] = c
            put_text(img, name, x + 22, y + 18, WHITE, 0.45)
            x += w
    return img


def hstack(images: list[np.ndarray], gap: int = 0) -> np.ndarray:
    """Side by side, top-aligned, padded black to the tallest."""
    H = max(i.shape[0] for i in images)
    parts = []
    for k, im in enumerate(images):
        if im.shape[0] < H:
            im = np.concatenate([im, np.zeros((H - im.shape[0], im.shape[1], 3), np.uint8)], 0)
        parts.append(im)
        if gap and k < len(images) - 1:
            parts.append(np.zeros((H, gap, 3), np.uint8))
    return np.concatenate(parts, 1)


def vstack(images: list[np.ndarray]) -> np.ndarray:
    """Stacked, left-aligned, padded black to the widest."""
    W = max(i.shape[1] for i in images)
    return np.concatenate([np.pad(i, ((0, 0), (0, W - i.shape[1]), (0, 0))) for i in images], 0)


def check_output(path: str, force: bool) -> None:
    if os.path.exists(path) and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it or -o to write elsewhere.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"output folder {parent} does not exist; create it or pick another -o.")


def write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise UserError(f"could not write {path}; check that the folder is writable.")


def _shared_palette(samples: list[np.ndarray]):
    """One 256-colour palette for the whole GIF, from a pixel subsample of a few frames."""
    from PIL import Image

    pix = np.concatenate([s[::2, ::2].reshape(-1, 3) for s in samples], 0)
    side = int(np.ceil(np.sqrt(len(pix))))
    pix = np.concatenate([pix, np.repeat(pix[:1], side * side - len(pix), 0)], 0).reshape(side, side, 3)
    return Image.fromarray(pix).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def write_gif(path: str, frame_at: Callable[[int], np.ndarray], count: int, fps: float) -> None:
    """Looping GIF of frame_at(0..count-1) (uint8 RGB, same size), palette built once.

    Frames are quantised as they are made, so memory holds 1 byte per pixel per frame."""
    from PIL import Image

    sample_ids = sorted({0, count // 2, count - 1})
    samples = {i: frame_at(i) for i in sample_ids}
    palette = _shared_palette(list(samples.values()))
    frames = []
    for i in range(count):
        rgb = samples.pop(i) if i in samples else frame_at(i)
        frames.append(Image.fromarray(rgb).quantize(palette=palette, dither=Image.Dither.NONE))
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=max(20, round(1000 / fps)), optimize=False, disposal=1)
