"""The render views: each reads exactly the maps it draws and writes one picture.

A view is `view_<name>(cap, opts, out) -> Drawn`. Selections are resolved against the
capture's coordinates (see selection.py); maps come back from the reader as
[S, L, Hd, F', h, w], are reduced over heads then layers (`--reduce`), optionally
renormalised over real tokens (`--renorm`), scaled to [0, 1] (`--norm`) and drawn.

Norms (what one colour means):
  global    one min..max over everything drawn, so brightness compares across steps/frames;
  step      min..max per step (per grid column);
  frame     min..max of each map on its own (per latent frame of each step; per grid cell);
  absolute  the probability scale 0..1.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from ovi_attn_render.views import draw
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import SAMPLE_RATE
from ovi_attn_render.contract.reader import Capture
from ovi_attn_render.contract.selection import describe_values, parse_threshold, resolve

VIEWS = ("steps", "frames", "grid", "layers", "audio", "sync", "mask", "diff", "sheet", "query", "track")
QUERY_VIEWS = ("query", "track")  # self-attention of query points (views/query.py)
# Formats each view can write, the default first.
VIEW_FORMATS = {
    "steps": ("gif", "mp4"),
    "frames": ("gif", "mp4"),
    "diff": ("gif", "mp4"),
    "grid": ("png",),
    "layers": ("png", "svg"),
    "audio": ("png", "svg"),
    "sync": ("png", "svg"),
    "mask": ("gif", "png", "svg", "npz"),  # npz: the masks as data, with per-frame PNGs
    "sheet": ("png",),
    "query": ("gif", "png"),  # gif: over the clip's frames (--over steps: over the steps); png: latent frames x layers
    "track": ("mp4", "gif"),  # mp4 with the clip's audio
}
# Options that only some views use: option -> those views. Giving one to another view is an
# error rather than a silent no-op (it would also end up in the output name).
_MAP_VIEWS = ("steps", "diff", "frames", "grid", "sheet")
APPLIES = {
    "tokens": tuple(v for v in VIEWS if v != "sync" and v not in QUERY_VIEWS),
    "queries": QUERY_VIEWS,
    "track": ("track",),
    "over": ("query",),
    "frame": ("steps", "diff", "grid", "mask", "layers", "sheet", "query"),  # query: with --over steps
    "frames": ("frames", "layers", "mask"),
    "threshold": ("mask",),
    "by": ("audio",),
    "background": ("audio",),
    "layout": ("steps", "frames"),
    "alpha": _MAP_VIEWS + ("query",),
    "upsample": _MAP_VIEWS,
    "cmap": _MAP_VIEWS + ("audio", "sync", "query"),
    "fps": ("steps", "diff", "frames", "mask", "query"),
    "size": ("steps", "diff", "frames", "mask", "sheet", "query", "track"),
    "renorm": tuple(v for v in VIEWS if v != "sync" and v not in QUERY_VIEWS),
    "norm": ("steps", "diff", "frames", "grid", "audio", "mask", "sheet"),
}
_FLAG = {"tokens": "--token", "queries": "--query"}
NORMS = ("global", "step", "frame", "absolute")
QUERY_OVER = ("frames", "steps")  # --view query --over: what its GIF animates
GRID_DEFAULT_STEPS = 10


@dataclass
class Options:
    """Everything the command line can say about a render (shared by all views)."""

    view: str = "steps"
    tokens: list[str] = field(default_factory=list)
    frame: int | None = None  # pixel frame of the decoded video
    frames: str | None = None  # selection spec of pixel frames (frames/layers views)
    steps: str | None = None  # selection spec of sampler steps
    layers: str | None = None  # selection spec of block indices
    heads: str | None = None  # selection spec of head numbers
    branch: str = "cond"
    reduce: str = "mean"
    norm: str = "global"
    renorm: bool = False
    cmap: str | None = None  # None: the view's default (inferno; diverging for diff)
    alpha: float = 0.5
    upsample: str = "nearest"
    layout: str = "overlay"  # several tokens: overlay | side
    threshold: str | None = None  # mask view: value in [0, 1] or 'otsu'
    size: int = 512  # longest side of the drawn frame in pixels (never upscaled)
    fps: float | None = None
    by: str = "step"  # audio view: one strip per step or per layer
    background: str = "waveform"  # audio view: waveform | spectrogram
    queries: list[str] = field(default_factory=list)  # query / track views: query point labels
    track: str = "soft"  # track view: soft (soft-argmax) or argmax
    over: str = "frames"  # query view's GIF: over the clip's frames or over the sampler steps


@dataclass
class Drawn:
    """What a view wrote and what it drew, for the command's report."""

    paths: list[str]
    summary: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- selection
@dataclass
class Pick:
    """The resolved selection: positions into the capture's coordinates."""

    steps: list[int]
    layers: list[int]
    heads: list[int] | None
    branch: int
    tokens: list[int]
    pixel_frame: int
    latent: int
    notes: list[str]


