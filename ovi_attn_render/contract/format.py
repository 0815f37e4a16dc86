"""The capture file layout (format version 2) and its low-level writer.

This module is the contract between capture and render; `docs/FORMAT.md` describes the
same layout in words and the two change together. It is torch-free so that render, tests
and benchmarks can write synthetic captures through the very code capture uses.

Design choices (see FORMAT.md for the why):
- a netCDF-4 file (HDF5 with netCDF dimension scales, netCDF-4 types only, CF-1.11
  metadata), so netCDF-C, netCDF4-python, xarray with any engine and h5py all open it;
- maps are stored in an encoding of `MAP_ENCODINGS`; the default packs probabilities into
  int16 per CF (`scale_factor`, `add_offset`, `_FillValue`), every client decodes it;
- every map chunk, frame and the audio carry HDF5's Fletcher-32 checksum, so a damaged
  map is found on read, never drawn;
- every variable of a fixed-size encoding is preallocated at creation (early allocation,
  fill value written), so writing a step only rewrites chunks in place: a process killed
  at any moment leaves a file whose metadata is intact; `steps_done` says what is valid;
- one chunk holds one 2-D map (one latent frame of one token, step, layer, head, branch),
  so a reader pulls exactly the maps it draws.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Sequence

import h5py
import numpy as np

from ovi_attn_render.contract.geometry import (FPS, PIXEL_FRAME_STRIDE, SAMPLE_RATE, SAMPLES_PER_TOKEN, audio_token_seconds,
                                               latent_frame_of)
from ovi_attn_render.contract.kinds import MAP_KINDS, SELF_KINDS, variables_of
from ovi_attn_render.contract.liveness import process_start_ticks
from ovi_attn_render.contract.queries import PlacedQuery, cell_centre
from ovi_attn_render.contract.token_groups import Token

FORMAT_NAME = "ovi-attn-capture"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1: float16/float32 maps, string coordinates, no checksums
CONVENTIONS = "CF-1.11"

BRANCHES = ("cond", "uncond")
HEAD_MEAN = -1  # the `head` coordinate value of a head-mean map
# Map variables, their dims and meaning: contract/kinds.py (MAP_KINDS).


@dataclass(frozen=True)
class MapEncoding:
    """How map values are stored. `dtype` is the stored type. A packed encoding stores
    code = round(value / scale_factor) - 32767 in [-32767, 32767] (65535 levels over
    [0, max]) and NaN (never computed) as _FillValue -32768; every netCDF client decodes
    value = scale_factor * code + add_offset (CF 8.1, which wants a signed type)."""

    name: str
    dtype: str  # stored numpy dtype
    packed: bool = False
    deflate: int = 0  # zlib level with byte shuffle, 0: uncompressed
    netcdf: bool = True  # False: netCDF-C cannot read this type (float16)

    @property
    def fixed_size(self) -> bool:
        """Chunks keep their size when rewritten: preallocated at creation, size known."""
        return self.deflate == 0

    def for_variable(self, var: str) -> "MapEncoding":
        """A packed encoding falls back to float32 for a variable without a fixed range."""
        if self.packed and MAP_KINDS[var].value_max is None:
            return MAP_ENCODINGS["float32"]
        return self

    @property
    def fill(self):
        """_FillValue in stored units: the lowest code for packed ints, NaN for floats."""
        return np.iinfo(self.dtype).min if self.packed else np.nan

    def scale_factor(self, var: str) -> np.float32:
        # 65535 levels span [0, max]: absolute error <= scale / 2 = 7.6e-6 for probabilities
        return np.float32(MAP_KINDS[var].value_max / 65534)

    def add_offset(self, var: str) -> np.float32:
        # -(scale * -32767) exactly, so code -32767 decodes to exactly 0 in float32 (no -1e-9)
        return np.float32(self.scale_factor(var) * np.float32(_CODE_ZERO))

    def encode(self, var: str, values: np.ndarray) -> np.ndarray:
        """float values (NaN where never computed) -> what the file stores."""
        if not self.packed:
            return np.asarray(values, dtype=self.dtype)
        x = np.multiply(values, 1.0 / float(self.scale_factor(var)), dtype=np.float32)  # levels above 0
        np.clip(x, 0.0, 2.0 * _CODE_ZERO, out=x)  # NaN stays NaN
        np.rint(x, out=x)
        x -= _CODE_ZERO
        x[np.isnan(x)] = self.fill
        return x.astype(self.dtype)

    def attrs(self, var: str) -> dict:
        """The CF attributes that tell every client how to decode the stored values."""
        a = {"_FillValue": np.array(self.fill, dtype=self.dtype)}
        if self.packed:
            a |= {"scale_factor": self.scale_factor(var), "add_offset": self.add_offset(var)}
        return a


_CODE_ZERO = 32767  # the code of value 0 is -_CODE_ZERO
MAP_ENCODINGS: dict[str, MapEncoding] = {
    "int16": MapEncoding("int16", "int16", packed=True),
    "float32": MapEncoding("float32", "float32"),
    "float32-deflate": MapEncoding("float32-deflate", "float32", deflate=1),
    "float16": MapEncoding("float16", "float16", netcdf=False),  # netCDF-C cannot read it: explicit choice only
}
DEFAULT_MAP_ENCODING = "int16"
CHECKSUM_BYTES = 4  # Fletcher-32 appends 4 bytes to every chunk

# dask chunks for `xr.open_dataset(path, chunks=DASK_CHUNKS)`: one dask chunk per token and
# latent frame holds all steps and layers (the on-disk chunking, one map per chunk, would
# make one dask task per map). Selecting one token at one frame is then a single task.
DASK_CHUNKS = {"token": 1, "frame": 1, "step": -1, "layer": -1}


def decode(attrs, stored: np.ndarray) -> np.ndarray:
    """Stored map values -> float32 probabilities, NaN where never computed: what netCDF
    clients compute from the variable's CF attributes (format 1 stores floats as they are)."""
    if "scale_factor" not in attrs:
        return np.asarray(stored, dtype=np.float32)
    fill = attrs.get("_FillValue")
    scale = np.float32(attrs["scale_factor"])
    out = scale * stored + np.float32(attrs.get("add_offset", 0.0))  # [same shape] float32
    if fill is not None:
        out[stored == fill] = np.nan
    return out


