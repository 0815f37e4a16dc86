"""What the page draws, computed with the render package's own code so that the viewer and
`ovi-attn render` agree number for number.

The unit of reading is a token's *layer stack*: its maps at one latent frame for every
readable step and every captured layer, [S, L, h, w] float32, reduced over heads
(views.token_maps with keep_layers). One stack is S * L chunks of the file (50 x 30 maps
of 1.8 KB at real size); moving the step or layer slider, or changing the layer range or
the norm, then costs no read at all, only a reduction over the cached stack. Stacks live
in a small LRU bounded in bytes, so the server's memory stays flat however long it runs.
"""

from __future__ import annotations

import io
import os
import shlex
import threading
import wave
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from ovi_attn_render.views import draw

from ovi_attn_render.views import query as Q
from ovi_attn_render.views import video as views
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.selection import resolve
from ovi_attn_render.viewer.sources import Source
from ovi_attn_render.viewer.state import ViewState

DISPLAY_SIDE = 512  # the CLI's default --size: frames are served at the size render draws them
CACHE_BYTES = 128 * 2**20  # ~24 layer stacks at real size (5.4 MB each)


class ArrayCache:
    """Least-recently-used arrays under a byte budget (thread-safe)."""

    def __init__(self, budget: int = CACHE_BYTES):
        self.budget = budget
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, key, make):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        size = sum(a.nbytes for a in value) if isinstance(value, tuple) else value.nbytes
        with self.lock:
            if key not in self.items:
                self.items[key] = value
                self.bytes += size
            while self.bytes > self.budget and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.bytes -= sum(a.nbytes for a in old) if isinstance(old, tuple) else old.nbytes
        return value


CACHE = ArrayCache()


# ---------------------------------------------------------------------- selections
def options(s: ViewState, view: str = "steps") -> views.Options:
    """The render Options of a state (the `steps` view, or `diff` for the difference branch)."""
    diff = s.branch == "diff"
    tokens = list(s.tokens[-1:] if diff else s.tokens)  # the page draws one token's difference
    return views.Options(view="diff" if diff else view, tokens=tokens, frame=s.frame, layers=s.layers,
                         heads=s.heads, branch="cond" if diff else s.branch, reduce=s.reduce, norm=s.norm,
                         renorm=s.renorm, cmap=None if s.cmap == "inferno" else s.cmap, alpha=s.alpha)


def pixel_frame(src: Source, s: ViewState) -> int:
    cap = src.cap
    return cap.default_frame if s.frame is None else cap.check_frame(s.frame)


def step_position(src: Source, s: ViewState) -> int:
    """Position of the state's step among the readable steps (default: the last one)."""
    cap = src.cap
    if cap.steps_done == 0:
        raise UserError(f"{src.name} has no complete step yet (status {cap.status}); wait for the first step.")
    if s.step is None:
        return cap.steps_done - 1
    hits = np.flatnonzero(cap.readable_steps == s.step)
    if not len(hits):
        raise UserError(f"step {s.step} is not readable; readable steps are "
                        f"{int(cap.readable_steps[0])}-{int(cap.readable_steps[-1])}.")
    return int(hits[0])


def layer_positions(src: Source, s: ViewState) -> list[int]:
    return resolve(s.layers, src.cap.layers, "layers", what="captured layers")


def _head_positions(src: Source, s: ViewState) -> list[int] | None:
    cap = src.cap
    if s.heads is None:
        return None
    if cap.heads_mode == "mean":
        raise UserError("this capture stored the mean over heads only; capture with `heads: all` to select heads.")
    return resolve(s.heads, cap.heads, "heads", what="captured heads")


def _group(src: Source, label: str) -> int:
    return src.cap.token_index(label)