def check_options(o: Options) -> None:
    if o.view not in VIEWS:
        raise UserError(f"unknown view '{o.view}'; choose one of {', '.join(VIEWS)}.")
    if o.norm not in NORMS:
        raise UserError(f"unknown --norm '{o.norm}'; choose one of {', '.join(NORMS)}.")
    if o.reduce not in ("mean", "max"):
        raise UserError(f"unknown --reduce '{o.reduce}'; choose mean or max.")
    if o.upsample not in ("nearest", "bilinear"):
        raise UserError(f"unknown --upsample '{o.upsample}'; choose nearest or bilinear.")
    if o.layout not in ("overlay", "side"):
        raise UserError(f"unknown --layout '{o.layout}'; choose overlay or side.")
    if not 0.0 <= o.alpha <= 1.0:
        raise UserError(f"--alpha {o.alpha} is outside [0, 1].")
    if o.by not in ("step", "layer"):
        raise UserError(f"unknown --by '{o.by}'; choose step or layer.")
    if o.background not in ("waveform", "spectrogram"):
        raise UserError(f"unknown --background '{o.background}'; choose waveform or spectrogram.")
    defaults = Options()
    for name, views in APPLIES.items():
        if o.view not in views and getattr(o, name) != getattr(defaults, name):
            flag = _FLAG.get(name, "--" + name)
            users = ", ".join(views)
            raise UserError(f"{flag} does not apply to --view {o.view} (it is used by --view {users}); drop it.")
    if o.view not in ("sheet",) and any(str(t).strip().lower() == "all" for t in o.tokens):
        raise UserError(f"--token all draws every captured group, which only --view sheet does; use --view sheet, "
                        f"or name the tokens for --view {o.view}.")
    if o.view in QUERY_VIEWS:
        from ovi_attn_render.views.query import TRACK_METHODS

        if o.track not in TRACK_METHODS:
            raise UserError(f"unknown --track '{o.track}'; choose {' or '.join(TRACK_METHODS)}.")
    if o.over not in QUERY_OVER:
        raise UserError(f"unknown --over '{o.over}'; choose {' or '.join(QUERY_OVER)}.")
    if o.view == "query" and o.over == "frames" and o.frame is not None:
        raise UserError("--frame picks the frame of --view query --over steps; the GIF over frames shows every "
                        "frame, so drop --frame or add --over steps.")
    if o.view == "sheet" and o.norm == "step":
        raise UserError("--view sheet draws one step range, so --norm step has nothing to vary over; use global "
                        "(one shared scale, the default), frame (each panel its own) or absolute.")


def pick(cap: Capture, o: Options, need_tokens: bool = True, default_steps: str | None = None) -> Pick:
    notes = []
    if cap.steps_done == 0:
        raise UserError(f"{os.path.basename(cap.path)} has no complete step yet (status {cap.status}); "
                        f"wait for the capture to write its first step.")
    if cap.partial:
        notes.append(f"partial capture (status {cap.status}): {cap.steps_done} of {len(cap.steps)} captured steps "
                     f"exist; rendering those.")
    steps = resolve(o.steps if o.steps is not None else default_steps, cap.readable_steps, "steps",
                    what=f"readable steps ({cap.steps_done} of {len(cap.steps)} written)")
    layers = resolve(o.layers, cap.layers, "layers", what="captured layers")
    if o.heads is not None and cap.heads_mode == "mean":
        raise UserError("this capture stored the mean over heads only; capture with `heads: all` to select heads.")
    heads = None if o.heads is None else resolve(o.heads, cap.heads, "heads", what="captured heads")
    branch = cap.branch_index(o.branch)
    tokens = [cap.token_index(t) for t in o.tokens]
    if len(tokens) > len(draw.TOKEN_COLOURS) and o.layout == "overlay" and o.view in ("steps", "frames"):
        raise UserError(f"--layout overlay tells at most {len(draw.TOKEN_COLOURS)} tokens apart by colour, got "
                        f"{len(tokens)}; draw them with --layout side, or every group at once with --view sheet.")
    if need_tokens and not tokens:
        shown = ", ".join(repr(g) for g in cap.groups[:30])
        raise UserError(f"name the token to draw with --token; captured groups: {shown}.")
    n = cap.default_frame if o.frame is None else cap.check_frame(o.frame)
    return Pick(steps, layers, heads, branch, tokens, n, cap.latent_frame(n), notes)


def default_steps(cap: Capture, view: str, export: bool = False, over: str = "frames") -> str | None:
    """The steps a view draws when --steps is not given (None: every readable step).

    frames, the mask export and the query views draw the last step (--view query --over
    steps: every step); grid a spread of GRID_DEFAULT_STEPS."""
    readable = cap.readable_steps
    if not len(readable) or (view == "query" and over == "steps"):
        return None
    if view == "frames" or (view == "mask" and export) or view in QUERY_VIEWS:
        return str(int(readable[-1]))
    if view == "grid" and len(readable) > GRID_DEFAULT_STEPS:
        picks = np.unique(np.linspace(0, len(readable) - 1, GRID_DEFAULT_STEPS).round().astype(int))
        return ",".join(str(int(readable[i])) for i in picks)
    return None


def sheet_groups(cap: Capture, o: Options) -> list[int]:
    """Groups a contact sheet draws: no --token or `--token all` -> every captured group but
    <eos> and <pad> (their mass would flatten the shared scale); else the named ones."""
    named = [t for t in o.tokens if str(t).strip().lower() != "all"]
    if o.tokens and len(named) == len(o.tokens):
        return [cap.token_index(t) for t in named]
    every = [i for i, k in enumerate(cap.group_kinds) if k not in ("eos", "pad")]
    return every + [g for g in (cap.token_index(t) for t in named) if g not in every]


