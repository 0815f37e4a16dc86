"""The Python API of the render side: a capture's maps as xarray DataArrays with named dims.

    import ovi_attn_render as oa
    cap = oa.open_capture("run.h5")
    cap.groups                                   # ['circle', 'red', ..., '<eos>', '<pad>']
    m = cap.text_video("red", frame=8)           # DataArray (step, layer, y, x)
    m.sel(step=29).mean("layer")                 # select by name and value, never by axis number
    oa.render(cap, "grid", token="red", frame=8, out="grid.png")   # the CLI's picture -> its path
    img = oa.render(cap, "steps", token="red")   # out=None: the picture itself, uint8 [N, H, W, 3]

Selections take the CLI's grammar and values (`steps="0:30:5"`, `layers="1-2"`, `steps=-1`
for the last readable step, an int, a list of values, or None for all); a value that was not
captured is a UserError, as on the command line. The arrays are read lazily: only the chunks
of the selection leave the file. Nothing here imports torch.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import xarray as xr

from ovi_attn_render.contract import reader
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import Geometry, latent_frame_of
from ovi_attn_render.contract.kinds import MAP_KINDS
from ovi_attn_render.contract.selection import resolve

REDUCTIONS = ("mean", "max", None)  # over heads; None keeps the `head` dimension


def _spec(selection) -> str | None:
    """None, an int, a list of values or a spec string -> the selection grammar's text."""
    if selection is None or isinstance(selection, str):
        return selection
    if isinstance(selection, (int, np.integer)):
        return str(int(selection))
    return ",".join(str(int(v)) if isinstance(v, (int, np.integer)) else str(v) for v in selection)  # [0, "10-12"]


