"""Self-attention of query points: `--view query` (where one point looks) and `--view track`.

Both work on DataArrays of the `video_self` kind, dims (..., frame, y, x) over latent
frames and token cells, with the query's own place as coordinates (`query_frame`, the
pixel frame; `query_y`, `query_x`, its cell). The clip is reached through `Clip`, so the
views do not care whether the maps came from a file, the API or a test.

A track is, per latent frame, the point the query attends to most: the argmax cell, or
the soft-argmax (the mean position weighted by the attention above the frame's median, so
the even share every background cell gets does not pull the point to the frame's centre).
Positions are in cell units, cell centres at +0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import xarray as xr

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import FPS, SAMPLE_RATE
from ovi_attn_render.views import draw

TRACK_METHODS = ("argmax", "soft")


@dataclass
class Clip:
    """What the views need of the decoded clip."""

    frame_at: Callable[[int], np.ndarray]  # pixel frame -> uint8 [H, W, 3]
    pixel_frames: int
    latent_of: Callable[[int], int]  # pixel frame -> latent frame
    size: tuple[int, int]  # (H, W) of a decoded frame
    fps: float = FPS
    waveform: np.ndarray | None = None  # float32 mono, for MP4s
    sample_rate: int = SAMPLE_RATE


# ----------------------------------------------------------------------------- tracks


def track(m: xr.DataArray, method: str = "argmax") -> xr.DataArray:
    """(..., frame, y, x) attention -> (..., frame, axis) positions, axis = ["y", "x"], cell units.

    NaN maps (never computed) give NaN positions."""
    if method not in TRACK_METHODS:
        raise UserError(f"unknown track method '{method}'; use one of {', '.join(TRACK_METHODS)}.")
    v = m.transpose(..., "frame", "y", "x").values.astype(np.float64)  # [..., F, h, w]
    h, w = v.shape[-2:]
    flat = v.reshape(*v.shape[:-2], h * w)
    missing = np.isnan(flat).all(-1)
    safe = np.nan_to_num(flat, nan=0.0)
    if method == "argmax":
        i = safe.argmax(-1)
        pos = np.stack([i // w + 0.5, i % w + 0.5], -1)
    else:
        # The frame's floor (its median: the background's even share) says nothing about where
        # the point went; only the mass above it is weighed. A flat frame falls back to all of it.
        excess = np.maximum(safe - np.median(safe, axis=-1, keepdims=True), 0.0)
        excess = np.where(excess.sum(-1, keepdims=True) > 0, excess, safe)
        total = np.maximum(excess.sum(-1, keepdims=True), 1e-30)
        p = (excess / total).reshape(v.shape)
        pos = np.stack([(p.sum(-1) * (np.arange(h) + 0.5)).sum(-1), (p.sum(-2) * (np.arange(w) + 0.5)).sum(-1)], -1)
    pos[missing] = np.nan
    dims = tuple(d for d in m.transpose(..., "frame", "y", "x").dims if d not in ("y", "x")) + ("axis",)
    coords = {k: c for k, c in m.coords.items() if not set(c.dims) & {"y", "x"}}
    return xr.DataArray(pos, dims=dims, coords={**coords, "axis": ["y", "x"]}, name="track",
                        attrs={**m.attrs, "method": method, "units": "token cells"})


def distance_to(points: xr.DataArray, truth_yx: np.ndarray) -> np.ndarray:
    """Per-frame distance (cell units) of a track (..., frame, axis) to true positions [F, 2]."""
    p = points.transpose(..., "frame", "axis").values
    return np.sqrt(((p - truth_yx) ** 2).sum(-1))


# ----------------------------------------------------------------------------- drawing


def _to_pixels(yx_cells, grid_hw, size) -> tuple[int, int]:
    """(y, x) in cell units -> integer pixel (x, y) for OpenCV on a picture of `size`."""
    (h, w), (H, W) = grid_hw, size
    return int(round(yx_cells[1] * W / w)), int(round(yx_cells[0] * H / h))


def mark_query(img: np.ndarray, xy: tuple[int, int], colour, on_its_frame: bool) -> None:
    """A cross in a ring where the query is (filled on the query's own frame), in place."""
    r = max(5, img.shape[0] // 40)
    cv2.circle(img, xy, r + 2, draw.BLACK, 3, cv2.LINE_AA)
    cv2.circle(img, xy, r, colour, -1 if on_its_frame else 2, cv2.LINE_AA)
    cv2.drawMarker(img, xy, draw.WHITE, cv2.MARKER_CROSS, r, 1, cv2.LINE_AA)


def colour_top(m: xr.DataArray) -> float:
    """The top of a query map's colour scale: its largest probability anywhere (0 is the
    bottom), so every frame or step drawn on it compares; 1 when nothing was computed."""
    return float(np.nanmax(m.values)) if np.isfinite(m.values).any() else 1.0


def _query_cell(m: xr.DataArray) -> tuple[float, float] | None:
    y, x = int(m.coords["query_y"]), int(m.coords["query_x"])
    return None if y < 0 or x < 0 else (y + 0.5, x + 0.5)


def _display(clip: Clip, max_side: int) -> tuple[int, int]:
    return draw.display_size(clip.size[0], clip.size[1], max_side)


def query_frame_picture(m: xr.DataArray, clip: Clip, n: int, hi: float, lut, alpha: float, size,
                        caption: list[str]) -> np.ndarray:
    """One pixel frame n: the frame, the query's attention at n's latent frame, the point."""
    grid_hw = (m.sizes["y"], m.sizes["x"])
    f = clip.latent_of(n)
    v = draw.normalise(m.isel(frame=f).values, 0.0, hi)
    bg = draw.resize_rgb(clip.frame_at(n), size)
    img = draw.overlay(bg, draw.upsample(v, size), lut, alpha)
    cell = _query_cell(m)
    if cell is not None:
        mark_query(img, _to_pixels(cell, grid_hw, size), draw.TOKEN_COLOURS[0], n == int(m.coords["query_frame"]))
    bar = draw.colour_bar(size[0], 0.0, hi, lut, "p")
    return draw.vstack([draw.hstack([img, bar]), draw.caption_bar(caption + [f"frame {n} (latent {f})"],
                                                                  size[1] + bar.shape[1])])


def view_query_gif(m: xr.DataArray, clip: Clip, out: str, *, cmap: str = draw.DEFAULT_CMAP, alpha: float = 0.6,
                   max_side: int = 720, fps: float | None = None, caption: list[str] = ()) -> int:
    """GIF over the clip's pixel frames; m: (frame, y, x). One colour scale for the whole clip
    (the largest probability anywhere), so frames compare. Returns the frame count."""
    lut = draw.colormap_lut(cmap)
    hi = colour_top(m)
    size = _display(clip, max_side)
    frame_at = lambda n: query_frame_picture(m, clip, n, hi, lut, alpha, size, list(caption))  # noqa: E731
    draw.write_gif(out, frame_at, clip.pixel_frames, fps or clip.fps)
    return clip.pixel_frames


def view_query_steps_gif(m: xr.DataArray, clip: Clip, n: int, out: str, step_lines: list[str], *,
                         cmap: str = draw.DEFAULT_CMAP, alpha: float = 0.6, max_side: int = 720, fps: float = 8.0,
                         caption: list[str] = ()) -> int:
    """GIF over sampler steps at pixel frame n; m: (step, frame, y, x), step_lines one caption
    line per step. One colour scale over every step (steps that were never computed, an
    adaptive query's before it was found, draw as zero). Returns the step count."""
    lut = draw.colormap_lut(cmap)
    hi = colour_top(m)
    size = _display(clip, max_side)
    frame_at = lambda i: query_frame_picture(m.isel(step=i), clip, n, hi, lut, alpha, size,  # noqa: E731
                                             [step_lines[i]] + list(caption))
    draw.write_gif(out, frame_at, m.sizes["step"], fps)
    return m.sizes["step"]


def view_query_grid(m: xr.DataArray, clip: Clip, *, cmap: str = draw.DEFAULT_CMAP, alpha: float = 0.6,
                    cell_side: int = 160, caption: list[str] = ()) -> np.ndarray:
    """Latent frames (rows) x layers (columns); m: (layer, frame, y, x). Each tile shows the
    first pixel frame of its latent frame, scaled per layer (layers differ in sharpness)."""
    lut = draw.colormap_lut(cmap)
    size = draw.display_size(clip.size[0], clip.size[1], cell_side)
    firsts = {}
    for n in range(clip.pixel_frames):
        firsts.setdefault(clip.latent_of(n), n)
    rows = []
    his = [colour_top(m.isel(layer=j)) for j in range(m.sizes["layer"])]
    cell = _query_cell(m)
    for f in range(m.sizes["frame"]):
        n = firsts.get(f, 0)
        bg = draw.resize_rgb(clip.frame_at(n), size)
        tiles = []
        for j in range(m.sizes["layer"]):
            v = draw.normalise(m.isel(layer=j, frame=f).values, 0.0, his[j])
            tile = draw.overlay(bg, draw.upsample(v, size), lut, alpha)
            if cell is not None:
                mark_query(tile, _to_pixels(cell, (m.sizes["y"], m.sizes["x"]), size), draw.TOKEN_COLOURS[0],
                           f == int(m.coords["query_latent_frame"]))
            tiles.append(tile)
        label = np.zeros((size[0], 90, 3), np.uint8)
        draw.put_text(label, f"latent {f}", 4, 20)
        rows.append(draw.hstack([label] + tiles, gap=2))
    header = draw.hstack([np.zeros((24, 90, 3), np.uint8)]
                         + [_label_tile(f"layer {int(l)}", size[1]) for l in m.coords["layer"].values], gap=2)
    grid = draw.vstack([header] + rows)
    return draw.vstack([grid, draw.caption_bar(list(caption), grid.shape[1])])


def _label_tile(text: str, width: int) -> np.ndarray:
    tile = np.zeros((24, width, 3), np.uint8)
    draw.put_text(tile, text, 4, 17)
    return tile


def track_frame_picture(points: list[np.ndarray], starts: list[tuple[float, float] | None], latents: list[int],
                        clip: Clip, n: int, size, grid_hw) -> np.ndarray:
    """Pixel frame n with every query's track up to n (a line), its point at n (a dot) and
    where it started (a cross). points: one [F, 2] (y, x) array a query, in latent cells;
    latents: the latent frame of every pixel frame."""
    img = draw.resize_rgb(clip.frame_at(n), size).copy()
    for i, (p, start) in enumerate(zip(points, starts)):
        colour = draw.TOKEN_COLOURS[i % len(draw.TOKEN_COLOURS)]
        xy = [_to_pixels(pt, grid_hw, size) for pt in p[latents[:n + 1]] if np.isfinite(pt).all()]
        if len(xy) > 1:
            cv2.polylines(img, [np.asarray(xy, np.int32)], False, colour, 2, cv2.LINE_AA)
        if xy:
            cv2.circle(img, xy[-1], max(4, size[0] // 60), colour, -1, cv2.LINE_AA)
            cv2.circle(img, xy[-1], max(4, size[0] // 60) + 1, draw.BLACK, 1, cv2.LINE_AA)
        if start is not None:
            cv2.drawMarker(img, _to_pixels(start, grid_hw, size), colour, cv2.MARKER_TILTED_CROSS,
                           max(8, size[0] // 30), 2, cv2.LINE_AA)
    return img


def view_track(maps: list[xr.DataArray], clip: Clip, out: str, *, method: str = "argmax", max_side: int = 720,
               caption: list[str] = ()) -> int:
    """MP4 (with the clip's audio) or GIF of every query's track over the clip; each map
    (frame, y, x). Returns the frame count."""
    if not maps:
        raise UserError("--view track needs at least one video query; list them with --query.")
    size = _display(clip, max_side)
    grid_hw = (maps[0].sizes["y"], maps[0].sizes["x"])
    tracks = [track(m, method) for m in maps]
    points = [t.transpose("frame", "axis").values for t in tracks]  # [F, 2] each: read once, not per drawn frame
    latents = [clip.latent_of(n) for n in range(clip.pixel_frames)]
    starts = [_query_cell(m) for m in maps]
    labels = [str(m.coords["query"].values) for m in maps]
    legend = draw.legend(labels, draw.TOKEN_COLOURS, size[1])

    def frame_at(n: int) -> np.ndarray:
        img = track_frame_picture(points, starts, latents, clip, n, size, grid_hw)
        return draw.vstack([img, legend, draw.caption_bar(list(caption) + [f"frame {n} ({method})"], size[1])])

    if out.endswith(".mp4"):
        draw.write_mp4(out, frame_at, clip.pixel_frames, clip.fps, clip.waveform, clip.sample_rate)
    else:
        draw.write_gif(out, frame_at, clip.pixel_frames, clip.fps)
    return clip.pixel_frames


# ----------------------------------------------------------------------------- from a capture file


def clip_of(cap, size, notes: list[str]) -> Clip:
    """The decoded clip of a capture (grey frames while it is not written)."""
    from ovi_attn_render.views.video import background

    wav = cap.waveform() if cap.has_audio and cap.clip_written else None
    return Clip(lambda n: background(cap, n, size, notes), cap.num_pixel_frames, cap.latent_frame, size, cap.fps,
                wav, cap.sample_rate)


def query_maps(cap, o, labels: list[str], keep_steps: bool = False) -> tuple[list[xr.DataArray], str]:
    """Each query's attention as (layer, frame, y, x), the mean over the selected steps (with
    keep_steps: (step, layer, frame, y, x)) with heads reduced as --reduce says; and the
    selection in words."""
    from ovi_attn_render.api import Capture as Api

    api = Api(cap)
    maps = [api.video_self(label, steps=_steps(cap, o), layers=o.layers, heads=o.heads, branch=o.branch,
                           reduce=o.reduce) for label in labels]
    text = _selection_text(maps[0], cap, o)
    return (maps if keep_steps else [m.mean("step", keep_attrs=True) for m in maps]), text


def audio_query_map(cap, o, label: str) -> tuple[xr.DataArray, str]:
    """One audio query's attention over the audio as (layer, audio_time), the mean over the
    selected steps with heads reduced as --reduce says (its own token and time as coordinates
    query_audio_token, query_time); and the selection in words. The audio query's one read
    path: --view query draws it, the viewer serves it."""
    from ovi_attn_render.api import Capture as Api

    m = Api(cap).audio_self(label, steps=_steps(cap, o), layers=o.layers, heads=o.heads, branch=o.branch,
                            reduce=o.reduce)
    return m.mean("step", keep_attrs=True), _selection_text(m, cap, o)


def _steps(cap, o) -> str | None:
    """--steps, or the view's default: the last readable step (--over steps: every one)."""
    from ovi_attn_render.views.video import default_steps

    return o.steps if o.steps is not None else default_steps(cap, o.view, over=getattr(o, "over", "frames"))


def step_line(cap, step: int) -> str:
    """A sampler step in words, as the text maps' steps view says it: step s/N, t, sigma."""
    i = int(np.flatnonzero(cap.steps == step)[0])
    N = int(cap.attrs.get("num_steps", len(cap.steps)))
    return f"step {step}/{N - 1}  t={int(cap.timesteps[i])}  sigma={float(cap.sigmas[i]):.3f}"


def _selection_text(m: xr.DataArray, cap, o) -> str:
    from ovi_attn_render.contract.selection import describe_values

    steps = describe_values(m.coords["step"].values) if "step" in m.dims else "?"
    return f"step {steps}, layers {describe_values(m.coords['layer'].values)}, branch {o.branch}"


def render_query(cap, o, out: str):
    """--view query: where one video query point looks, over the clip (GIF) or as a grid of
    latent frames x layers (PNG)."""
    from ovi_attn_render.views.video import Drawn

    audio = [q.label for q in cap.tower_queries("audio")]
    if len(o.queries) == 1 and o.queries[0] in audio and o.queries[0] not in [q.label for q in cap.tower_queries("video")]:
        return render_audio_query(cap, o, out)
    labels = o.queries or [q.label for q in cap.tower_queries("video")][:1]
    if not labels:
        cap.query_index("", "video")  # the capture has no video queries: says how to get some
    if len(labels) > 1:
        raise UserError(f"--view query draws one query point, got {len(labels)} ({', '.join(labels)}); "
                        f"name one with --query, or follow several with --view track.")
    notes: list[str] = []
    over_steps = o.over == "steps"
    if over_steps and out.endswith(".png"):
        raise UserError("--view query --over steps writes a GIF over the steps; pass --format gif or -o a .gif file "
                        "(the PNG is the grid of latent frames x layers).")
    (m,), text = query_maps(cap, o, labels[:1], keep_steps=over_steps)
    q = cap.tower_queries("video")[cap.query_index(labels[0])]
    where = (f"query {q.label}: frame {q.pixel_frame}, cell ({q.y}, {q.x})" if q.y >= 0 else
             f"query {q.label}: not found yet (adaptive, token {q.token} at step {q.step})")
    caption = [where, text]
    lut = o.cmap or draw.DEFAULT_CMAP
    if over_steps:
        n = q.pixel_frame if o.frame is None else cap.check_frame(o.frame)
        size = draw.display_size(*cap.frame_size, o.size)
        lines = [step_line(cap, int(s)) + f"  [{i + 1}/{m.sizes['step']}]" for i, s in enumerate(m.coords["step"].values)]
        count = view_query_steps_gif(m.mean("layer", keep_attrs=True), clip_of(cap, size, notes), n, out, lines,
                                     cmap=lut, alpha=o.alpha, max_side=o.size, fps=o.fps or 8.0, caption=caption)
        return Drawn([out], f"{q.label}: {count} steps at frame {n}, {text} (layers averaged)", notes)
    if out.endswith(".png"):
        img = view_query_grid(m, clip_of(cap, draw.display_size(*cap.frame_size, 160), notes), cmap=lut,
                              alpha=o.alpha, cell_side=160, caption=caption)
        draw.write_png(out, img)
        summary = f"{q.label}: {m.sizes['frame']} latent frames x {m.sizes['layer']} layers"
    else:
        size = draw.display_size(*cap.frame_size, o.size)
        n = view_query_gif(m.mean("layer", keep_attrs=True), clip_of(cap, size, notes), out, cmap=lut,
                           alpha=o.alpha, max_side=o.size, fps=o.fps, caption=caption)
        summary = f"{q.label}: {n} frames, {text} (layers averaged)"
    return Drawn([out], summary, notes)


def render_track(cap, o, out: str):
    """--view track: every named (default: every) video query followed through the clip."""
    from ovi_attn_render.views.video import Drawn

    labels = o.queries or [q.label for q in cap.tower_queries("video")]
    if not labels:
        cap.query_index("", "video")
    if len(labels) > len(draw.TOKEN_COLOURS):
        raise UserError(f"--view track tells at most {len(draw.TOKEN_COLOURS)} queries apart by colour, got "
                        f"{len(labels)}; name some with --query.")
    notes: list[str] = []
    maps, text = query_maps(cap, o, labels)
    text = text.replace("layers", "layers (averaged)")
    size = draw.display_size(*cap.frame_size, o.size)
    if out.endswith(".mp4") and cap.has_audio and not cap.clip_written:
        notes.append("the decoded audio is not written yet (partial capture); the MP4 is silent.")
    n = view_track([m.mean("layer", keep_attrs=True) for m in maps], clip_of(cap, size, notes), out,
                   method=o.track, max_side=o.size, caption=[text])
    return Drawn([out], f"{', '.join(labels)}: tracks over {n} frames ({o.track}), {text}", notes)


def audio_query_strips(m: xr.DataArray, token: int, *, cmap: str = draw.DEFAULT_CMAP, width: int = 640,
                       caption: list[str] = ()) -> np.ndarray:
    """m: (layer, audio_time) -> one colour strip per layer over audio time (each scaled to its
    own peak), the query's own audio token marked."""
    lut = draw.colormap_lut(cmap)
    La = m.sizes["audio_time"]
    rows = []
    for j in range(m.sizes["layer"]):
        v = m.isel(layer=j).values
        hi = colour_top(m.isel(layer=j))
        strip = draw.apply_lut(draw.upsample(draw.normalise(v[None, :], 0.0, hi), (28, width)), lut)
        x = int((token + 0.5) * width / La)
        cv2.line(strip, (x, 0), (x, 27), draw.WHITE, 1)
        label = np.zeros((28, 90, 3), np.uint8)
        draw.put_text(label, f"layer {int(m.coords['layer'].values[j])}", 4, 19)
        rows.append(draw.hstack([label, strip]))
    img = draw.vstack(rows)
    return draw.vstack([img, draw.caption_bar(list(caption), img.shape[1])])


def render_audio_query(cap, o, out: str):
    """--view query of an audio query: its attention over the audio, one strip per layer (PNG)."""
    from ovi_attn_render.views.video import Drawn

    label = o.queries[0]
    if not out.endswith(".png"):
        raise UserError(f"the audio query '{label}' is drawn as a PNG (a strip per layer over audio time); pass "
                        f"--format png or -o a .png file.")
    q = cap.tower_queries("audio")[cap.query_index(label, "audio")]
    m, text = audio_query_map(cap, o, label)
    caption = [f"audio query {q.label}: {q.time:g} s (audio token {q.audio_token}, white line)", text]
    draw.write_png(out, audio_query_strips(m, q.audio_token, cmap=o.cmap or draw.DEFAULT_CMAP, caption=caption))
    return Drawn([out], f"{q.label}: {m.sizes['layer']} layers over {m.sizes['audio_time']} audio tokens, {text}", [])