def canonical(cap: Capture, o: Options, ext: str) -> Options:
    """The options written one way, for output names: group labels for tokens (`Man` and
    `man` are one map), resolved pixel frame, and selections as the values they pick (None
    when that is the view's default), so one picture gets one name and two pictures two."""
    export = o.view == "mask" and ext == "npz"
    c = replace(o)
    if o.view == "sheet":
        every = not o.tokens or "all" in [str(t).strip().lower() for t in o.tokens]
        c.tokens = ["all"] if every else [cap.groups[g] for g in sheet_groups(cap, o)]
    else:
        c.tokens = [cap.groups[cap.token_index(t)] for t in o.tokens]
    c.queries = [q if q in [a.label for a in cap.tower_queries("audio")] else
                 cap.tower_queries("video")[cap.query_index(q)].label for q in o.queries]
    uses_frame = o.view in APPLIES["frame"] and not export and not (o.view == "layers" and o.frames)
    c.frame = (cap.default_frame if o.frame is None else cap.check_frame(o.frame)) if uses_frame else None
    if o.view == "query":  # only --over steps has a frame, by default the query's own (not in the name)
        c.frame = None if o.frame is None else cap.check_frame(o.frame)

    def values(spec, available, name, what, default=None):  # `what` as pick() words it
        if spec is None:
            return None
        chosen = resolve(spec, available, name, what=what)
        return None if chosen == resolve(default, available, name) else \
            describe_values(np.asarray(available)[chosen])

    if cap.steps_done:  # else pick() explains that nothing is readable yet
        c.steps = values(o.steps, cap.readable_steps, "steps", f"readable steps ({cap.steps_done} of "
                         f"{len(cap.steps)} written)", default_steps(cap, o.view, export, o.over))
    c.layers = values(o.layers, cap.layers, "layers", "captured layers")
    if cap.heads_mode != "mean":
        c.heads = values(o.heads, cap.heads, "heads", "captured heads")
    c.frames = values(o.frames, np.arange(cap.num_pixel_frames), "frames", "decoded frames")
    t = parse_threshold(o.threshold)
    c.threshold = None if t is None else f"{t:g}"
    return c


# ---------------------------------------------------------------------- maps
def _reduce(x: np.ndarray, axis: int, how: str) -> np.ndarray:
    """nanmean / nanmax over an axis of drawn pixels: NaN entries (maps never computed) are
    skipped. Maps read from the file reduce by dim name instead (reader.Maps.reduce)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        return np.nanmax(x, axis=axis) if how == "max" else np.nanmean(x, axis=axis)


def renormalised(x, eos, pad):  # arrays or DataArrays of the same dims
    """A group's maps divided by the mass on real tokens, 1 - <eos> - <pad> (`--renorm`, the API's renorm)."""
    return x / np.maximum(1.0 - eos - pad, 1e-6)


def _special_group(cap: Capture, kind: str) -> int:
    if kind not in cap.group_kinds:
        raise UserError(f"--renorm needs the {kind} group, which this capture lacks; drop --renorm.")
    return cap.group_kinds.index(kind)


def check_computed(cap: Capture, x: np.ndarray, token: int, branch: int, tower: str = "video") -> None:
    """Refuse to draw a map that was never computed (all NaN) with the reason, instead of a blank picture.

    In the uncond branch the text is the negative prompt: a word's uncond map is the attention
    the negative pass puts on that word there, so a word absent from it has none."""
    if not np.isnan(x).all():
        return
    name = cap.groups[token]
    if cap.branches[branch] == "uncond":
        key = f"{tower}_negative_prompt"
        raise UserError(f"'{name}' is not in the {tower} negative prompt ({str(cap.attrs.get(key, ''))!r}), so it "
                        f"has no uncond map (the uncond pass attends to the negative prompt, and a word's uncond map "
                        f"is the attention on that word there); draw --branch cond, or capture with the word in "
                        f"{key}.")
    raise UserError(f"the maps of '{name}' were never computed for the chosen steps and layers (a layer skipped by "
                    f"skip-layer guidance has none); choose other --layers or --steps.")


def token_maps(cap: Capture, p: Pick, o: Options, token: int, latents: list[int], branch: int | None = None,
               keep_layers: bool = False, check: bool = False) -> np.ndarray:
    """[S, F', h, w] (or [S, L, F', h, w] with keep_layers) for one token at some latent frames.

    check: refuse a map that was never computed (see check_computed), as the CLI's views do;
    False (the default, for callers that draw NaN themselves) returns the NaNs."""
    b = p.branch if branch is None else branch
    read = lambda g: cap.maps("text_video", g, p.steps, p.layers, b, p.heads, latents)  # noqa: E731
    x = read(token)  # Maps in the file's dims: (frame, step, layer, head, y, x)
    if check:
        check_computed(cap, x.values, token, b)
    if o.renorm:
        x = x.with_values(renormalised(x.values, read(_special_group(cap, "eos")).values,
                                       read(_special_group(cap, "pad")).values))
    x = x.reduce("head", o.reduce)
    if not keep_layers:
        x = x.reduce("layer", o.reduce)
    return x.order("step", *(("layer",) if keep_layers else ()), "frame", "y", "x")


def limits(maps: np.ndarray, norm: str, signed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi), each shaped maps.shape[:-2], the colour range of every 2-D map.

    maps: [S, ..., h, w]; `step` shares a range over axis 0's entries, `frame` gives every
    2-D map its own. signed: symmetric around 0 (for differences)."""
    lead = maps.shape[:-2]
    if norm == "absolute":
        lo, hi = (-1.0 if signed else 0.0), 1.0
        return np.full(lead, lo, np.float32), np.full(lead, hi, np.float32)
    axes = {"global": tuple(range(maps.ndim)), "step": tuple(range(1, maps.ndim)),
            "frame": (maps.ndim - 2, maps.ndim - 1)}[norm]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if signed:
            hi = np.nanmax(np.abs(maps), axis=axes, keepdims=True)
            lo = -hi
        else:
            lo = np.nanmin(maps, axis=axes, keepdims=True)
            hi = np.nanmax(maps, axis=axes, keepdims=True)
    lo = np.broadcast_to(np.nan_to_num(lo, nan=0.0), maps.shape)[..., 0, 0]
    hi = np.broadcast_to(np.nan_to_num(hi, nan=1.0), maps.shape)[..., 0, 0]
    return lo.astype(np.float32), hi.astype(np.float32)