class Capture:
    """An open capture file. Use `open_capture(path)`; close it, or use it in a `with` block.

    Attributes: path, status ('complete', 'running', ...), partial, groups (token-group names),
    tokens (the token table, one dict a text token), steps (readable sampler step numbers),
    layers (captured block indices), heads, branches, kinds, attrs (every file attribute),
    geometry (grid, decoded frames, latent frame of each decoded frame, audio time axis).
    """

    def __init__(self, file: reader.Capture):
        self.file = file  # the low-level reader (positions, numpy arrays)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        F, h, w = self.grid
        return (f"<ovi-attn Capture {os.path.basename(self.path)}: {self.status}, {len(self.steps)} readable steps, "
                f"{len(self.layers)} layers, grid {F}x{h}x{w}, groups {', '.join(self.groups)}>")

    # ----------------------------------------------------------------- what the file holds
    path = property(lambda self: self.file.path)
    status = property(lambda self: self.file.status)
    partial = property(lambda self: self.file.partial)
    groups = property(lambda self: list(self.file.groups))
    branches = property(lambda self: list(self.file.branches))
    kinds = property(lambda self: list(self.file.kinds))
    attrs = property(lambda self: dict(self.file.attrs))
    steps = property(lambda self: np.asarray(self.file.readable_steps))
    layers = property(lambda self: np.asarray(self.file.layers))
    heads = property(lambda self: np.asarray(self.file.heads))
    grid = property(lambda self: tuple(self.file.grid))  # (latent frames, rows, cols) of the video tokens
    num_pixel_frames = property(lambda self: self.file.num_pixel_frames)
    geometry = property(lambda self: self.file.geometry)  # Geometry: frames, grid, audio time axis

    @property
    def tokens(self) -> list[dict]:
        """The positive prompt's token table: index, id, piece, word, word_index, start, end, groups."""
        return self.file.token_table()

    def settings(self) -> dict:
        """The generation settings the capture ran with (the prompt file after overrides)."""
        return self.file.settings()

    def latent_frame_of(self, pixel_frame: int) -> int:
        """The latent frame holding decoded frame `pixel_frame` (checked against the clip)."""
        return self.file.latent_frame(pixel_frame)

    def pixel_frames_of(self, latent_frame: int) -> list[int]:
        """The decoded frames of latent frame `latent_frame` that the clip holds."""
        return self.file.pixel_frames_of(latent_frame)

    # ----------------------------------------------------------------- decoded clip
    def frame(self, pixel_frame: int) -> xr.DataArray:
        """Decoded frame as uint8 DataArray (y, x, rgb)."""
        img = self.file.frame(pixel_frame)
        return xr.DataArray(img, dims=("y", "x", "rgb"), name="video",
                            coords={"pixel_frame": int(pixel_frame), "rgb": ["r", "g", "b"]})

    def waveform(self) -> xr.DataArray:
        """Decoded audio as float32 DataArray (sample), with `time` in seconds."""
        wav = self.file.waveform()
        t = np.arange(len(wav)) / self.file.sample_rate
        return xr.DataArray(wav, dims=("sample",), coords={"time": ("sample", t)}, name="audio",
                            attrs={"sample_rate": self.file.sample_rate, "units": "1"})

    # ----------------------------------------------------------------- maps
    def text_video(self, token: str, frame: int | None = None, steps=None, layers=None, heads=None,
                   branch: str = "cond", reduce: str | None = "mean", renorm: bool = False) -> xr.DataArray:
        """Where the video looks at one token group: (step, layer[, head], frame, y, x).

        frame: a decoded (pixel) frame; its latent frame is selected and the `frame` dim
        dropped (kept as coordinates `frame` and `pixel_frame`). renorm: divide by the mass
        on real tokens, 1 - <eos> - <pad>, so groups compare across maps whose padding differs."""
        return self._maps("text_video", token, frame, steps, layers, heads, branch, reduce, renorm)

    def text_audio(self, token: str, steps=None, layers=None, heads=None, branch: str = "cond",
                   reduce: str | None = "mean", renorm: bool = False) -> xr.DataArray:
        """How much each audio token looks at one token group: (step, layer[, head], audio_time)."""
        return self._maps("text_audio", token, None, steps, layers, heads, branch, reduce, renorm)

    def video_audio(self, frame: int | None = None, steps=None, layers=None, heads=None, branch: str = "cond",
                    reduce: str | None = "mean") -> xr.DataArray:
        """Each latent frame's attention over the audio tokens: (step, layer[, head], frame, audio_time)."""
        return self._maps("video_audio", None, frame, steps, layers, heads, branch, reduce)

    def audio_video(self, frame: int | None = None, steps=None, layers=None, heads=None, branch: str = "cond",
                    reduce: str | None = "mean") -> xr.DataArray:
        """Each audio token's attention mass per latent frame: (step, layer[, head], audio_time, frame)."""
        return self._maps("audio_video", None, frame, steps, layers, heads, branch, reduce)

    def audio_video_spatial(self, frame: int | None = None, steps=None, layers=None, heads=None,
                            branch: str = "cond", reduce: str | None = "mean") -> xr.DataArray:
        """Where the audio looks in the video: (step, layer[, head], frame, y, x)."""
        return self._maps("audio_video_spatial", None, frame, steps, layers, heads, branch, reduce)

    def _maps(self, var: str, token: str | None, frame: int | None, steps, layers, heads, branch: str,
              reduce: str | None, renorm: bool = False, query: int | None = None) -> xr.DataArray:
        """One kind's maps: selections (values) -> positions -> the reader's DataArray, renormalised,
        in the API's dim order, reduced over heads; `frame` picks a decoded frame's latent frame;
        `query` the query point's position (video_self, audio_self)."""
        group = None if token is None else self.file.token_index(token)
        latents = None if frame is None else [self.latent_frame_of(frame)]
        pos = self._positions(steps, layers, heads, branch)
        f = self.file

        def read(g):
            return f.to_dataarray(f.maps(var, g, pos["step"], pos["layer"], pos["branch"], pos["head"], latents,
                                         query=query))

        x = read(None) if group is None else self._renormalised(read, group, renorm)
        da = self._array(x, pos, group, var, reduce)
        if frame is not None:
            da = da.isel(frame=0).assign_coords(pixel_frame=int(frame))
        return da

    @property
    def queries(self) -> list[dict]:
        """The query points: label, tower, pixel_frame, latent_frame, y, x (token cell; -1 while an
        adaptive query is not found), pixel_y, pixel_x, token and step (adaptive), audio_token, time."""
        from dataclasses import asdict

        return [asdict(q) for q in self.file.queries]

    def video_self(self, query: str, frame: int | None = None, steps=None, layers=None, heads=None,
                   branch: str = "cond", reduce: str | None = "mean") -> xr.DataArray:
        """Where one video query point looks in the whole clip (its exact self-attention row):
        (step, layer[, head], frame, y, x), probabilities over all video tokens summing to 1.

        The query's place is in the coordinates (query, query_frame, query_latent_frame, query_y,
        query_x, query_pixel_y, query_pixel_x). frame: a decoded frame, as for text_video."""
        qi = self.file.query_index(query, "video")
        q = self.file.tower_queries("video")[qi]
        da = self._query_coords(self._maps("video_self", None, frame, steps, layers, heads, branch, reduce, query=qi), q)
        return da.assign_coords(query_frame=q.pixel_frame, query_latent_frame=q.latent_frame, query_y=q.y,
                                query_x=q.x, query_pixel_y=q.pixel_y, query_pixel_x=q.pixel_x)

    def audio_self(self, query: str, steps=None, layers=None, heads=None, branch: str = "cond",
                   reduce: str | None = "mean") -> xr.DataArray:
        """Where one audio query looks in the audio: (step, layer[, head], audio_time)."""
        qi = self.file.query_index(query, "audio")
        q = self.file.tower_queries("audio")[qi]
        da = self._query_coords(self._maps("audio_self", None, None, steps, layers, heads, branch, reduce, query=qi), q)
        return da.assign_coords(query_audio_token=q.audio_token, query_time=q.time)

    @staticmethod
    def _query_coords(da: xr.DataArray, q) -> xr.DataArray:
        """The file's query coordinates as the API names them: `query` is the label."""
        names = [c for c in da.coords if c.startswith(("query_", "audio_query")) or c == "query"]
        return da.drop_vars(names).assign_coords(query=q.label)

    def track(self, query: str, method: str = "soft", steps=-1, layers=None, branch: str = "cond") -> xr.DataArray:
        """The query's point track: (frame, axis) positions in token cells (axis y, x), from its
        attention averaged over the selected steps (default: the last) and layers."""
        from ovi_attn_render.views.query import track

        m = self.video_self(query, steps=steps, layers=layers, branch=branch)
        return track(m.mean(["step", "layer"], keep_attrs=True), method)

    def mask(self, token: str, threshold=None, *, steps=None, layers=None, frames=None, heads=None,
             branch: str = "cond", norm: str = "global", reduce: str = "mean", renorm: bool = False) -> xr.DataArray:
        """The token's map binarised per decoded frame: bool (pixel_frame, y, x) on the token grid.

        Averaged over `steps` (default: the last readable step), reduced over layers and heads,
        scaled to [0, 1] by `norm`, then `threshold` (a value on that scale, or None / "otsu":
        Otsu's per latent frame); the value used per frame is the `threshold` coordinate and
        attrs record the selection. The same masks as `ovi-attn render --view mask -o x.npz`."""
        from ovi_attn_render.views.masks import mask

        return mask(self.file, token, threshold, steps=_spec(steps), layers=_spec(layers), frames=_spec(frames),
                    heads=_spec(heads), branch=branch, norm=norm, reduce=reduce, renorm=renorm)

    # ----------------------------------------------------------------- helpers
    def _positions(self, steps, layers, heads, branch) -> dict:
        """Selections (values, the CLI's grammar) -> positions into the file's coordinates."""
        f = self.file
        if f.steps_done == 0:
            raise UserError(f"{os.path.basename(f.path)} has no complete step yet (status {f.status}); "
                            f"wait for the capture to write its first step.")
        if heads is not None and f.heads_mode == "mean":
            raise UserError("this capture stored the mean over heads only; capture with `heads: all` to select heads.")
        return {
            "step": resolve(_spec(steps), f.readable_steps, "steps",
                            what=f"readable steps ({f.steps_done} of {len(f.steps)} written)"),
            "layer": resolve(_spec(layers), f.layers, "layers", what="captured layers"),
            "head": None if heads is None else resolve(_spec(heads), f.heads, "heads", what="captured heads"),
            "branch": f.branch_index(branch),
        }

    def _renormalised(self, read, group: int, renorm: bool) -> xr.DataArray:
        x = read(group)
        if not renorm:
            return x
        kinds = self.file.group_kinds
        for kind in ("eos", "pad"):
            if kind not in kinds:
                raise UserError(f"renorm needs the <{kind}> group, which this capture lacks; use renorm=False.")
        from .views.video import renormalised

        return renormalised(x, read(kinds.index("eos")), read(kinds.index("pad")))

    def _array(self, da: xr.DataArray, pos: dict, group: int | None, kind: str, reduce: str | None) -> xr.DataArray:
        """The reader's DataArray (dims and coordinates from the file) as the API hands it out:
        the audio start times as `time`, the file's labels dropped, reduced over heads."""
        f = self.file
        if "audio_time_seconds" in da.coords:
            da = da.rename({"audio_time_seconds": "time"})
        da = da.drop_vars([c for c in ("token_label", "token_kind", "branch_label") if c in da.coords])
        da = da.transpose("step", "layer", "head", ...)  # the file's order of the rest (frame, y, x...)
        attrs = {"kind": kind, "branch": f.branches[pos["branch"]], "units": "1",
                 "long_name": MAP_KINDS[kind].description if kind in MAP_KINDS else kind}
        if group is not None:
            attrs["token"] = f.groups[group]
        da = da.rename(kind)
        da.attrs = attrs
        if reduce not in REDUCTIONS:
            raise UserError(f"unknown reduce {reduce!r}; use 'mean' or 'max' over heads, or None to keep them.")
        if reduce is not None:
            heads = da["head"].values
            da = (da.max("head", skipna=True) if reduce == "max" else da.mean("head", skipna=True))
            over = "every head (the capture stored their mean)" if f.heads_mode == "mean" else \
                f"heads {', '.join(str(int(h)) for h in heads)}"
            da.attrs = {**attrs, "heads": f"{reduce} over {over}"}
        return da