@dataclass
class CaptureLayout:
    """Everything needed to create a capture file before the first step is generated."""

    grid: tuple[int, int, int]  # (F latent frames, h, w) of the video token grid
    audio_tokens: int  # La
    steps: Sequence[int]  # captured sampler step indices
    layers: Sequence[int]  # captured block indices
    groups: Sequence[str]  # token group labels, `<eos>` and `<pad>` included
    group_kinds: Sequence[str]  # "word", "phrase", "span", "index", "eos", "pad"
    group_members: np.ndarray  # [G, T] uint8, 1 where text token t is in group g (cond prompt)
    tokens: Sequence[Token]  # the positive prompt's token table (token_groups.TokenTable.tokens)
    kinds: Sequence[str]  # capture kinds (kinds.CAPTURE_KINDS)
    branches: Sequence[str] = ("cond",)
    heads: int = 1  # 1 for head-mean, else the number of heads kept
    map_dtype: str = DEFAULT_MAP_ENCODING  # a key of MAP_ENCODINGS
    checksums: bool = True  # Fletcher-32 on maps, frames and audio (off only to measure its cost)
    num_steps: int = 50  # steps of the whole sampler run
    num_layers: int = 30  # blocks of the model
    timesteps: Sequence[float] = ()  # per captured step
    sigmas: Sequence[float] = ()
    video_frames: int = 0  # decoded pixel frames T (0: no video stored)
    video_size: tuple[int, int] = (0, 0)  # (H, W) of decoded frames
    audio_samples: int = 0  # decoded waveform length (0: no audio stored)
    audio_sample_rate: int = SAMPLE_RATE
    audio_samples_per_token: int = SAMPLES_PER_TOKEN
    fps: float = FPS
    queries: Sequence[PlacedQuery] = ()  # query points (video and audio), in the order of the prompt file
    attrs: dict = field(default_factory=dict)  # generation settings, versions, prompt...

    def tower_queries(self, tower: str) -> list[PlacedQuery]:
        """The queries of one tower, in file order (the `query` / `audio_query` dimension)."""
        return [q for q in self.queries if q.tower == tower]

    @property
    def self_kinds(self) -> list[str]:
        """The self-attention kinds this capture writes: those whose tower has queries."""
        return [k for k, tower in SELF_KINDS.items() if self.tower_queries(tower)]