def background(cap: Capture, n: int, size: tuple[int, int], notes: list[str]) -> np.ndarray:
    """Decoded frame n at the display size; mid-grey when the clip is not in the file."""
    if cap.has_video and cap.clip_written:
        return draw.resize_rgb(cap.frame(n), size)
    note = ("the decoded video is not written yet (partial capture); drawing on grey."
            if cap.has_video else "this capture holds no decoded video; drawing on grey.")
    if note not in notes:
        notes.append(note)
    return np.full((*size, 3), 128, np.uint8)


def _layers_text(cap: Capture, p: Pick, o: Options) -> str:
    return f"layers {describe_values(cap.layers[p.layers])} ({o.reduce})"


def _steps_text(cap: Capture, p: Pick) -> str:
    return f"steps {describe_values(cap.steps[p.steps])} ({len(p.steps)} of {cap.steps_done} readable)"


def _token_names(cap: Capture, p: Pick) -> list[str]:
    return [cap.groups[t] for t in p.tokens]


# ---------------------------------------------------------------------- panels
def draw_panel(bg: np.ndarray, vs: list[np.ndarray], names: list[str], ranges: list[tuple[float, float]],
               o: Options, lut: np.ndarray, layout: str | None = None) -> np.ndarray:
    """One picture of normalised token maps vs [h, w] over a background frame.

    One token: colour-mapped overlay with a colour bar. Several: `overlay` draws each in
    its own hue (alpha proportional to its value) with a legend; `side` one panel each."""
    size = bg.shape[:2]
    layout = layout or o.layout
    if len(vs) == 1:
        img = draw.overlay(bg, draw.upsample(vs[0], size, o.upsample), lut, o.alpha)
        return draw.hstack([img, draw.colour_bar(size[0], *ranges[0], lut)])
    if layout == "overlay":
        colours = draw.TOKEN_COLOURS[: len(vs)]
        img = draw.overlay_tokens(bg, [draw.upsample(v, size, o.upsample) for v in vs], colours, o.alpha)
        return draw.vstack([img, draw.legend(names, colours, img.shape[1])])
    panels = []
    for v, name, rng in zip(vs, names, ranges):
        img = draw.overlay(bg, draw.upsample(v, size, o.upsample), lut, o.alpha)
        panel = draw.hstack([img, draw.colour_bar(size[0], *rng, lut)])
        panels.append(draw.vstack([draw.caption_bar([name], panel.shape[1]), panel]))
    return draw.hstack(panels, gap=4)


def _write_animation(path: str, frame_at, count: int, fps: float, audio=None, sample_rate: int = SAMPLE_RATE) -> None:
    from ovi_attn_render.common.progress import Progress

    with Progress("drawing", count, "frames", transient=True) as progress:
        def counted(i: int) -> np.ndarray:  # the writers call frame_at once per frame
            img = frame_at(i)
            progress.advance()
            return img

        if path.lower().endswith(".mp4"):
            draw.write_mp4(path, counted, count, fps, audio, sample_rate)
        else:
            draw.write_gif(path, counted, count, fps)


def _display_size(cap: Capture, o: Options) -> tuple[int, int]:
    return draw.display_size(*cap.frame_size, o.size)


# ---------------------------------------------------------------------- views
def view_steps(cap: Capture, o: Options, out: str, signed: bool = False) -> Drawn:
    """Default view: the token's map at one pixel frame, one animation frame per step."""
    p = pick(cap, o)
    names = _token_names(cap, p)
    if signed:
        if len(cap.branches) < 2:
            raise UserError(f"--view diff needs both branches, but this capture has only "
                            f"{', '.join(cap.branches)}; capture with `branch: both`.")
        cond, uncond = cap.branch_index("cond"), cap.branch_index("uncond")
        maps = [token_maps(cap, p, o, t, [p.latent], cond, check=True)[:, 0]
                - token_maps(cap, p, o, t, [p.latent], uncond, check=True)[:, 0]
                for t in p.tokens]  # each [S, h, w]
    else:
        maps = [token_maps(cap, p, o, t, [p.latent], check=True)[:, 0] for t in p.tokens]  # each [S, h, w]
    lims = [limits(m, o.norm, signed) for m in maps]  # each ([S], [S])
    lut = draw.colormap_lut(o.cmap or (draw.DIVERGING_CMAP if signed else draw.DEFAULT_CMAP))
    bg = background(cap, p.pixel_frame, _display_size(cap, o), p.notes)
    N = int(cap.attrs.get("num_steps", len(cap.steps)))
    what = "cond - uncond" if signed else cap.branches[p.branch]
    layout = "side" if signed else None
    tail = f"norm {o.norm}" + (" renorm" if o.renorm else "")

    def frame_at(i: int) -> np.ndarray:
        s = p.steps[i]
        # signed limits are symmetric, so 0 lands on the middle of the diverging map
        vs = [draw.normalise(m[i], lo[i], hi[i]) for m, (lo, hi) in zip(maps, lims)]
        panel = draw_panel(bg, vs, names, [(float(lo[i]), float(hi[i])) for lo, hi in lims], o, lut, layout)
        lines = [f"step {int(cap.steps[s])}/{N - 1}  t={int(cap.timesteps[s])}  sigma={float(cap.sigmas[s]):.3f}"
                 f"  [{i + 1}/{len(p.steps)}]",
                 f"{' + '.join(repr(n) for n in names)}  {what}  frame {p.pixel_frame} (latent {p.latent})",
                 f"{_layers_text(cap, p, o)}  {tail}"]
        return draw.vstack([draw.caption_bar(lines, panel.shape[1]), panel])

    fps = o.fps or 8.0
    _write_animation(out, frame_at, len(p.steps), fps)
    summary = (f"{', '.join(names)} ({what}): {_steps_text(cap, p)}, {_layers_text(cap, p, o)}, "
               f"pixel frame {p.pixel_frame} -> latent frame {p.latent}")
    return Drawn([out], summary, p.notes)


def view_diff(cap: Capture, o: Options, out: str) -> Drawn:
    return view_steps(cap, o, out, signed=True)