def open_capture(path) -> Capture:
    """Open a capture file for reading; a running capture can be followed (reopen to see new steps).

    A missing, foreign or damaged file raises a UserError whose message names the problem."""
    return Capture(reader.open_capture(path))


def render(cap: Capture | str | os.PathLike, view: str = "steps", out=None, *, force: bool = False,
           format: str | None = None, **options):
    """Draw the picture `ovi-attn render` draws, with the same option names (token=, frame=, steps=...).

    out: a file (its suffix picks the format), a folder (the CLI's file name), or None to get
    the picture back as uint8 [H, W, 3] (PNG views) or [N, H, W, 3] (animations) without
    keeping a file. Returns the path written when out is given."""
    from ovi_attn_render.views import video as views
    from ovi_attn_render.commands import output_path, render_file

    names = {f.name for f in fields(views.Options)} - {"view", "tokens", "queries"}
    unknown = sorted(set(options) - names - {"token", "tokens", "query", "queries"})
    if unknown:
        raise UserError(f"render() has no option {unknown[0]!r}; options: token, query, {', '.join(sorted(names))}.")
    query = options.pop("query", None)
    queries = options.pop("queries", None) or ([] if query is None else [query] if isinstance(query, str) else query)
    options["queries"] = list(queries)
    token = options.pop("token", None)
    tokens = options.pop("tokens", None) or ([] if token is None else [token] if isinstance(token, str) else token)
    for key in ("steps", "layers", "heads", "frames"):
        options[key] = _spec(options.get(key))
    o = views.Options(view=view, tokens=list(tokens), **options)
    views.check_options(o)
    allowed = views.VIEW_FORMATS[o.view]
    owned = not isinstance(cap, Capture)
    cap = open_capture(cap) if owned else cap
    try:
        if out is not None:
            target = output_path([cap.file], o, Path(out), format, force, allowed)
            drawn = render_file(cap.file, o, target)
            return drawn.paths[0] if len(drawn.paths) == 1 else drawn.paths
        raster = [x for x in allowed if x in ("gif", "png")]
        if not raster:
            raise UserError(f"--view {o.view} draws no raster picture; give out= to write its file.")
        with tempfile.TemporaryDirectory(prefix="ovi-attn-render-") as tmp:
            path = os.path.join(tmp, f"picture.{format or raster[0]}")
            from ovi_attn_render.contract.reader import reading

            with reading(cap.path):
                views.render(cap.file, o, path)
            return _read_picture(path)
    finally:
        if owned:
            cap.close()


def _read_picture(path: str) -> np.ndarray:
    import imageio.v3 as iio

    if path.endswith(".gif"):
        return np.asarray(iio.imread(path, index=None))[..., :3]  # [N, H, W, 3]
    return np.asarray(iio.imread(path))[..., :3]  # [H, W, 3]


__all__ = ["Capture", "Geometry", "open_capture", "render", "REDUCTIONS", "latent_frame_of"]
