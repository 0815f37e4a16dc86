"""Read a capture file (format versions 1 and 2, see docs/FORMAT.md) without torch.

Maps come back as xarray DataArrays in named dimensions: their dims are the names of the
dimension scales the file attaches to the variable (netCDF-4's dims), their coordinates
the file's coordinate variables (step values, layer indices, heads, frames...) and the
auxiliary coordinates the variable's CF `coordinates` attribute lists (token_label,
timestep, sigma, audio_time_seconds...), so callers select by name, never by axis number.

Everything here reads lazily: opening a file touches only its attributes and small
coordinate arrays; map reads are h5py hyperslabs over exactly the chunks asked for (one
chunk is one 2-D map), never a whole variable. Steps past `steps_done` are never read.
Maps are decoded from their CF attributes (format 2 packs them into int16); a chunk whose
Fletcher-32 checksum fails is named in a UserError, never returned.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Sequence

import h5py
import numpy as np

from contextlib import contextmanager
from typing import TYPE_CHECKING

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.format import BRANCHES, FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, decode
from ovi_attn_render.contract.geometry import (FPS, PIXEL_FRAME_STRIDE, SAMPLE_RATE, SAMPLES_PER_TOKEN, Geometry,
                                               latent_frame_of, pixel_frame_count, token_cell_pixels)
from ovi_attn_render.contract.kinds import MAP_KINDS, capture_kind_of
from ovi_attn_render.contract.liveness import describe_writer
from ovi_attn_render.contract.queries import PlacedQuery
from ovi_attn_render.contract.selection import describe_values
from ovi_attn_render.contract.token_groups import TEXT_LEN, Token, TokenGroup, TokenTable


if TYPE_CHECKING:
    import xarray as xr  # imported where maps are read: `info` and the viewer's start need not pay for it


class Damaged(ValueError):
    """Part of the file is not what the format says (a wrong type, shape or value)."""


def _scalar(attrs: dict, name: str, kind=int, default=None, minimum=None):
    """Attribute `name` as one int or float, or Damaged naming what is wrong with it."""
    if name not in attrs:
        if default is None:
            raise Damaged(f"attribute {name} is missing")
        return default
    v = np.asarray(attrs[name])
    if v.size != 1 or v.dtype.kind not in ("i", "u", "f", "b"):
        raise Damaged(f"attribute {name} should be one number, not {attrs[name]!r}"[:200])
    x = v.reshape(()).item()
    if kind is int and float(x) != int(x):
        raise Damaged(f"attribute {name} should be a whole number, not {x!r}")
    x = kind(x)
    if minimum is not None and not x >= minimum:
        raise Damaged(f"attribute {name} is {x}, below its minimum {minimum}")
    return x


def _grid(attrs: dict) -> tuple[int, int, int]:
    v = np.asarray(attrs.get("video_grid", []))
    if v.shape != (3,) or v.dtype.kind not in ("i", "u") or (v < 1).any():
        raise Damaged(f"attribute video_grid should be 3 positive whole numbers [F, h, w], not {v.tolist()!r}"[:200])
    return tuple(int(x) for x in v)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def read_strings(ds: h5py.Dataset) -> list[str]:
    """A string variable: a CF character array [N, strlen] of UTF-8 (format 2) or
    variable-length strings (format 1)."""
    data = ds[...]
    if data.dtype.kind == "S" and data.ndim == 2:
        rows = np.ascontiguousarray(data).view(f"S{max(1, data.shape[1])}").reshape(-1)  # NUL padding dropped
        return [r.decode("utf-8") for r in rows]
    return [_text(v) for v in data]


def _as_pick(idx: Sequence[int]):
    """Positions -> the cheapest h5py selection: a slice for an arithmetic progression
    (one hyperslab), else a list (h5py allows one list per read)."""
    idx = [int(i) for i in idx]
    if len(idx) == 1:
        return slice(idx[0], idx[0] + 1)
    d = idx[1] - idx[0]
    if d > 0 and all(b - a == d for a, b in zip(idx, idx[1:])):
        return slice(idx[0], idx[-1] + 1, d)
    return idx


def read_hyperslab(ds: h5py.Dataset, sels: Sequence[Sequence[int]]) -> np.ndarray:
    """ds at the given positions per dimension (every dim kept), decoded to float32.

    Several non-progression lists are split into one read per entry of the first one."""
    picks = [_as_pick(s) for s in sels]
    lists = [i for i, p in enumerate(picks) if isinstance(p, list)]
    if len(lists) > 1:
        i = lists[0]
        parts = [read_hyperslab(ds, [*sels[:i], [j], *sels[i + 1:]]) for j in sels[i]]
        return np.concatenate(parts, axis=i)
    return decode(ds.attrs, ds[tuple(picks)])


@dataclass(frozen=True)
class Maps:
    """Maps read from the file with their dims named as the file names them: what the views
    select and reduce by name (`m.reduce("head", "mean")`, `m.order("step", "y", "x")`)
    without xarray's import on the CLI's path. `Capture.to_dataarray` turns them into an
    xarray DataArray with the file's coordinates (the reader's text_video, text_audio and video_self, and the API)."""

    values: np.ndarray  # float32, NaN where never computed
    dims: tuple[str, ...]
    var: str  # the map variable read
    picks: dict  # dim -> the positions read (branch and token included)

    def reduce(self, dim: str, how: str) -> "Maps":
        """nanmean (or nanmax for how="max") over `dim`: maps never computed are skipped."""
        f = np.nanmax if how == "max" else np.nanmean
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
            values = f(self.values, axis=self.dims.index(dim))
        return replace(self, values=values, dims=tuple(d for d in self.dims if d != dim))

    def with_values(self, values: np.ndarray) -> "Maps":
        """The same dims holding other values (e.g. renormalised maps)."""
        return replace(self, values=np.asarray(values))

    def order(self, *dims: str) -> np.ndarray:
        """The values with their dims in the order named (every dim named once)."""
        if sorted(dims) != sorted(self.dims):
            raise ValueError(f"order {dims} names other dims than {self.dims}")
        return np.transpose(self.values, [self.dims.index(d) for d in dims])


def _is_bare_dim(ds: h5py.Dataset) -> bool:
    """A netCDF dimension without a coordinate variable (netCDF-4 marks its scale so)."""
    return _text(ds.attrs.get("NAME", b"")).startswith("This is a netCDF dimension but not a netCDF variable")


def _dims_of(ds: h5py.Dataset, default: tuple[str, ...]) -> tuple[str, ...]:
    """The names of a variable's dims from the dimension scales attached to it (netCDF-4's
    dims); `default` for a file without them."""
    names = []
    for axis in ds.dims:
        if len(axis) == 0:
            return default
        names.append(axis[0].name.rsplit("/", 1)[-1])
    return tuple(names)


class Capture:
    """An open capture file. Use `open_capture(path)`; close it or use `with`."""

    def __init__(self, path: str, f: h5py.File):
        self.path = path
        self.f = f
        a = {k: f.attrs[k] for k in f.attrs}
        self.attrs: dict = {k: (_text(v) if isinstance(v, (bytes, str)) else v) for k, v in a.items()}
        self.format_version: int = int(self.attrs.get("format_version", 1))
        self.status: str = str(self.attrs.get("status", "running"))
        self.steps = np.asarray(f["step"][...], np.int64)
        self.steps_done: int = int(min(_scalar(self.attrs, "steps_done", default=0, minimum=0), len(self.steps)))
        self.partial: bool = self.status != "complete" or self.steps_done < len(self.steps)
        self.timesteps = np.asarray(f["timestep"][...], np.float64)  # NaN where not yet written
        self.sigmas = np.asarray(f["sigma"][...], np.float32)
        self.layers = np.asarray(f["layer"][...], np.int64)
        # Format 2 keeps string labels in auxiliary coordinates (CF); format 1 in the dims'.
        labels = "token_label" if self.format_version >= 2 else "token"
        self.groups: list[str] = read_strings(f[labels])
        self.group_kinds: list[str] = read_strings(f["token_kind"])
        self.branches: list[str] = read_strings(f["branch_label" if self.format_version >= 2 else "branch"])
        self.heads = np.asarray(f["head"][...], np.int64)
        self.heads_mode: str = str(self.attrs.get("heads", "mean"))
        self.grid: tuple[int, int, int] = _grid(self.attrs)
        self.audio_tokens: int = _scalar(self.attrs, "audio_tokens", default=0, minimum=0)
        self.kinds: list[str] = [k for k in str(self.attrs.get("kinds", "")).split(",") if k]
        self.has_video: bool = "video" in f
        self.has_audio: bool = "audio" in f
        self.fps: float = _scalar(self.attrs, "fps", float, default=FPS, minimum=1e-3)
        self.stride: int = _scalar(self.attrs, "pixel_frame_stride", default=PIXEL_FRAME_STRIDE, minimum=1)
        self.sample_rate: int = _scalar(self.attrs, "audio_sample_rate", default=SAMPLE_RATE, minimum=1)
        self.samples_per_token: int = _scalar(self.attrs, "audio_samples_per_token", default=SAMPLES_PER_TOKEN, minimum=1)
        F = self.grid[0]
        self.num_pixel_frames: int = int(f["video"].shape[0]) if self.has_video else pixel_frame_count(F, self.stride)
        self.latent_frame_of_pixel: np.ndarray = self._latent_frame_table()  # [T] int64
        # The decoded clip is written after the last step; before that it is all zeros.
        self.clip_written: bool = self.status == "complete"
        self.queries: list[PlacedQuery] = _read_queries(f)  # video queries first, then audio ones
        # Each map variable's dims, outermost first, as the file's dimension scales name them.
        self.map_dims: dict[str, tuple[str, ...]] = {v: _dims_of(f[v], MAP_KINDS[v].dims) for v in self.variables()}
        self._check_shapes()

    @cached_property
    def coords(self) -> dict[str, tuple[str, np.ndarray]]:
        """name -> (its dim, values): the 1-D coordinates of the maps' dims, from the file
        (read at the first map read): each dim's coordinate variable (none for a bare dim
        such as `token`), then the auxiliary coordinates the maps' CF `coordinates`
        attributes list (labels, timestep, sigma, audio_time_seconds)."""
        f, out = self.f, {}
        dims = {d for v in self.variables() for d in self.map_dims[v]}
        for d in sorted(dims):
            if d in f and not _is_bare_dim(f[d]):
                data = f[d][...]
                out[d] = (d, np.asarray(read_strings(f[d]) if data.dtype.kind in ("S", "O") else data))
        listed = {c for v in self.variables() for c in _text(f[v].attrs.get("coordinates", "")).split()}
        for c in sorted(listed):
            if c in f and c not in out:
                ds = f[c]
                dim = _dims_of(ds, ())[:1]
                if dim and dim[0] in dims:
                    data = ds[...]
                    out[c] = (dim[0], np.asarray(read_strings(ds) if data.dtype.kind == "S" else data))
        return out

    def _latent_frame_table(self) -> np.ndarray:
        """[T] the latent frame of each decoded frame, as the file stores it (computed from the
        stride for files without decoded video), checked: from 0, never falling, within the grid."""
        T, F = self.num_pixel_frames, self.grid[0]
        if "latent_frame_of_pixel" not in self.f:
            return np.asarray(latent_frame_of(np.arange(T), self.stride), np.int64).reshape(T)
        table = np.asarray(self.f["latent_frame_of_pixel"][...])
        if table.shape != (T,) or table.dtype.kind not in ("i", "u"):
            raise Damaged(f"latent_frame_of_pixel has shape {table.shape} and type {table.dtype}, not {T} whole "
                          f"numbers (one per decoded frame)")
        table = table.astype(np.int64)
        if T and (table[0] != 0 or (np.diff(table) < 0).any() or table.max() >= F):
            raise Damaged(f"latent_frame_of_pixel should rise from 0 to at most {F - 1}, not {table.tolist()}"[:200])
        return table

    def _check_shapes(self) -> None:
        """Every map variable's shape must match the coordinates and the grid it is read by."""
        F, h, w = self.grid
        sizes = {"branch": len(self.branches), "step": len(self.steps), "layer": len(self.layers),
                 "token": len(self.groups), "head": len(self.heads), "frame": F, "y": h, "x": w,
                 "audio_time": self.audio_tokens, "query": len(self.tower_queries("video")),
                 "audio_query": len(self.tower_queries("audio"))}
        for var in self.variables():
            dims = self.map_dims[var]
            if sorted(dims) != sorted(MAP_KINDS[var].dims):
                raise Damaged(f"{var} has dims {dims}, not {MAP_KINDS[var].dims} in some order")
            want = tuple(sizes.get(d, n) for d, n in zip(dims, self.f[var].shape))  # a new kind's own dims: as stored
            if tuple(self.f[var].shape) != want:
                raise Damaged(f"{var} has shape {tuple(self.f[var].shape)}, but its coordinates and video_grid "
                              f"say {want}")
        if self.has_video and (len(self.f["video"].shape) != 4 or self.f["video"].shape[3] != 3):
            raise Damaged(f"video has shape {tuple(self.f['video'].shape)}, not [frames, H, W, 3]")

    def state(self) -> str:
        """How the capture stands: complete, interrupted, failed..., or for `running` whether its
        writer lives: "running, last write 3 s ago" / "stopped without finishing (...)"."""
        if self.status != "running":
            return self.status
        return describe_writer(self.attrs)[1]

    @property
    def geometry(self) -> Geometry:
        """How decoded frames, latent frames, video tokens and audio tokens line up."""
        return Geometry(self.grid, self.num_pixel_frames, self.frame_size, self.fps, self.stride, self.audio_tokens,
                        self.sample_rate, self.samples_per_token, self.latent_frame_of_pixel)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- lookups
    @property
    def readable_steps(self) -> np.ndarray:
        """Sampler step numbers whose maps are complete (the first steps_done entries)."""
        return self.steps[: self.steps_done]

    def variables(self) -> list[str]:
        return [v for v in MAP_KINDS if v in self.f]

    def tower_queries(self, tower: str) -> list[PlacedQuery]:
        return [q for q in self.queries if q.tower == tower]

    def query_index(self, label: str, tower: str = "video") -> int:
        """A query's label -> its position in the file's `query` (video) or `audio_query` dimension."""
        queries = self.tower_queries(tower)
        labels = [q.label for q in queries]
        if str(label) in labels:
            return labels.index(str(label))
        if str(label).isdigit() and int(label) < len(labels) and str(label) not in labels:
            return int(label)
        var = "video_self" if tower == "video" else "audio_self"
        if not labels:
            raise UserError(f"this capture has no {tower} query points ({var} maps); capture again with "
                            f"`queries:` in the prompt file (docs/PROMPT.md).")
        close = difflib.get_close_matches(str(label), labels, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"{tower} query '{label}' was not captured{hint}; captured: {', '.join(labels)}.")

    def token_index(self, selector: str | int) -> int:
        """Any token selection capture accepts ('man', 'man#2', 'man#1', '#5', '#3-4', an exact
        label) -> the position of the captured group (token_groups.TokenTable.find)."""
        return self.table.find(selector)

    def branch_index(self, branch: str | int) -> int:
        if isinstance(branch, int) or str(branch).isdigit():
            b = int(branch)
            if 0 <= b < len(self.branches):
                return b
        elif str(branch) in self.branches:
            return self.branches.index(str(branch))
        raise UserError(f"branch '{branch}' was not captured; captured branches: {', '.join(self.branches)}.")

    def check_frame(self, pixel_frame: int) -> int:
        """A pixel frame number; negative counts from the end (-1: the last), as selections do."""
        n = int(pixel_frame)
        if -self.num_pixel_frames <= n < 0:
            n += self.num_pixel_frames
        if not 0 <= n < self.num_pixel_frames:
            raise UserError(f"frame {pixel_frame} is out of range; the clip has {self.num_pixel_frames} decoded "
                            f"frames (0-{self.num_pixel_frames - 1}); negative values count from the end (-1 is "
                            f"the last).")
        return n

    @property
    def default_frame(self) -> int:
        """The decoded frame views draw when no frame is named (the middle one)."""
        return self.geometry.default_frame

    def latent_frame(self, pixel_frame: int) -> int:
        """The latent frame holding decoded frame `pixel_frame` (the file's latent_frame_of_pixel)."""
        return int(self.latent_frame_of_pixel[self.check_frame(pixel_frame)])

    def latent_frames_of(self, pixel_frames) -> list[int]:
        """The latent frames holding some decoded frames, ascending, each once."""
        return sorted({self.latent_frame(n) for n in pixel_frames})

    def pixel_frames_of(self, latent_frame: int) -> list[int]:
        """The decoded frames of a latent frame that the clip holds (the file's latent_frame_of_pixel)."""
        return self.geometry.pixel_frames_of(latent_frame)

    def frame(self, pixel_frame: int) -> np.ndarray:
        """Decoded frame n as uint8 [H, W, 3] (one chunk read)."""
        n = self.check_frame(pixel_frame)
        if not self.has_video:
            raise UserError(f"{os.path.basename(self.path)} holds no decoded video; capture with the video decoder on.")
        try:
            return np.asarray(self.f["video"][n])
        except OSError as e:
            raise self._damaged(e, f"decoded video frame {n}") from None

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of decoded frames; without video, the pixels the token grid stands for."""
        if self.has_video:
            return tuple(int(s) for s in self.f["video"].shape[1:3])
        cell = token_cell_pixels()
        return self.grid[1] * cell[0], self.grid[2] * cell[1]

    def waveform(self) -> np.ndarray:
        if not self.has_audio:
            raise UserError(f"{os.path.basename(self.path)} holds no decoded audio.")
        try:
            return np.asarray(self.f["audio"][...], np.float32)
        except OSError as e:
            raise self._damaged(e, "decoded audio") from None

    @functools.cached_property
    def table(self) -> TokenTable:
        """The token table of the positive prompt, with the captured groups."""
        f = self.f
        n = f["token_id"].shape[0]
        members = np.asarray(f["group_members"][...]) if n else np.zeros((len(self.groups), 0), np.uint8)
        cols = {k: f[k][...] for k in ("token_id", "token_word_index", "token_start", "token_end")}
        cols |= {k: read_strings(f[k]) for k in ("token_piece", "token_word")}
        tokens = [Token(t, int(cols["token_id"][t]), _text(cols["token_piece"][t]), int(cols["token_start"][t]),
                        int(cols["token_end"][t]), _text(cols["token_word"][t]), int(cols["token_word_index"][t]))
                  for t in range(n)]
        text_len = max(TEXT_LEN, n)
        groups = [TokenGroup(label, kind, list(range(n, text_len)) if kind == "pad" else
                             [int(t) for t in np.flatnonzero(members[g])])
                  for g, (label, kind) in enumerate(zip(self.groups, self.group_kinds))]
        return TokenTable(str(self.attrs.get("prompt", "") or ""), tokens, groups, text_len)

    def token_table(self) -> list[dict]:
        """The token table as one dict a token (TokenTable.rows)."""
        return self.table.rows()

    def settings(self) -> dict:
        try:
            return json.loads(self.attrs.get("settings", "") or "{}")
        except json.JSONDecodeError:
            return {}

    # ----------------------------------------------------------------- maps
    def _need(self, var: str) -> h5py.Dataset:
        if var not in self.f:
            kind = capture_kind_of(var)
            raise UserError(f"this capture has no {var} maps (captured kinds: {', '.join(self.kinds) or 'none'}); "
                            f"capture again with kinds including {kind}.")
        return self.f[var]

    def _outer(self, steps, layers, branch, heads) -> list[list[int]]:
        """Selections of the leading (branch, step, layer) dims plus checks."""
        steps = list(range(self.steps_done)) if steps is None else [int(s) for s in steps]
        bad = [s for s in steps if not 0 <= s < self.steps_done]
        if bad:
            raise UserError(f"step position {bad[0]} is not readable; {self.steps_done} of {len(self.steps)} "
                            f"captured steps exist (steps {describe_values(self.readable_steps)}).")
        layers = list(range(len(self.layers))) if layers is None else [int(i) for i in layers]
        return [[self.branch_index(branch)], steps, layers]

    def _heads(self, heads) -> list[int]:
        return list(range(len(self.heads))) if heads is None else [int(h) for h in heads]

    def _read(self, var: str, picks: dict, out_dims: tuple[str, ...]) -> np.ndarray:
        """Read `var` at the positions `picks[dim]` (every dim of the file listed), returned
        with its dims in `out_dims` order (the file's own order is `map_dims[var]`)."""
        ds = self._need(var)
        file_dims = self.map_dims[var]
        try:
            data = read_hyperslab(ds, [picks[d] for d in file_dims])
        except OSError as e:
            raise self._damaged(e, self._find_damaged_map(var, picks)) from None
        return np.transpose(data, [file_dims.index(d) for d in out_dims])

    # ----------------------------------------------------------------- damage
    def _damaged(self, error: OSError, what: str) -> UserError:
        """One sentence naming what cannot be read and why."""
        text = str(error).lower()
        why = ("fails its Fletcher-32 checksum" if "filter" in text or "checksum" in text
               else f"cannot be read ({str(error).splitlines()[0]})")
        return UserError(f"{os.path.basename(self.path)} is damaged: the {what} {why}; render other tokens, "
                         f"steps or layers, or capture again.")

    def _find_damaged_map(self, var: str, picks: dict) -> str:
        """After a failed read: read the selected maps one chunk at a time and describe the
        first that fails (variable, token, step, layer, then the other leading dims)."""
        import itertools

        ds = self.f[var]
        dims = self.map_dims[var]
        lead = [d for d, c in zip(dims, ds.chunks) if c == 1]  # one position per chunk
        for pos in itertools.product(*[picks[d] for d in lead]):
            at = dict(zip(lead, pos))
            try:
                ds[tuple(slice(at[d], at[d] + 1) if d in at else slice(None) for d in dims)]
            except OSError:
                named = [d for d in sorted(at, key=_DAMAGE_ORDER.index) if ds.shape[dims.index(d)] > 1
                         or d in ("token", "step", "layer")]  # a dim of one entry says nothing
                return f"{var} map of " + ", ".join(self._describe_position(d, at[d]) for d in named)
        return f"{var} maps selected"  # the batch failed but no single map did: say what was asked

    def _describe_position(self, dim: str, i: int) -> str:
        if dim == "token":
            return f"token '{self.groups[i]}'"
        if dim in ("query", "audio_query"):
            return f"query '{self.tower_queries('video' if dim == 'query' else 'audio')[i].label}'"
        if dim == "step":
            return f"step {int(self.steps[i])}"
        if dim == "layer":
            return f"layer {int(self.layers[i])}"
        if dim == "branch":
            return f"branch {self.branches[i]}"
        if dim == "head":
            return "the head mean" if int(self.heads[i]) < 0 else f"head {int(self.heads[i])}"
        return f"latent frame {i}" if dim == "frame" else f"{dim} {i}"

    def _picks(self, steps, layers, branch, heads) -> dict:
        b, s, l = self._outer(steps, layers, branch, heads)
        return {"branch": b, "step": s, "layer": l, "head": self._heads(heads)}

    def _frames(self, frames) -> list[int]:
        return list(range(self.grid[0])) if frames is None else [int(x) for x in frames]

    def maps(self, var: str, token: int | None = None, steps=None, layers=None, branch=0, heads=None,
             frames=None, query: int | None = None) -> Maps:
        """`var`'s maps at positions (not values) per dim, float32, in the file's dim order less
        branch, token and query (one of each is read). None selects everything readable."""
        if token is None and "token" in MAP_KINDS[var].dims:
            raise ValueError(f"{var} maps are per token group: give the group's position")
        query_dim = next((d for d in ("query", "audio_query") if d in MAP_KINDS[var].dims), None)
        if query is None and query_dim is not None:
            raise ValueError(f"{var} maps are per query point: give the query's position")
        h_, w_ = self.grid[1:]
        picks = self._picks(steps, layers, branch, heads) | {
            "token": [0 if token is None else int(token)], "frame": self._frames(frames), "y": list(range(h_)), "x": list(range(w_)),
            "audio_time": list(range(self.audio_tokens))}
        if query_dim is not None:
            picks[query_dim] = [int(query)]
        dims = self.map_dims[var] if var in self.map_dims else MAP_KINDS[var].dims
        if var in self.f:  # a dim of a newer kind (a self-attention `query`, say): all of it
            picks |= {d: list(range(n)) for d, n in zip(dims, self.f[var].shape) if d not in picks}
        data = self._read(var, picks, dims)
        one = ("branch", "token", "query", "audio_query")  # one of each is read: dropped
        lead = tuple(i for i, d in enumerate(dims) if d in one)
        kept = tuple(d for d in dims if d not in one)
        return Maps(data.reshape([n for i, n in enumerate(data.shape) if i not in lead]), kept, var,
                    {d: picks[d] for d in dims})

    def to_dataarray(self, m: Maps) -> "xr.DataArray":
        """Maps as an xarray DataArray: the file's dims, its coordinates at the positions read
        (step values, layers, heads, frames, timestep, sigma, audio_time_seconds...) and the
        read token's and branch's labels as scalar coordinates."""
        import xarray as xr

        coords = {}
        for name, (dim, values) in self.coords.items():
            if dim in m.picks:
                at = values[m.picks[dim]]
                coords[name] = (dim, at) if dim in m.dims else at[0]
        return xr.DataArray(m.values, dims=m.dims, coords=coords, name=m.var,
                            attrs={"long_name": MAP_KINDS[m.var].description, "units": "1"})

    def text_video(self, token: int, steps=None, layers=None, branch=0, heads=None, frames=None) -> "xr.DataArray":
        """One token group's video maps: float32 DataArray in the file's dims (frame, step,
        layer, head, y, x); arguments are positions, not values."""
        return self.to_dataarray(self.maps("text_video", token, steps, layers, branch, heads, frames))

    def video_self(self, query: int, steps=None, layers=None, branch=0, heads=None, frames=None) -> "xr.DataArray":
        """One video query's self-attention over the clip: (step, layer, head, frame, y, x); positions."""
        return self.to_dataarray(self.maps("video_self", None, steps, layers, branch, heads, frames, query=query))

    def text_audio(self, token: int, steps=None, layers=None, branch=0, heads=None) -> "xr.DataArray":
        """One token group's audio maps: (step, layer, head, audio_time)."""
        return self.to_dataarray(self.maps("text_audio", token, steps, layers, branch, heads))


def _read_queries(f: h5py.File) -> list[PlacedQuery]:
    """The query points a file records (none for files written before queries existed)."""
    out = []
    if "query" in f:
        labels, tokens = read_strings(f["query_label"]), read_strings(f["query_token"])
        col = {k: f[k][...] for k in ("query_pixel_frame", "query_latent_frame", "query_y", "query_x",
                                      "query_pixel_y", "query_pixel_x", "query_found_at_step")}
        for i, label in enumerate(labels):
            step = int(col["query_found_at_step"][i])
            out.append(PlacedQuery(label, "video", int(col["query_pixel_frame"][i]), int(col["query_latent_frame"][i]),
                                   int(col["query_y"][i]), int(col["query_x"][i]), float(col["query_pixel_y"][i]),
                                   float(col["query_pixel_x"][i]), tokens[i] or None, None if step < 0 else step))
    if "audio_query" in f:
        times, tokens = f["audio_query_time"][...], f["audio_query_token"][...]
        for i, label in enumerate(read_strings(f["audio_query_label"])):
            out.append(PlacedQuery(label, "audio", audio_token=int(tokens[i]), time=float(times[i])))
    return out


_DAMAGE_ORDER = ("query", "audio_query", "token", "step", "layer", "frame", "head", "audio_time", "branch")


def open_capture(path) -> Capture:
    """Open a capture for reading (HDF5 locking off, so a running capture can be followed)."""
    path = str(path)
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist; check the path of the capture file.")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory; give the path of a capture .h5 file.")
    if not h5py.is_hdf5(path):
        raise UserError(f"{name} is not an HDF5 file; give a capture written by `ovi-attn capture`.")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise UserError(f"{name} cannot be opened ({str(e).splitlines()[0]}); the file is truncated or damaged.") from None
    fmt = _text(f.attrs.get("format", ""))
    if fmt != FORMAT_NAME:
        f.close()
        raise UserError(f"{name} is an HDF5 file but not an ovi-attn capture (format attribute "
                        f"{fmt or 'missing'}); give a file written by `ovi-attn capture`.")
    version = _version_of(f, name)
    if version not in READABLE_VERSIONS and version < FORMAT_VERSION:
        f.close()
        raise UserError(f"{name} has capture format version {version}, which this ovi-attn does not read "
                        f"(it reads {', '.join(map(str, READABLE_VERSIONS))}); capture it again.")
    if version > FORMAT_VERSION:
        f.close()
        raise UserError(f"{name} has capture format version {version}, newer than this ovi-attn reads "
                        f"({FORMAT_VERSION}); upgrade ovi-attn.")
    try:
        return Capture(path, f)
    except Damaged as e:
        f.close()
        raise UserError(f"{name} is damaged: {e}; capture it again or restore the file.") from None
    except (KeyError, OSError, ValueError, TypeError, RuntimeError) as e:
        f.close()
        raise UserError(f"{name} is missing part of the capture layout or cannot be read "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); the file is damaged.") from None


def _version_of(f: h5py.File, name: str) -> int:
    try:
        return _scalar({k: f.attrs[k] for k in ("format_version",) if k in f.attrs}, "format_version", default=0,
                       minimum=0)
    except Damaged as e:
        f.close()
        raise UserError(f"{name} is damaged: {e}; capture it again or restore the file.") from None


@contextmanager
def reading(path: str):
    """Turn an HDF5 read error anywhere inside (any view, info) into one sentence naming the file."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{os.path.basename(str(path))} could not be read ({first}); the file is damaged or "
                        f"truncated: capture it again or restore it.") from None


__all__ = ["Capture", "Maps", "open_capture", "read_hyperslab", "reading", "BRANCHES"]