def view_frames(cap: Capture, o: Options, out: str) -> Drawn:
    """The map over the decoded video frames at one step (or averaged over a step range)."""
    p = pick(cap, o, default_steps=default_steps(cap, "frames"))
    names = _token_names(cap, p)
    frames = [int(n) for n in np.arange(cap.num_pixel_frames)[resolve(o.frames, np.arange(cap.num_pixel_frames),
                                                                      "frames", what="decoded frames")]]
    latents = cap.latent_frames_of(frames)
    maps = [_reduce(token_maps(cap, p, o, t, latents, check=True), 0, "mean") for t in p.tokens]  # each [F', h, w]
    lims = [limits(m[None], "global" if o.norm == "step" else o.norm) for m in maps]  # each ([1, F'], ...)
    lut = draw.colormap_lut(o.cmap or draw.DEFAULT_CMAP)
    size = _display_size(cap, o)
    branch = cap.branches[p.branch]
    step_text = f"step {int(cap.steps[p.steps[0]])}" if len(p.steps) == 1 else \
        f"steps {describe_values(cap.steps[p.steps])} (mean)"

    def frame_at(i: int) -> np.ndarray:
        n = frames[i]
        f = latents.index(cap.latent_frame(n))
        vs = [draw.normalise(m[f], lo[0, f], hi[0, f]) for m, (lo, hi) in zip(maps, lims)]
        panel = draw_panel(background(cap, n, size, p.notes), vs, names,
                           [(float(lo[0, f]), float(hi[0, f])) for lo, hi in lims], o, lut)
        lines = [f"frame {n}/{cap.num_pixel_frames - 1}  latent {latents[f]}  {n / cap.fps:.2f} s",
                 f"{' + '.join(repr(x) for x in names)}  {branch}  {step_text}",
                 f"{_layers_text(cap, p, o)}  norm {o.norm}" + (" renorm" if o.renorm else "")]
        return draw.vstack([draw.caption_bar(lines, panel.shape[1]), panel])

    fps = o.fps or cap.fps
    audio = None
    contiguous = frames == list(range(frames[0], frames[-1] + 1))
    if out.lower().endswith(".mp4") and cap.has_audio and cap.clip_written and contiguous:
        wave = cap.waveform()
        audio = wave[int(frames[0] / cap.fps * cap.sample_rate): int((frames[-1] + 1) / cap.fps * cap.sample_rate)]
    elif out.lower().endswith(".mp4"):
        p.notes.append("no audio track: " + ("the frames are not contiguous." if not contiguous
                                             else "the capture holds no decoded audio."))
    _write_animation(out, frame_at, len(frames), fps, audio, cap.sample_rate)
    summary = (f"{', '.join(names)} ({branch}): {step_text}, {_layers_text(cap, p, o)}, pixel frames "
               f"{describe_values(frames)} (latent frames {describe_values(latents)})")
    return Drawn([out], summary, p.notes)