def map_shape(var: str, layout: CaptureLayout) -> tuple[int, ...]:
    sizes = dimension_sizes(layout)
    return tuple(sizes[d] for d in MAP_KINDS[var].dims)


def dimension_sizes(layout: CaptureLayout) -> dict[str, int]:
    F, h, w = layout.grid
    return {
        "branch": len(layout.branches),
        "step": len(layout.steps),
        "layer": len(layout.layers),
        "token": len(layout.groups),
        "head": layout.heads,
        "frame": F,
        "y": h,
        "x": w,
        "audio_time": layout.audio_tokens,
        "text_token": len(layout.tokens),
        "pixel_frame": layout.video_frames,
        "pixel_y": layout.video_size[0],
        "pixel_x": layout.video_size[1],
        "rgb": 3,
        "sample": layout.audio_samples,
        "query": len(layout.tower_queries("video")),
        "audio_query": len(layout.tower_queries("audio")),
    }


def chunk_shape(var: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    k = MAP_KINDS[var].chunk_trailing
    return (1,) * (len(shape) - k) + tuple(max(1, s) for s in shape[-k:])


@dataclass(frozen=True)
class BigVariable:
    """A map, the decoded frames or the waveform: what takes the file's space. The writer
    creates these and `estimate_bytes` sizes them from the same definitions."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    deflate: int  # zlib level with byte shuffle, 0: none
    checksum: bool  # Fletcher-32
    fill: object  # HDF5 fill value (written at creation for preallocated variables)
    early: bool  # allocated (and filled) at creation
    attrs: dict

    @property
    def n_chunks(self) -> int:
        return int(np.prod([-(-s // c) for s, c in zip(self.shape, self.chunks)]))


def map_encoding(layout: CaptureLayout, var: str) -> MapEncoding:
    if layout.map_dtype not in MAP_ENCODINGS:
        raise ValueError(f"unknown map encoding {layout.map_dtype!r}; known: {', '.join(MAP_ENCODINGS)}")
    return MAP_ENCODINGS[layout.map_dtype].for_variable(var)


def big_variables(L: CaptureLayout) -> list[BigVariable]:
    out = []
    for var in [v for kind in list(L.kinds) + L.self_kinds for v in variables_of(kind)]:
        shape = map_shape(var, L)
        if 0 in shape:
            continue
        enc = map_encoding(L, var)
        out.append(BigVariable(var, MAP_KINDS[var].dims, shape, chunk_shape(var, shape), enc.dtype, enc.deflate,
                               L.checksums, enc.fill, enc.fixed_size, _map_attrs(var, enc)))
    if L.video_frames:
        H, W = L.video_size
        out.append(BigVariable("video", ("pixel_frame", "pixel_y", "pixel_x", "rgb"), (L.video_frames, H, W, 3),
                               (1, H, W, 3), "uint8", 0, L.checksums, 0, True,
                               {"long_name": "decoded video frames, RGB", "units": "1",
                                "valid_range": np.array([0, 255], np.uint8), "coordinates": "latent_frame_of_pixel"}))
    if L.audio_samples:
        out.append(BigVariable("audio", ("sample",), (L.audio_samples,), (L.audio_samples,), "float32", 0,
                               L.checksums, 0.0, True,
                               {"long_name": "decoded audio waveform", "units": "1",
                                "sample_rate": np.int64(L.audio_sample_rate)}))
    return out


# Bytes of HDF5's v1 B-tree chunk index per chunk: a key of 8 + 8 (rank + 1) bytes and an
# 8-byte child address, in nodes of 64 entries that in-order insertion leaves ~85% full
# (measured: 102 bytes per chunk at rank 8, 84 at rank 6).
def _index_bytes_per_chunk(rank: int) -> float:
    return 1.17 * (8 * (rank + 1) + 16)


METADATA_BYTES = 48 * 1024  # superblock, coordinates, attributes, object headers (measured ~40 KB)


def estimate_bytes(layout: CaptureLayout) -> int:
    """Bytes the file will take, from the definitions the writer creates it with: every
    chunk (its checksum included) and its index entry, plus the small metadata. Exact to
    ~1% for the fixed-size encodings; an upper bound for deflate (compressed chunks are
    smaller, but how much smaller depends on the maps)."""
    total = float(METADATA_BYTES)
    for v in big_variables(layout):
        chunk_bytes = int(np.prod(v.chunks)) * np.dtype(v.dtype).itemsize
        if v.deflate:
            chunk_bytes += chunk_bytes // 1000 + 12  # zlib's worst case on incompressible input
        total += v.n_chunks * (chunk_bytes + CHECKSUM_BYTES * v.checksum + _index_bytes_per_chunk(len(v.shape)))
    return int(total)


def _map_attrs(var: str, enc: MapEncoding) -> dict:
    dims = MAP_KINDS[var].dims
    aux = [c for d, cs in _AUX_COORDS.items() if d in dims for c in cs]
    return {"long_name": MAP_KINDS[var].description, "units": "1", "coordinates": " ".join(aux),
            "encoding": enc.name} | enc.attrs(var)


# Auxiliary coordinates (CF 5) listed in the `coordinates` attribute of the maps over each
# dimension, so xarray and CF tools attach them as coordinates.
_AUX_COORDS = {
    "branch": ("branch_label",),
    "token": ("token_label", "token_kind"),
    "step": ("timestep", "sigma"),
    "audio_time": ("audio_time_seconds",),
    "query": ("query_label", "query_pixel_frame", "query_latent_frame", "query_y", "query_x", "query_pixel_y",
              "query_pixel_x", "query_token", "query_found_at_step"),
    "audio_query": ("audio_query_label", "audio_query_time", "audio_query_token"),
}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _set_attrs(ds: h5py.Dataset, attrs: dict) -> None:
    for k, v in attrs.items():
        ds.attrs[k] = v


def cf_global_attrs(L: CaptureLayout) -> dict:
    """CF-1.11's global attributes (2.6.2), from what the run says about itself."""
    from ovi_attn_render import __version__

    a = L.attrs
    prompt = str(a.get("prompt", "") or "")
    started = str(a.get("started_at", "") or "")
    return {
        "Conventions": CONVENTIONS,
        "title": f"ovi-attn capture: {prompt}" if prompt else "ovi-attn capture",
        "source": f"Ovi audio-video generation, model {a.get('model', 'unknown')}, cross-attention captured by "
                  f"ovi-attn {__version__}",
        "history": f"{started + ' ' if started else ''}created by ovi-attn {__version__} capture",
        "references": "docs/FORMAT.md of ovi-attn",
    }


def _attr_value(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=_json_default)
    if v is None:
        return ""
    return v


# Lifecycle attributes: made with the file and rewritten in place (attrs.modify), the
# numbers in their own bytes; the strings are a few bytes of HDF5's global heap. Readers
# tell a live writer from a dead one by host, pid and heartbeat.
LIFECYCLE_SLOTS = {  # name -> (dtype, initial value)
    "status": (h5py.string_dtype(), "running"),
    "steps_done": (np.int64, 0),
    "heartbeat": (np.float64, 0.0),  # Unix time of the last flush
    "writer_pid": (np.int64, 0),
    "writer_start_ticks": (np.int64, 0),  # the pid's start time (/proc, clock ticks): pid reuse shows
    "finished_at": (h5py.string_dtype(), ""),
    "generation_seconds": (np.float64, np.nan),
    "load_seconds": (np.float64, np.nan),
}


class CaptureFileWriter:
    """Creates a capture file and writes into it; synchronous and torch-free.

    Capture wraps it in a background thread (ovi_attn_capture.pipeline.writer); tests and
    benchmarks use it directly to write synthetic captures. `fill=False` skips writing the
    fill values at creation (the same allocation and size, a sparse file: for tests of the
    size estimate at real scale).
    """

    def __init__(self, path, layout: CaptureLayout, *, fill: bool = True):
        self.path = str(path)
        self.layout = layout
        self.fill = fill
        self.f = h5py.File(self.path, "w", libver="earliest", locking=False)  # readers may follow the run
        try:
            self._create(layout)
            self.heartbeat()
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Close after a failure (a full disk at creation, say) without raising again, so
        nothing is left for a destructor to trip over at exit."""
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - the first error is the one reported
            pass

    # ------------------------------------------------------------------ creation
    def _scale(self, name: str, data=None, size: int | None = None, dtype=None, **attrs):
        """A netCDF dimension: a coordinate variable when data is given, else a bare dim."""
        f = self.f
        if data is not None:
            ds = f.create_dataset(name, data=data, dtype=dtype)
            ds.make_scale(name)
            _set_attrs(ds, attrs)
        else:
            ds = f.create_dataset(name, shape=(size,), dtype="f4")
            ds.make_scale("This is a netCDF dimension but not a netCDF variable. %10d" % size)
        return ds

    def _var(self, name: str, dims: Sequence[str], data=None, shape=None, dtype=None, attrs=None, **kw):
        ds = self.f.create_dataset(name, data=data, shape=shape, dtype=dtype, **kw)
        for i, d in enumerate(dims):
            ds.dims[i].attach_scale(self.f[d])
        _set_attrs(ds, attrs or {})
        return ds

    def _chars(self, name: str, dim: str, texts, long_name: str) -> h5py.Dataset:
        """Strings as a CF character array [dim, name_strlen] of UTF-8 bytes (CF 2.2): the
        form netCDF-C, CF checkers and every xarray engine read (`_Encoding` tells xarray
        and netCDF4-python to hand back str)."""
        raw = [str(t).encode("utf-8") for t in texts]
        width = max([1, *map(len, raw)])
        data = np.array(raw, dtype=f"S{width}").reshape(-1, 1).view("S1")  # [N, width]
        self._scale(f"{name}_strlen", size=width)
        return self._var(name, [dim, f"{name}_strlen"], data=data,
                         attrs={"long_name": long_name, "_Encoding": "utf-8"})

    def _big(self, v: BigVariable) -> h5py.Dataset:
        """A map, frames or audio: chunked, checksummed, preallocated when its chunks have a
        fixed size (so a step rewrites chunks in place and never grows the file)."""
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        if v.early:
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC if self.fill else h5py.h5d.FILL_TIME_NEVER)
        comp = {"compression": "gzip", "compression_opts": v.deflate, "shuffle": True} if v.deflate else {}
        return self._var(v.name, v.dims, shape=v.shape, dtype=v.dtype, chunks=v.chunks, fillvalue=v.fill,
                         fletcher32=v.checksum, dcpl=dcpl, attrs=v.attrs, **comp)

    def _create(self, L: CaptureLayout) -> None:
        f = self.f
        F, h, w = L.grid
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        for name, (dtype, value) in LIFECYCLE_SLOTS.items():
            f.attrs.create(name, value, dtype=dtype)
        f.attrs["writer_host"] = socket.gethostname()
        f.attrs.modify("writer_pid", os.getpid())
        f.attrs.modify("writer_start_ticks", process_start_ticks(os.getpid()))
        f.attrs["num_steps"] = L.num_steps
        f.attrs["num_layers"] = L.num_layers
        f.attrs["video_grid"] = np.array(L.grid, dtype=np.int64)
        f.attrs["latent_frames"] = F
        f.attrs["audio_tokens"] = L.audio_tokens
        f.attrs["audio_sample_rate"] = L.audio_sample_rate
        f.attrs["audio_samples_per_token"] = L.audio_samples_per_token
        f.attrs["fps"] = L.fps
        f.attrs["pixel_frame_stride"] = PIXEL_FRAME_STRIDE
        f.attrs["heads"] = "mean" if L.heads == 1 else "all"
        f.attrs["kinds"] = ",".join(list(L.kinds) + L.self_kinds)
        f.attrs["map_dtype"] = L.map_dtype
        f.attrs["checksums"] = "fletcher32" if L.checksums else "none"
        self.set_attrs(**L.attrs)
        for k, v in cf_global_attrs(L).items():
            f.attrs[k] = v

        # Dimensions and coordinates. CF coordinate variables are numeric; the string labels
        # of `branch` and `token` are auxiliary coordinates (CF 6.1) beside bare dimensions,
        # and every string is a character array (CF 2.2).
        one = {"units": "1"}
        self._scale("branch", size=len(L.branches))
        self._scale("step", data=np.asarray(L.steps, dtype=np.int32), long_name="sampler step index (0 is the noisiest)", **one)
        self._scale("layer", data=np.asarray(L.layers, dtype=np.int32), long_name="transformer block index", **one)
        self._scale("token", size=len(L.groups))
        heads = [HEAD_MEAN] if L.heads == 1 else list(range(L.heads))
        self._scale("head", data=np.asarray(heads, dtype=np.int32), long_name="attention head (-1: mean over heads)", **one)
        self._scale("frame", data=np.arange(F, dtype=np.int32), long_name="latent frame", **one)
        self._scale("y", data=np.arange(h, dtype=np.int32), long_name="video token row", **one)
        self._scale("x", data=np.arange(w, dtype=np.int32), long_name="video token column", **one)
        self._scale("audio_time", data=np.arange(L.audio_tokens, dtype=np.int32), long_name="audio token", **one)
        self._scale("text_token", data=np.arange(len(L.tokens), dtype=np.int32),
                    long_name="token of the positive prompt", **one)
        self._chars("branch_label", "branch", L.branches,
                    "classifier-free guidance branch (cond: positive prompt, uncond: negative prompts)")
        self._chars("token_label", "token", L.groups, "token group label")

        # Per-step and per-group facts.
        ts = np.full(len(L.steps), np.nan, np.float64)  # int-valued for unipc/dpm++, fractional for euler
        ts[: len(L.timesteps)] = np.asarray(L.timesteps, dtype=np.float64)
        sg = np.full(len(L.steps), np.nan, np.float32)
        sg[: len(L.sigmas)] = np.asarray(L.sigmas, dtype=np.float32)
        self._var("timestep", ["step"], data=ts, attrs={"long_name": "sampler timestep (1000 is pure noise)", **one})
        self._var("sigma", ["step"], data=sg, attrs={"long_name": "noise level of the step's input", **one})
        self._chars("token_kind", "token", L.group_kinds,
                    "kind of token group (word, all-word, phrase, span, index, eos, pad)")
        self._var("group_members", ["token", "text_token"],
                  data=np.asarray(L.group_members, dtype=np.uint8).reshape(len(L.groups), len(L.tokens)),
                  attrs={"long_name": "1 where the text token belongs to the group", **one})
        self._var("audio_time_seconds", ["audio_time"],
                  data=audio_token_seconds(L.audio_tokens, sample_rate=L.audio_sample_rate, samples_per_token=L.audio_samples_per_token),
                  attrs={"long_name": "start time of the audio token", "units": "s"})

        # Token table of the positive prompt.
        T = L.tokens
        self._var("token_id", ["text_token"], data=np.array([t.id for t in T], np.int64),
                  attrs={"long_name": "tokenizer id"})
        self._chars("token_piece", "text_token", [t.piece for t in T], "tokenizer piece")
        self._chars("token_word", "text_token", [t.word for t in T], "word the token belongs to (empty for EOS)")
        self._var("token_word_index", ["text_token"], data=np.array([t.word_index for t in T], np.int32),
                  attrs={"long_name": "index of that word (-1 for EOS)", **one})
        self._var("token_start", ["text_token"], data=np.array([t.start for t in T], np.int32),
                  attrs={"long_name": "first character of the token in the cleaned prompt", **one})
        self._var("token_end", ["text_token"], data=np.array([t.end for t in T], np.int32),
                  attrs={"long_name": "character after the token in the cleaned prompt", **one})

        # Decoded clip dimensions (the clip is written at the end of generation).
        if L.video_frames:
            H, W = L.video_size
            self._scale("pixel_frame", data=np.arange(L.video_frames, dtype=np.int32),
                        long_name="decoded video frame", **one)
            self._scale("pixel_y", size=H)
            self._scale("pixel_x", size=W)
            self._scale("rgb", size=3)
            self._var("latent_frame_of_pixel", ["pixel_frame"],
                      data=latent_frame_of(np.arange(L.video_frames)).astype(np.int32),
                      attrs={"long_name": "latent frame the decoded frame belongs to", **one})
        if L.audio_samples:
            self._scale("sample", size=L.audio_samples)
        self._query_coordinates(L)
        # Maps, frames, audio: one 2-D map (one frame, all audio) per chunk, see big_variables.
        for v in big_variables(L):
            self._big(v)

    def _query_coordinates(self, L: CaptureLayout) -> None:
        """The `query` (video) and `audio_query` dimensions with each query's place; an adaptive
        query's cell is -1 until capture finds it (set_query_cell)."""
        one = {"units": "1"}
        video, audio = L.tower_queries("video"), L.tower_queries("audio")
        if video:
            self._scale("query", data=np.arange(len(video), dtype=np.int32), long_name="video query point", **one)
            self._chars("query_label", "query", [q.label for q in video], "label of the query point")
            for name, dtype, values, long_name in (
                ("query_pixel_frame", np.int32, [q.pixel_frame for q in video], "decoded frame of the query"),
                ("query_latent_frame", np.int32, [q.latent_frame for q in video], "latent frame of the query"),
                ("query_y", np.int32, [q.y for q in video], "token row of the query (-1: not found)"),
                ("query_x", np.int32, [q.x for q in video], "token column of the query (-1: not found)"),
                ("query_found_at_step", np.int32, [-1 if q.step is None else q.step for q in video],
                 "sampler step whose text map placed an adaptive query (-1: a fixed point)"),
            ):
                self._var(name, ["query"], data=np.asarray(values, dtype), attrs={"long_name": long_name, **one})
            for name, values, long_name in (("query_pixel_y", [q.pixel_y for q in video], "pixel row of the query"),
                                            ("query_pixel_x", [q.pixel_x for q in video], "pixel column of the query")):
                self._var(name, ["query"], data=np.asarray(values, np.float32), attrs={"long_name": long_name, **one})
            self._chars("query_token", "query", [q.token or "" for q in video],
                        "token group whose text-map peak placed the query (empty: a fixed point)")
        if audio:
            self._scale("audio_query", data=np.arange(len(audio), dtype=np.int32), long_name="audio query", **one)
            self._chars("audio_query_label", "audio_query", [q.label for q in audio], "label of the audio query")
            self._var("audio_query_time", ["audio_query"], data=np.asarray([q.time for q in audio], np.float64),
                      attrs={"long_name": "time asked for", "units": "s"})
            self._var("audio_query_token", ["audio_query"], data=np.asarray([q.audio_token for q in audio], np.int32),
                      attrs={"long_name": "audio token of the query", **one})

    # ------------------------------------------------------------------ writing
    def set_query_cell(self, query: int, y: int, x: int) -> None:
        """An adaptive video query was found: record its token cell (and that cell's centre in pixels)."""
        f = self.f
        F, h, w = self.layout.grid
        H, W = self.layout.video_size if self.layout.video_frames else (h, w)
        f["query_y"][query] = y
        f["query_x"][query] = x
        f["query_pixel_y"][query] = cell_centre(y, h, H)
        f["query_pixel_x"][query] = cell_centre(x, w, W)

    def write_map(self, var: str, branch: int, step: int, layer: int, values: np.ndarray) -> None:
        """Write all maps of one (branch, captured step index, captured layer index).

        values has dims MAP_KINDS[var].value_dims, e.g. text_video: [G, heads, F, h, w], float
        probabilities with NaN where never computed; they are stored in the layout's encoding."""
        kind = MAP_KINDS[var]
        file_dims = [d for d in kind.dims if d not in ("branch", "step", "layer")]
        values = np.transpose(values, [kind.value_dims.index(d) for d in file_dims])
        values = map_encoding(self.layout, var).encode(var, values)
        where = tuple({"branch": branch, "step": step, "layer": layer}.get(d, slice(None)) for d in kind.dims)
        self.f[var][where] = values

    def set_timestep(self, step: int, timestep: float, sigma: float) -> None:
        self.f["timestep"][step] = timestep
        self.f["sigma"][step] = sigma

    def finish_step(self, steps_done: int) -> None:
        """Mark the first `steps_done` captured steps complete and push everything to disk."""
        self.f.flush()  # the maps first: steps_done must never promise bytes not yet written
        self.f.attrs.modify("steps_done", steps_done)
        self.heartbeat()

    def heartbeat(self) -> None:
        """Record that the writer is alive, and flush."""
        self.f.attrs.modify("heartbeat", time.time())
        self.f.flush()

    def write_video(self, frames: np.ndarray) -> None:
        """frames: uint8 [T, H, W, 3]."""
        self.f["video"][...] = frames

    def write_audio(self, waveform: np.ndarray) -> None:
        self.f["audio"][...] = np.asarray(waveform, np.float32)

    def set_attrs(self, **attrs) -> None:
        for k, v in attrs.items():
            if k in LIFECYCLE_SLOTS:  # in place, keeping the slot's type
                self.f.attrs.modify(k, v)
            else:
                self.f.attrs[k] = _attr_value(v)

    def close(self, status: str = "complete") -> None:
        if self.f.id.valid:
            try:
                self.f.attrs.modify("status", status)
                self.heartbeat()
            finally:
                self.f.close()