# ---------------------------------------------------------------------- token maps
def layer_stack(src: Source, s: ViewState, token: str, branch: str) -> np.ndarray:
    """[S, L, h, w] float32: one token at the state's latent frame, every readable step and
    captured layer, reduced over the selected heads (and renormalised when asked)."""
    cap = src.cap
    n = pixel_frame(src, s)
    latent = cap.latent_frame(n)
    key = ("stack", src.index, src.generation, cap.steps_done, token, latent, branch, s.heads, s.reduce, s.renorm)

    def make() -> np.ndarray:
        with src.lock:
            o = views.Options(tokens=[token], frame=n, heads=s.heads, branch=branch, reduce=s.reduce, renorm=s.renorm)
            p = views.pick(cap, o)
            x = views.token_maps(cap, p, o, p.tokens[0], [p.latent], keep_layers=True)  # [S, L, 1, h, w]
            return np.ascontiguousarray(x[:, :, 0], np.float32)

    return CACHE.get(key, make)


def token_steps(src: Source, s: ViewState, token: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(maps [S, h, w], lo [S], hi [S], signed): the steps view's maps of one token at the
    state's frame over every readable step, reduced over the selected layers, and the
    colour range of each step under the state's norm (views.limits, as render draws)."""
    layers = layer_positions(src, s)
    _head_positions(src, s)  # a heads selection on a head-mean capture: the CLI's sentence

    def reduced(branch: str) -> np.ndarray:
        return views._reduce(layer_stack(src, s, token, branch)[:, layers], 1, s.reduce)  # [S, h, w]

    if s.branch == "diff":
        if len(src.cap.branches) < 2:
            raise UserError(f"the difference needs both branches, but {src.name} has only "
                            f"{', '.join(src.cap.branches)}; capture with `branch: both`.")
        maps = reduced("cond") - reduced("uncond")
    else:
        src.cap.branch_index(s.branch)
        maps = reduced(s.branch)
    signed = s.branch == "diff"
    lo, hi = views.limits(maps, s.norm, signed)
    return maps, lo, hi, signed


def token_map(src: Source, s: ViewState, token: str) -> tuple[np.ndarray, float, float, bool]:
    """(map [h, w], lo, hi, signed) at the state's step: one frame of the CLI's steps view."""
    i = step_position(src, s)
    maps, lo, hi, signed = token_steps(src, s, token)
    return maps[i], float(lo[i]), float(hi[i]), signed


def cmap_name(s: ViewState) -> str:
    """The colour map drawn: the chosen one, or the diverging map for the difference by default."""
    return draw.DIVERGING_CMAP if s.branch == "diff" and s.cmap == "inferno" else s.cmap


def grid_png(src: Source, s: ViewState, token: str) -> tuple[bytes, int, int, int, int]:
    """The layers x steps mini-grid as a PNG: one row per captured layer, one column per
    readable step, each cell the token's h x w map (1-pixel gaps), coloured under the
    state's norm as `render --view grid` scales it. Returns (png, S, L, h, w)."""
    branch = "cond" if s.branch == "diff" else s.branch
    stack = layer_stack(src, s, token, branch)  # [S, L, h, w]
    if s.branch == "diff" and len(src.cap.branches) > 1:
        stack = stack - layer_stack(src, s, token, "uncond")
    S, L, h, w = stack.shape
    lo, hi = views.limits(stack, s.norm, s.branch == "diff")  # [S, L]
    lut = draw.colormap_lut(cmap_name(s))
    rgb = draw.apply_lut(draw.normalise(stack, lo[..., None, None], hi[..., None, None]), lut)  # [S, L, h, w, 3]
    cells = np.full((L, h + 1, S, w + 1, 3), 40, np.uint8)  # one grey gap row/column after each cell
    cells[:, :h, :, :w] = rgb.transpose(1, 2, 0, 3, 4)
    img = cells.reshape(L * (h + 1), S * (w + 1), 3)[:-1, :-1]
    return encode_png(np.ascontiguousarray(img)), S, L, h, w


# ---------------------------------------------------------------------- query points
def video_queries(src: Source) -> list[dict]:
    """The file's video query points, for the page's selector (where each one is)."""
    return [{"label": q.label, "pixel_frame": q.pixel_frame, "latent_frame": q.latent_frame, "y": q.y, "x": q.x,
             "token": q.token or "", "step": -1 if q.step is None else q.step}
            for q in src.cap.tower_queries("video")]


def audio_queries(src: Source) -> list[dict]:
    """The file's audio query points, for the page's selector (which audio token, when)."""
    return [{"label": q.label, "audio_token": q.audio_token,
             "time": round(float(q.time), 6) if np.isfinite(q.time) else None}  # JSON has no NaN
            for q in src.cap.tower_queries("audio")]


def _query_label(src: Source, s: ViewState, tower: str) -> str:
    """The state's query label, checked against the file's queries of one tower."""
    if not s.query:
        raise UserError(f"parameter query is missing; give a captured {tower} query label.")
    if s.branch == "diff":
        raise UserError("a query point's map is drawn for one branch; pick cond or uncond.")
    cap = src.cap
    return cap.tower_queries(tower)[cap.query_index(s.query, tower)].label


def query_options(src: Source, s: ViewState, tower: str) -> views.Options:
    """The `render --view query --steps <step>` Options of the state's query point: what the
    query panel shows (a video query over the clip, an audio query over audio time)."""
    label = _query_label(src, s, tower)
    step = int(src.cap.steps[step_position(src, s)])
    return views.Options(view="query", queries=[label], steps=str(step), layers=s.layers, heads=s.heads,
                         branch=s.branch, reduce=s.reduce, cmap=None if s.cmap == "inferno" else s.cmap,
                         alpha=s.alpha)


def query_tower(src: Source, label: str) -> str:
    """Which tower a label is a query point of ("video" when it is neither: its sentence says so)."""
    return "audio" if label in [q.label for q in src.cap.tower_queries("audio")] else "video"


def query_clip(src: Source, s: ViewState):
    """The state's video query at the state's step over the whole clip, as `render --view
    query --steps <step>` draws it: DataArray (frame, y, x), heads reduced as s.reduce says,
    the selected layers averaged (views.query.query_maps, the one read path)."""
    cap = src.cap
    o = query_options(src, s, "video")
    label, step = o.queries[0], int(o.steps)
    key = ("query", src.index, src.generation, cap.steps_done, label, step, s.layers, s.heads, s.branch, s.reduce)

    def make():
        with src.lock:
            (m,), _ = Q.query_maps(cap, o, [label])  # (layer, frame, y, x), the one step
        return m.mean("layer", keep_attrs=True).astype(np.float32)  # the cache counts its nbytes

    return CACHE.get(key, make)


def query_map(src: Source, s: ViewState) -> tuple[np.ndarray, dict]:
    """(map [h, w] at the state's latent frame, what the page needs to draw it: the colour
    range 0..top of the whole clip at this step, as the query GIF scales it, and the point)."""
    m = query_clip(src, s)
    latent = src.cap.latent_frame(pixel_frame(src, s))
    info = {"lo": 0.0, "hi": f"{Q.colour_top(m):.9g}", "query_y": int(m.coords["query_y"]),
            "query_x": int(m.coords["query_x"]), "query_frame": int(m.coords["query_frame"]),
            "query_latent_frame": int(m.coords["query_latent_frame"]), "latent": latent,
            "step": int(src.cap.steps[step_position(src, s)])}
    return np.ascontiguousarray(m.isel(frame=latent).values, np.float32), info


def query_track(src: Source, s: ViewState) -> np.ndarray:
    """[F, 2] float32: the query's track (y, x in token cells, NaN where never computed) per
    latent frame, at the state's step and layers (views.query.track, as --view track finds it)."""
    return np.ascontiguousarray(Q.track(query_clip(src, s), s.track).transpose("frame", "axis").values, np.float32)


def audio_query_map(src: Source, s: ViewState) -> tuple[np.ndarray, dict]:
    """([La] float32, what the page needs to draw it): the state's audio query's attention over
    audio time at the state's step, heads reduced as s.reduce says, the selected layers
    averaged (views.query.audio_query_map, the one read path --view query draws), its colour
    range 0..top and where the query itself is (its audio token and time)."""
    cap = src.cap
    o = query_options(src, s, "audio")
    label, step = o.queries[0], int(o.steps)
    key = ("audio_query", src.index, src.generation, cap.steps_done, label, step, s.layers, s.heads, s.branch,
           s.reduce)

    def make():
        with src.lock:
            m, _ = Q.audio_query_map(cap, o, label)  # (layer, audio_time), the one step
        return m.mean("layer", keep_attrs=True).astype(np.float32)

    m = CACHE.get(key, make)
    info = {"lo": 0.0, "hi": f"{Q.colour_top(m):.9g}", "query_audio_token": int(m.coords["query_audio_token"]),
            "query_time": f"{float(m.coords['query_time']):.6g}", "step": step}
    return np.ascontiguousarray(m.values, np.float32), info


# ---------------------------------------------------------------------- a clicked patch
def patch(src: Source, s: ViewState) -> dict:
    """Mass on every captured group at one video token (latent frame of the state's frame,
    row y, column x): at the state's step and layers, over the steps, and over the layers."""
    cap = src.cap
    F, h, w = cap.grid
    if s.y is None or s.x is None or not (0 <= s.y < h and 0 <= s.x < w):
        raise UserError(f"give the clicked token cell as y in 0..{h - 1} and x in 0..{w - 1}.")
    if "text_video" not in cap.f:
        raise UserError(f"{src.name} has no text_video maps; capture with kinds including text_video.")
    n = pixel_frame(src, s)
    latent = cap.latent_frame(n)
    i = step_position(src, s)
    layers = layer_positions(src, s)
    heads = _head_positions(src, s)
    branch = cap.branch_index("cond" if s.branch == "diff" else s.branch)
    key = ("patch", src.index, src.generation, cap.steps_done, latent, s.y, s.x, branch, s.heads, s.reduce)

    def make() -> np.ndarray:  # [G, S, L] reduced over heads
        out = np.empty((len(cap.groups), cap.steps_done, len(cap.layers)), np.float32)
        picks = {"branch": [branch], "frame": [latent], "step": list(range(cap.steps_done)),
                 "layer": list(range(len(cap.layers))),
                 "head": list(range(len(cap.heads))) if heads is None else heads, "y": [s.y], "x": [s.x]}
        # one group at a time: a single selection over every group's S x L chunks makes HDF5
        # hold per-chunk bookkeeping for all of them at once (+140 MB at real size)
        for g in range(len(cap.groups)):
            with src.lock:
                x = src.cap._read("text_video", picks | {"token": [g]},
                                  ("token", "step", "layer", "head", "branch", "frame", "y", "x"))
            out[g] = views._reduce(x[0, ..., 0, 0, 0, 0], 2, s.reduce)
        return out

    mass = CACHE.get(key, make)  # [G, S, L]
    over_steps = views._reduce(mass[:, :, layers], 2, s.reduce)  # [G, S]
    over_layers = mass[:, i, :]  # [G, L]
    clean = lambda a: np.nan_to_num(a, nan=0.0).round(6).tolist()  # noqa: E731
    return {"groups": cap.groups, "kinds": cap.group_kinds, "latent": latent, "y": s.y, "x": s.x,
            "step": int(cap.steps[i]), "bars": clean(over_steps[:, i]), "steps": cap.readable_steps.tolist(),
            "over_steps": clean(over_steps), "layers": cap.layers.tolist(), "over_layers": clean(over_layers),
            "selected_layers": [int(cap.layers[j]) for j in layers]}


# ---------------------------------------------------------------------- audio and sync
def audio_strips(src: Source, s: ViewState, token: str) -> np.ndarray:
    """[S, La] float32: the token's text-to-audio mass per audio token, every readable step,
    reduced over the selected heads and layers (as `render --view audio --by step`)."""
    cap = src.cap
    layers = layer_positions(src, s)
    heads = _head_positions(src, s)
    branch = cap.branch_index("cond" if s.branch == "diff" else s.branch)
    key = ("audio", src.index, src.generation, cap.steps_done, token, tuple(layers), s.heads, branch, s.reduce,
           s.renorm)

    def make() -> np.ndarray:
        with src.lock:
            if "text_audio" not in cap.f:
                raise UserError(f"{src.name} has no text_audio maps; capture with kinds including text_audio.")
            t = _group(src, token)
            read = lambda g: cap.maps("text_audio", g, None, layers, branch, heads)  # noqa: E731
            x = read(t)  # Maps (step, layer, head, audio_time)
            if s.renorm:
                x = x.with_values(views.renormalised(x.values, read(views._special_group(cap, "eos")).values,
                                                     read(views._special_group(cap, "pad")).values))
            x = x.reduce("head", s.reduce).reduce("layer", s.reduce).order("step", "audio_time")
        return np.ascontiguousarray(np.nan_to_num(x, nan=0.0), np.float32)

    return CACHE.get(key, make)


def sync_map(src: Source, s: ViewState) -> np.ndarray:
    """[F, La] float32: each latent frame's attention over audio time at the state's step
    (video_audio, or audio_video transposed), reduced over heads and layers."""
    cap = src.cap
    i = step_position(src, s)
    layers = layer_positions(src, s)
    heads = _head_positions(src, s)
    branch = cap.branch_index("cond" if s.branch == "diff" else s.branch)
    with src.lock:
        var = next((v for v in ("video_audio", "audio_video") if v in cap.f), None)  # either holds the sync
        if var is None:
            raise UserError(f"{src.name} has no fusion (sync) maps; capture with kinds including video_audio.")
        x = cap.maps(var, None, [i], layers, branch, heads)  # Maps (step, layer, head, frame / audio_time)
    x = x.reduce("head", s.reduce).reduce("layer", s.reduce).reduce("step", "mean")  # one step
    return np.ascontiguousarray(np.nan_to_num(x.order("frame", "audio_time"), nan=0.0), np.float32)


def waveform_envelope(src: Source, columns: int) -> np.ndarray:
    """[2, columns] float32: min and max of the decoded waveform per column (zeros before
    the clip is written)."""
    cap = src.cap
    key = ("wave", src.index, src.generation, columns)

    def make() -> np.ndarray:
        if not (cap.has_audio and cap.clip_written):
            return np.zeros((2, columns), np.float32)
        with src.lock:
            wav = cap.waveform()
        edges = np.linspace(0, len(wav), columns + 1).astype(int)
        out = np.zeros((2, columns), np.float32)
        for c in range(columns):
            seg = wav[edges[c]:max(edges[c + 1], edges[c] + 1)]
            if len(seg):
                out[0, c], out[1, c] = seg.min(), seg.max()
        return out

    return CACHE.get(key, make)


def spectrogram_db(src: Source) -> np.ndarray:
    """[64, T] float32: the decoded audio's mel spectrogram in dB below its loudest cell (the
    audio view's --background spectrogram), zeros before the clip is written."""
    from ovi_attn_render.views.audio import spectrogram

    cap = src.cap
    key = ("spectrogram", src.index, src.generation)

    def make() -> np.ndarray:
        if not (cap.has_audio and cap.clip_written):
            return np.zeros((64, 1), np.float32)
        with src.lock:
            wav = cap.waveform()
        db, _, _ = spectrogram(wav, cap.sample_rate, n_mels=64)
        return np.ascontiguousarray(db[::-1], np.float32)  # highest frequency first (top row)

    return CACHE.get(key, make)


def audio_wav(src: Source) -> bytes:
    """The decoded audio as a 16-bit mono WAV, for the page's <audio> element."""
    cap = src.cap
    if not (cap.has_audio and cap.clip_written):
        raise UserError(f"{src.name} holds no decoded audio yet (it is written when the capture finishes).")
    with src.lock:
        wav = cap.waveform()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(cap.sample_rate)
        w.writeframes((np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------------- pictures
def encode_png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def frame_png(src: Source, s: ViewState) -> bytes:
    """Decoded pixel frame at the CLI's display size (grey before the clip is written)."""
    cap = src.cap
    n = pixel_frame(src, s)
    key = ("frame", src.index, src.generation, n)

    def make() -> np.ndarray:
        with src.lock:
            size = draw.display_size(*cap.frame_size, DISPLAY_SIDE)
            return np.frombuffer(encode_png(views.background(cap, n, size, [])), np.uint8)

    return CACHE.get(key, make).tobytes()


def render_command(sources: list[Source], s: ViewState, out: str | None = None) -> list[str]:
    """The `ovi-attn render` (one file) or `compare` (two) command line of a state."""
    o = options(s)
    cmd = ["ovi-attn", "render" if len(sources) == 1 else "compare", *[src.given for src in sources]]
    if o.view != "steps":
        cmd += ["--view", o.view]
    for t in o.tokens:
        cmd += ["--token", t]
    cmd += ["--frame", str(pixel_frame(sources[0], s))]
    return cmd + _selection_flags(o, out)


def _selection_flags(o: views.Options, out: str | None) -> list[str]:
    """The flags of the options that differ from render's defaults, then -o."""
    cmd: list[str] = []
    for flag, value, default in (("--steps", o.steps, None), ("--layers", o.layers, None), ("--heads", o.heads, None),
                                 ("--branch", o.branch, "cond"), ("--reduce", o.reduce, "mean"),
                                 ("--norm", o.norm, "global"), ("--cmap", o.cmap, None)):
        if value is not None and value != default:
            cmd += [flag, str(value)]
    if o.renorm:
        cmd.append("--renorm")
    if o.alpha != 0.5:
        cmd += ["--alpha", f"{o.alpha:g}"]
    if out:
        cmd += ["-o", out]
    return cmd


def query_command(src: Source, o: views.Options, out: str | None = None) -> list[str]:
    """The `ovi-attn render --view query` command line of the query panel (one file)."""
    return ["ovi-attn", "render", src.given, "--view", "query", "--query", o.queries[0], *_selection_flags(o, out)]


def _free_path(folder: str, stem: str, ext: str) -> str:
    """folder/stem.ext, or stem-2, stem-3, ... when that exists: a save never overwrites."""
    target = os.path.join(folder, f"{stem}.{ext}")
    k = 2
    while os.path.exists(target):
        target = os.path.join(folder, f"{stem}-{k}.{ext}")
        k += 1
    return target


def save_view(sources: list[Source], s: ViewState, folder: str) -> dict:
    """Write the CLI's pictures of this state into `folder`, never over a file: the steps view
    over every readable step (whose frame for the current step is what the page shows) when
    tokens are picked, and the query panel's `--view query` picture when a query point is
    chosen (a video query's GIF over the clip, an audio query's strips as PNG)."""
    from ovi_attn_render.commands import output_name, run_render

    if not s.tokens and not s.query:
        raise UserError("pick at least one token or a query point before saving the view.")
    saved: dict = {}
    if s.tokens:
        o = options(s)
        with sources[0].lock:  # the CLI's own name for this picture (canonical selection)
            stem = output_name([Path(src.path).stem for src in sources], views.canonical(sources[0].cap, o, "gif"))
        target = _free_path(folder, stem, "gif")
        paths = run_render([Path(src.path) for src in sources], o, Path(target), None, False)
        saved.update(path=paths[0], command=" ".join(shlex.quote(c) for c in render_command(sources, s, target)))
    if s.query:
        src = sources[s.file if s.query_file is None else s.query_file]
        with src.lock:
            tower = query_tower(src, s.query)
            o = query_options(src, s, tower)
            ext = "png" if tower == "audio" else "gif"
            stem = output_name([Path(src.path).stem], views.canonical(src.cap, o, ext))
        target = _free_path(folder, stem, ext)
        paths = run_render([Path(src.path)], o, Path(target), None, False)
        saved.update(query_path=paths[0], query_command=" ".join(shlex.quote(c) for c in query_command(src, o, target)))
    return saved