def view_grid(cap: Capture, o: Options, out: str) -> Drawn:
    """Small multiples: one row per layer, one column per step, at one pixel frame."""
    p = pick(cap, o, default_steps=default_steps(cap, "grid"))
    if len(p.tokens) > 1:
        raise UserError("--view grid draws one token; give a single --token (or use --layout side with the "
                        "default view).")
    maps = token_maps(cap, p, o, p.tokens[0], [p.latent], keep_layers=True, check=True)[:, :, 0]  # [S, L, h, w]
    S, L = maps.shape[:2]
    lo, hi = limits(maps, o.norm)  # [S, L]
    lut = draw.colormap_lut(o.cmap or draw.DEFAULT_CMAP)
    H, W = cap.frame_size
    cell = int(np.clip(1600 // max(S, 1), 48, 160))
    th, tw = draw.display_size(H, W, cell)
    bg = background(cap, p.pixel_frame, (th, tw), p.notes)
    label_w, label_h, gap = 44, 20, 2
    img = np.zeros((label_h + L * (th + gap), label_w + S * (tw + gap), 3), np.uint8)
    for j, s in enumerate(p.steps):
        draw.put_text(img, f"s{int(cap.steps[s])}", label_w + j * (tw + gap) + 2, 15, draw.WHITE, 0.4)
    for i, layer in enumerate(p.layers):
        y = label_h + i * (th + gap)
        draw.put_text(img, f"L{int(cap.layers[layer])}", 4, y + th // 2 + 5, draw.WHITE, 0.4)
        for j in range(S):
            v = draw.normalise(maps[j, i], lo[j, i], hi[j, i])
            x = label_w + j * (tw + gap)
            img[y:y + th, x:x + tw] = draw.overlay(bg, draw.upsample(v, (th, tw), o.upsample), lut, o.alpha)
    if o.norm in ("global", "absolute"):
        bar = draw.colour_bar(min(img.shape[0], 400), float(lo.min()), float(hi.max()), lut)
    else:
        bar = draw.colour_bar(min(img.shape[0], 400), 0.0, 1.0, lut, label=f"per {'cell' if o.norm == 'frame' else 'step'}")
    name = cap.groups[p.tokens[0]]
    lines = [f"'{name}'  {cap.branches[p.branch]}  frame {p.pixel_frame} (latent {p.latent})  norm {o.norm}"
             + (" renorm" if o.renorm else ""),
             f"rows: layers {describe_values(cap.layers[p.layers])}; columns: steps "
             f"{describe_values(cap.steps[p.steps])}; heads {o.reduce}"]
    body = draw.hstack([img, bar], gap=6)
    draw.write_png(out, draw.vstack([draw.caption_bar(lines, max(body.shape[1], 560)), body]))
    summary = (f"{name}: {S} steps x {L} layers ({_steps_text(cap, p)}), pixel frame {p.pixel_frame} -> "
               f"latent frame {p.latent}")
    return Drawn([out], summary, p.notes)


def spatial_stats(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-map statistics of spatial maps [..., F', h, w] -> arrays [...].

    mass: mean probability per video token; entropy: of the map normalised to a
    distribution over (y, x), divided by log(h*w) (1 = uniform), mean over frames;
    centroid_y/x and spread (root mean squared distance to the centroid) in token cells."""
    h, w = maps.shape[-2:]
    m = np.clip(np.nan_to_num(maps, nan=0.0), 0, None).astype(np.float64)
    total = m.sum(axis=(-2, -1), keepdims=True)
    prob = m / np.maximum(total, 1e-30)
    ent = -(prob * np.log(np.maximum(prob, 1e-30))).sum(axis=(-2, -1)) / np.log(h * w)
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    cy = (prob * ys).sum(axis=(-2, -1))
    cx = (prob * xs).sum(axis=(-2, -1))
    var = (prob * ((ys - cy[..., None, None]) ** 2 + (xs - cx[..., None, None]) ** 2)).sum(axis=(-2, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mass = np.nanmean(maps, axis=(-3, -2, -1))
    return {"mass": mass, "entropy": ent.mean(-1), "centroid_y": cy.mean(-1), "centroid_x": cx.mean(-1),
            "spread": np.sqrt(var).mean(-1)}


def layer_colours(count: int):
    """(cmap, norm) with one flat viridis colour per drawn layer: layers are discrete, so the
    colour bar is a stack of `count` swatches, position i (0..count-1) -> swatch i."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(colormaps["viridis"](np.linspace(0, 1, max(count, 1))))
    return cmap, BoundaryNorm(np.arange(count + 1) - 0.5, max(count, 1))


def view_layers(cap: Capture, o: Options, out: str) -> Drawn:
    """Per-layer curves against step: mass, entropy, centroid, spread, <eos>/<pad> mass."""
    p = pick(cap, o)
    if len(p.tokens) > 1:
        raise UserError("--view layers plots one token; give a single --token.")
    if o.frames is not None:
        frames = [int(n) for n in resolve(o.frames, np.arange(cap.num_pixel_frames), "frames", what="decoded frames")]
        latents = cap.latent_frames_of(frames)
    else:
        latents = [p.latent]
    plain = Options(**{**o.__dict__, "renorm": False})
    per_layer = {cap.groups[t]: token_maps(cap, p, plain, t, latents, keep_layers=True)  # [S, L, F', h, w]
                 for t in [p.tokens[0], _special_group(cap, "eos"), _special_group(cap, "pad")]}
    name = cap.groups[p.tokens[0]]
    eos, pad = [cap.groups[_special_group(cap, k)] for k in ("eos", "pad")]
    stats = spatial_stats(per_layer[name])
    eos_mass = spatial_stats(per_layer[eos])["mass"]
    pad_mass = spatial_stats(per_layer[pad])["mass"]
    real = np.maximum(1.0 - eos_mass - pad_mass, 1e-6)
    panels = [("mass" + (" / real-token mass" if o.renorm else ""), stats["mass"] / real if o.renorm else stats["mass"]),
              ("entropy of spatial map (1 = uniform)", stats["entropy"]),
              ("centroid row y (token cells)", stats["centroid_y"]),
              ("centroid column x (token cells)", stats["centroid_x"]),
              ("spread (token cells)", stats["spread"]),
              (f"mass on {eos}", eos_mass), (f"mass on {pad}", pad_mass),
              ("real-token mass 1 - eos - pad", 1.0 - eos_mass - pad_mass)]

    # Figure without pyplot: skips pyplot's backend machinery (~0.3 s of imports).
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    x = cap.steps[p.steps].astype(np.float64)
    layer_values = cap.layers[p.layers]
    cmap, colour_norm = layer_colours(len(layer_values))
    fig = Figure(figsize=(16, 7))
    axes = fig.subplots(2, 4, sharex=True)
    fig.subplots_adjust(left=0.05, right=0.9, top=0.9, bottom=0.08, wspace=0.28, hspace=0.2)
    for ax, (title, values) in zip(axes.flat, panels):  # values [S, L]
        # one LineCollection per panel: 30 layers draw as one artist (fast to render)
        lines = LineCollection([np.column_stack([x, values[:, j]]) for j in range(values.shape[1])],
                               cmap=cmap, norm=colour_norm, linewidths=1)
        lines.set_array(np.arange(len(layer_values), dtype=np.float64))  # colour by position: one colour a layer
        ax.add_collection(lines)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
        ax.set_xlim(x[0], x[-1] if x[-1] > x[0] else x[0] + 1)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("sampler step")
    every = max(1, int(np.ceil(len(layer_values) / 16)))  # at most 16 tick labels
    ticks = np.arange(len(layer_values))[::every]
    bar = fig.colorbar(ScalarMappable(cmap=cmap, norm=colour_norm), cax=fig.add_axes((0.92, 0.1, 0.012, 0.78)),
                       label="layer (block index)", ticks=ticks)
    bar.set_ticklabels([str(int(layer_values[i])) for i in ticks])
    fig.suptitle(f"'{name}'  {cap.branches[p.branch]}  latent frames {describe_values(latents)}  heads {o.reduce}  "
                 f"{os.path.basename(cap.path)}")
    fig.savefig(out, dpi=100)
    summary = f"{name}: {_steps_text(cap, p)}, layers {describe_values(cap.layers[p.layers])}, latent frames " \
              f"{describe_values(latents)}"
    return Drawn([out], summary, p.notes)


def view_audio(cap: Capture, o: Options, out: str) -> Drawn:
    """Text-to-audio attention as strips over audio time under the waveform."""
    from ovi_attn_render.views import audio as audio_views

    p = pick(cap, o)
    if len(p.tokens) > 1:
        raise UserError("--view audio draws one token; give a single --token.")
    t = p.tokens[0]
    read = lambda g: cap.maps("text_audio", g, p.steps, p.layers, p.branch, p.heads)  # noqa: E731
    x = read(t)  # Maps (step, layer, head, audio_time)
    check_computed(cap, x.values, t, p.branch, tower="audio")
    if o.renorm:
        x = x.with_values(renormalised(x.values, read(_special_group(cap, "eos")).values,
                                       read(_special_group(cap, "pad")).values))
    x = x.reduce("head", o.reduce)  # (step, layer, audio_time)
    if o.by == "step":
        strips, labels = x.reduce("layer", o.reduce).order("step", "audio_time"), \
            [f"step {int(s)}" for s in cap.steps[p.steps]]
    else:
        strips, labels = x.reduce("step", "mean").order("layer", "audio_time"), \
            [f"layer {int(v)}" for v in cap.layers[p.layers]]
    wave = None
    if cap.has_audio and cap.clip_written:
        wave = cap.waveform()
    else:
        p.notes.append("no decoded audio in this file (partial capture or audio not stored); strips only.")
    name = cap.groups[t]
    title = f"'{name}' -> audio  {cap.branches[p.branch]}  {os.path.basename(cap.path)}"
    caption = f"{_steps_text(cap, p)}; {_layers_text(cap, p, o)}" + ("; renorm" if o.renorm else "")
    audio_views.render_audio_strip(wave, cap.sample_rate, strips, labels, samples_per_token=cap.samples_per_token,
                                   title=title, background=o.background, cmap=o.cmap or draw.DEFAULT_CMAP,
                                   norm={"step": "row", "frame": "row"}.get(o.norm, o.norm), caption=caption,
                                   out_path=out)
    return Drawn([out], f"{name} -> audio: one strip per {o.by}; {caption}", p.notes)


def view_sync(cap: Capture, o: Options, out: str) -> Drawn:
    """Audio/video alignment from the fusion maps: latent frame x audio time."""
    from ovi_attn_render.views import audio as audio_views

    p = pick(cap, o, need_tokens=False)

    def collapse(var: str, a: str, b: str) -> np.ndarray | None:  # (step, layer, head, a, b) -> [a, b]
        if var not in cap.f:
            return None
        x = cap.maps(var, None, p.steps, p.layers, p.branch, p.heads)
        return x.reduce("head", o.reduce).reduce("layer", o.reduce).reduce("step", "mean").order(a, b)

    va = collapse("video_audio", "frame", "audio_time")
    av = collapse("audio_video", "audio_time", "frame")
    title = f"audio/video sync  {cap.branches[p.branch]}  {_steps_text(cap, p)}  {os.path.basename(cap.path)}"
    audio_views.render_sync(va, av, fps=cap.fps, stride=cap.stride, sample_rate=cap.sample_rate,
                            samples_per_token=cap.samples_per_token, title=title, cmap=o.cmap or draw.DEFAULT_CMAP,
                            out_path=out)
    used = " and ".join(n for n, v in (("video_audio", va), ("audio_video", av)) if v is not None)
    return Drawn([out], f"{used}: {_steps_text(cap, p)}, {_layers_text(cap, p, o)}", p.notes)


def view_mask(cap: Capture, o: Options, out: str) -> Drawn:
    """The map binarised at --threshold (on the normalised map) or Otsu, over the steps."""
    from ovi_attn_render.views import masks

    if out.lower().endswith(".npz"):
        return _export_masks(cap, o, out)
    if o.frames is not None:
        raise UserError("--frames applies to the mask export only (-o masks.npz or --format npz); the mask "
                        "picture shows one --frame over the steps.")
    p = pick(cap, o)
    if len(p.tokens) > 1:
        raise UserError("--view mask draws one token; give a single --token.")
    threshold = parse_threshold(o.threshold)
    m = token_maps(cap, p, o, p.tokens[0], [p.latent], check=True)[:, 0]  # [S, h, w]
    lo, hi = limits(m, o.norm)
    normed = np.where(np.isnan(m), np.nan, draw.normalise(m, lo[:, None, None], hi[:, None, None]))
    binary, _ = masks.binarise_steps(normed, threshold)
    areas = masks.mask_area_over_steps(normed, threshold)
    bg = background(cap, p.pixel_frame, _display_size(cap, o), p.notes)
    name = cap.groups[p.tokens[0]]
    title = f"'{name}' {cap.branches[p.branch]} frame {p.pixel_frame} (latent {p.latent})"
    caption = (f"threshold {threshold:g} on the {o.norm}-normalised map" if threshold is not None
               else "Otsu threshold per step")
    paths = masks.render_mask(bg, binary, step_labels=[str(int(s)) for s in cap.steps[p.steps]], areas=areas,
                              title=title, caption=caption, out_path=out,
                              seconds_per_step=1.0 / o.fps if o.fps else 0.5)
    summary = (f"{name}: {caption}; {_steps_text(cap, p)}, {_layers_text(cap, p, o)}, pixel frame "
               f"{p.pixel_frame} -> latent frame {p.latent}; final area {100 * float(np.nan_to_num(areas[-1])):.1f}%")
    return Drawn([str(x) for x in paths], summary, p.notes)


def view_sheet(cap: Capture, o: Options, out: str) -> Drawn:
    """A contact sheet: every captured group's map side by side at one frame, averaged over
    the step range and layers, on one shared colour scale (--norm frame: each panel its own)."""
    p = pick(cap, replace(o, tokens=[]), need_tokens=False)
    groups = sheet_groups(cap, o)
    uncond = cap.branches[p.branch] == "uncond"
    if not groups:
        raise UserError("this capture holds no word groups to draw; name groups with --token.")
    maps = []  # each [h, w], or None when never computed (a word absent from the negative prompt)
    for g in groups:
        m = token_maps(cap, p, o, g, [p.latent], check=False)[:, 0]  # [S, h, w]
        maps.append(None if np.isnan(m).all() else _reduce(m, 0, "mean"))
    computed = [m for m in maps if m is not None]
    if not computed and uncond:
        raise UserError(f"none of the {len(groups)} groups is in the video negative prompt "
                        f"({str(cap.attrs.get('video_negative_prompt', ''))!r}), so there is no uncond map to draw; "
                        f"draw --branch cond, or capture with the words in video_negative_prompt.")
    if not computed:
        check_computed(cap, np.full(1, np.nan), groups[0], p.branch)  # raises with the reason
    stack = np.stack(computed)  # [G, h, w]
    lo, hi = limits(stack, "frame" if o.norm == "frame" else o.norm)  # [G] each (equal unless --norm frame)
    lut = draw.colormap_lut(o.cmap or draw.DEFAULT_CMAP)
    H, W = cap.frame_size
    cell = draw.display_size(H, W, max(16, o.size // 2))
    bg = background(cap, p.pixel_frame, cell, p.notes)
    panels, k = [], 0
    for g, m in zip(groups, maps):
        if m is None:
            img = bg // 2
            for i, line in enumerate(draw.wrap_text("not in the negative prompt" if uncond else "not computed",
                                                    cell[1] - 12, 0.4)):
                draw.put_text(img, line, 6, cell[0] // 2 + 16 * i, draw.WHITE, 0.4)
        else:
            img = draw.overlay(bg, draw.upsample(draw.normalise(m, lo[k], hi[k]), cell, o.upsample), lut, o.alpha)
            k += 1
        panels.append(draw.vstack([draw.caption_bar([repr(cap.groups[g])], cell[1]), img]))
    cols = int(min(len(panels), 8, max(1, round(np.sqrt(len(panels) * 1.5)))))
    rows = [draw.hstack(panels[i:i + cols], gap=4) for i in range(0, len(panels), cols)]
    gap = np.zeros((4, max(r.shape[1] for r in rows), 3), np.uint8)
    body = draw.vstack([x for r in rows for x in (r, gap)][:-1])
    if o.norm == "frame":
        bar = draw.colour_bar(min(body.shape[0], 400), 0.0, 1.0, lut, label="per panel")
    else:
        bar = draw.colour_bar(min(body.shape[0], 400), float(lo[0]), float(hi[0]), lut)
    body = draw.hstack([body, bar], gap=6)
    scale = {"global": "one shared scale (min..max of all panels)", "absolute": "one shared scale (probability 0..1)",
             "frame": "each panel scaled to its own min..max"}[o.norm]
    step_text = f"steps {describe_values(cap.steps[p.steps])} (mean)"
    lines = [f"{len(groups)} groups  {cap.branches[p.branch]}  frame {p.pixel_frame} (latent {p.latent})  "
             f"{os.path.basename(cap.path)}",
             f"{step_text}  {_layers_text(cap, p, o)}  {scale}" + ("  renorm" if o.renorm else "")]
    draw.write_png(out, draw.vstack([draw.caption_bar(lines, max(body.shape[1], 480)), body]))
    missing = [cap.groups[g] for g, m in zip(groups, maps) if m is None]
    if missing:
        p.notes.append(f"{', '.join(repr(n) for n in missing)}: no {cap.branches[p.branch]} map "
                       + ("(not in the negative prompt)" if uncond else "(never computed)") + "; drawn dimmed.")
    summary = (f"{len(groups)} groups at pixel frame {p.pixel_frame} -> latent frame {p.latent}, {step_text}, "
               f"{_layers_text(cap, p, o)}, {scale}")
    return Drawn([out], summary, p.notes)


def _export_masks(cap: Capture, o: Options, out: str) -> Drawn:
    """`--view mask` to data: out.npz (masks, thresholds, what was selected) and one PNG
    mask per pixel frame in the folder beside it (same name without .npz)."""
    from ovi_attn_render.views import masks

    if len(o.tokens) != 1:
        raise UserError("the mask export writes one token's masks; give a single --token.")
    unused = [flag for flag, given in (("--frame", o.frame is not None), ("--fps", o.fps is not None),
                                       ("--size", o.size != Options().size)) if given]
    if unused:
        raise UserError(f"{unused[0]} does not apply to the mask export, which writes every frame of --frames "
                        f"(default all) at the clip's size; drop it.")
    da = masks.mask(cap, o.tokens[0], o.threshold, steps=o.steps, layers=o.layers, frames=o.frames,
                    branch=o.branch, norm=o.norm, reduce=o.reduce, heads=o.heads, renorm=o.renorm)
    folder = masks.write_mask_export(da, out, cap.frame_size)
    a = da.attrs
    summary = (f"{a['token']}: {da.sizes['pixel_frame']} frame masks, threshold {a['threshold']} on the "
               f"{a['norm']}-normalised map, steps {a['steps']} (mean), layers {a['layers']}; PNGs in {folder}")
    return Drawn([out, folder], summary, [])


VIEW_FUNCTIONS = {
    "steps": view_steps, "frames": view_frames, "grid": view_grid, "layers": view_layers,
    "audio": view_audio, "sync": view_sync, "mask": view_mask, "diff": view_diff, "sheet": view_sheet,
    "query": lambda cap, o, out: _query_views().render_query(cap, o, out),
    "track": lambda cap, o, out: _query_views().render_track(cap, o, out),
}


def _query_views():
    from ovi_attn_render.views import query  # imports this module: loaded when first drawn

    return query


def render(cap: Capture, o: Options, out: str) -> Drawn:
    check_options(o)
    return VIEW_FUNCTIONS[o.view](cap, o, out)
