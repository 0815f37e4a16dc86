"""The capture file layout (format version 1) and its low-level writer.

This module is the contract between capture and render; `docs/FORMAT.md` describes the
same layout in words and the two change together. It is torch-free so that render, tests
and benchmarks can write synthetic captures through the very code capture uses.

Design choices (see FORMAT.md for the why):
- plain HDF5 with netCDF-4 dimension scales, so `xarray.open_dataset(path,
  engine="h5netcdf")` names every axis;
- every map variable is preallocated at creation (early allocation, NaN fill, no
  compression), so writing a step only writes raw chunk bytes: a process killed at any
  moment leaves a file whose metadata is intact; `steps_done` says what is valid;
- one chunk holds one 2-D map (one latent frame of one token, step, layer, head, branch),
  so a reader pulls exactly the maps it draws.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Sequence

import h5py
import numpy as np

from .liveness import process_start_ticks

FORMAT_NAME = "ovi-attn-capture"
FORMAT_VERSION = 1

# Kinds of map and the dimensions of their variables, outermost first. One token's maps
# at one latent frame come first (token, frame outside step and layer) so that render's
# commonest read, a token at a frame across steps and layers, walks adjacent chunks of
# HDF5's chunk index instead of one index node per map.
MAP_DIMS: dict[str, tuple[str, ...]] = {
    "text_video": ("branch", "token", "frame", "step", "layer", "head", "y", "x"),
    "text_audio": ("branch", "token", "step", "layer", "head", "audio_time"),
    "video_audio": ("branch", "step", "layer", "head", "frame", "audio_time"),
    "audio_video": ("branch", "step", "layer", "head", "audio_time", "frame"),
    "audio_video_spatial": ("branch", "frame", "step", "layer", "head", "y", "x"),
}
# The dims of the values capture hands to `write_map` for one (branch, step, layer).
VALUE_DIMS: dict[str, tuple[str, ...]] = {
    "text_video": ("token", "head", "frame", "y", "x"),
    "text_audio": ("token", "head", "audio_time"),
    "video_audio": ("head", "frame", "audio_time"),
    "audio_video": ("head", "audio_time", "frame"),
    "audio_video_spatial": ("head", "frame", "y", "x"),
}
# Capture kinds as users name them -> the variables each one writes.
KIND_VARIABLES: dict[str, tuple[str, ...]] = {
    "text_video": ("text_video",),
    "text_audio": ("text_audio",),
    "video_audio": ("video_audio",),
    "audio_video": ("audio_video", "audio_video_spatial"),
}
# How many trailing dims one chunk spans (the rest are 1 per chunk).
_CHUNK_TRAILING = {  # after moving token/frame outwards, a chunk is still one 2-D map
    "text_video": 2,
    "text_audio": 1,
    "video_audio": 2,
    "audio_video": 2,
    "audio_video_spatial": 2,
}
MAP_DESCRIPTIONS = {
    "text_video": "softmax probability each video token puts on the token group (sum over the group's keys)",
    "text_audio": "softmax probability each audio token puts on the token group",
    "video_audio": "for each video latent frame, its attention over audio tokens (mean over the frame's spatial tokens)",
    "audio_video": "for each audio token, its attention mass on each video latent frame (sum over spatial tokens)",
    "audio_video_spatial": "where the audio looks: attention of all audio tokens summed, per video token",
}
BRANCHES = ("cond", "uncond")
HEAD_MEAN = -1  # the `head` coordinate value of a head-mean map


@dataclass
class TokenRow:
    """One row of the prompt's token table (the positive prompt, cleaned text)."""

    index: int
    id: int
    piece: str
    start: int  # character span in the cleaned prompt; EOS has start == end == len(text)
    end: int
    word: str  # the word this token belongs to ("" for EOS)
    word_index: int  # -1 for EOS


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
    tokens: Sequence[TokenRow]
    kinds: Sequence[str]  # capture kinds (keys of KIND_VARIABLES)
    branches: Sequence[str] = ("cond",)
    heads: int = 1  # 1 for head-mean, else the number of heads kept
    map_dtype: str = "float16"
    num_steps: int = 50  # steps of the whole sampler run
    num_layers: int = 30  # blocks of the model
    timesteps: Sequence[float] = ()  # per captured step
    sigmas: Sequence[float] = ()
    video_frames: int = 0  # decoded pixel frames T (0: no video stored)
    video_size: tuple[int, int] = (0, 0)  # (H, W) of decoded frames
    audio_samples: int = 0  # decoded waveform length (0: no audio stored)
    audio_sample_rate: int = 16000
    audio_samples_per_token: int = 512
    fps: float = 24.0
    attrs: dict = field(default_factory=dict)  # generation settings, versions, prompt...


def latent_frame_of(pixel_frame: int | np.ndarray, stride: int = 4):
    """Latent frame of a decoded pixel frame: the causal VAE keeps frame 0 alone, then
    packs `stride` frames per latent frame (1..4 -> 1, 5..8 -> 2, ...)."""
    n = np.asarray(pixel_frame)
    out = np.where(n <= 0, 0, (n + stride - 1) // stride)
    return int(out) if np.ndim(out) == 0 else out


def pixel_frames_of(latent_frame: int, stride: int = 4) -> range:
    """The decoded pixel frames a latent frame covers (0 -> [0], f -> 4f-3 .. 4f)."""
    if latent_frame == 0:
        return range(0, 1)
    return range(stride * latent_frame - stride + 1, stride * latent_frame + 1)


def map_shape(var: str, layout: CaptureLayout) -> tuple[int, ...]:
    sizes = dimension_sizes(layout)
    return tuple(sizes[d] for d in MAP_DIMS[var])


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
    }


def chunk_shape(var: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    k = _CHUNK_TRAILING[var]
    return (1,) * (len(shape) - k) + tuple(max(1, s) for s in shape[-k:])


def raw_bytes(layout: CaptureLayout) -> int:
    """What the arrays hold (maps, frames, audio), without any of the file's metadata."""
    itemsize = np.dtype(layout.map_dtype).itemsize
    total = sum(int(np.prod(map_shape(var, layout))) * itemsize
                for kind in layout.kinds for var in KIND_VARIABLES[kind])
    total += layout.video_frames * layout.video_size[0] * layout.video_size[1] * 3
    return total + layout.audio_samples * 4


def estimate_bytes(layout: CaptureLayout) -> int:
    """Bytes the finished file takes on disk, from the file's own dataset definitions.

    Builds the file's skeleton in memory with the writer's code, its big datasets left
    unallocated (so this costs kilobytes whatever the size), then adds what allocating
    them at creation costs: their stored chunks and HDF5's chunk index. Measured within
    1% of real files from toy to real size (tests/test_estimate.py)."""
    w = CaptureFileWriter(None, layout, allocate=False)
    try:
        total = int(w.f.id.get_filesize())
        for ds in w.allocated:
            total += _allocation_bytes(ds, CHUNK_INDEX_K)
    finally:
        w.f.close()
    return total


CHUNK_INDEX_K = 32  # HDF5's default "istore K" (the writer keeps it): a chunk-index node indexes up to 2K chunks


def _allocation_bytes(ds: h5py.Dataset, chunk_k: int) -> int:
    """Raw bytes plus chunk index of one dataset allocated in full (no compression)."""
    n_values = int(np.prod(ds.shape))
    if ds.chunks is None:
        return n_values * ds.dtype.itemsize
    n_chunks = int(np.prod([math.ceil(s / c) for s, c in zip(ds.shape, ds.chunks)]))
    per_chunk = int(np.prod(ds.chunks)) * ds.dtype.itemsize + (4 if ds.fletcher32 else 0)
    return n_chunks * per_chunk + _chunk_index_bytes(n_chunks, len(ds.shape), chunk_k)


def _chunk_index_bytes(n_chunks: int, rank: int, k: int) -> int:
    """HDF5's version-1 B-tree over the chunks (the index of `libver="earliest"` files).

    A node is a 24-byte header, 2k+1 keys (chunk size, filter mask, rank+1 offsets) and 2k
    child addresses, allocated whole. Filled in chunk order, HDF5 splits a full node 90/10
    (its right split ratio), so a node ends up holding about 0.9 * 2k chunks; one level up
    indexes those nodes the same way, up to a single root."""
    node_bytes = 24 + (2 * k + 1) * (8 + 8 * (rank + 1)) + 2 * k * 8
    per_node = max(1, int(0.9 * 2 * k) - 1)  # 57 of 64 for k = 32: measured, see the docstring's test
    nodes, level = 0, n_chunks
    while True:
        count = 1 if level <= 2 * k else math.ceil(level / per_node)
        nodes += count
        if count == 1:
            return nodes * node_bytes
        level = count


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


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

    Capture wraps it in a background thread (ovi_attn_capture.writer); tests and
    benchmarks use it directly to write synthetic captures. `path=None, allocate=False`
    builds the skeleton in memory only (estimate_bytes); `fill=False` skips writing the
    NaN fill (same allocation and size, a sparse file: for tests of size at real scale).
    """

    def __init__(self, path, layout: CaptureLayout, *, allocate: bool = True, fill: bool = True):
        self.path = None if path is None else str(path)
        self.layout = layout
        self.allocate, self.fill = allocate, fill
        self.allocated: list[h5py.Dataset] = []  # the datasets allocated in full at creation
        if self.path is None:
            self.f = h5py.File(f"ovi-attn-skeleton-{id(self)}", "w", driver="core", backing_store=False,
                               libver="earliest")
        else:
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
        self.allocated.clear()
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - the first error is the one reported
            pass

    # ------------------------------------------------------------------ creation
    def _scale(self, name: str, data=None, size: int | None = None, dtype=None):
        """A netCDF dimension: a coordinate variable when data is given, else a bare dim."""
        f = self.f
        if data is not None:
            ds = f.create_dataset(name, data=data, dtype=dtype)
            ds.make_scale(name)
        else:
            ds = f.create_dataset(name, shape=(size,), dtype="f4")
            ds.make_scale("This is a netCDF dimension but not a netCDF variable. %10d" % size)
        return ds

    def _var(self, name: str, dims: Sequence[str], data=None, shape=None, dtype=None, **kw):
        ds = self.f.create_dataset(name, data=data, shape=shape, dtype=dtype, **kw)
        for i, d in enumerate(dims):
            ds.dims[i].attach_scale(self.f[d])
        return ds

    def _create(self, L: CaptureLayout) -> None:
        f = self.f
        str_t = h5py.string_dtype()
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
        f.attrs["pixel_frame_stride"] = 4
        f.attrs["heads"] = "mean" if L.heads == 1 else "all"
        f.attrs["kinds"] = ",".join(L.kinds)
        f.attrs["map_dtype"] = L.map_dtype
        self.set_attrs(**L.attrs)

        # Dimensions and coordinates.
        self._scale("branch", data=np.array(list(L.branches), dtype=object), dtype=str_t)
        self._scale("step", data=np.asarray(L.steps, dtype=np.int32))
        self._scale("layer", data=np.asarray(L.layers, dtype=np.int32))
        self._scale("token", data=np.array(list(L.groups), dtype=object), dtype=str_t)
        heads = [HEAD_MEAN] if L.heads == 1 else list(range(L.heads))
        self._scale("head", data=np.asarray(heads, dtype=np.int32))
        self._scale("frame", data=np.arange(F, dtype=np.int32))
        self._scale("y", data=np.arange(h, dtype=np.int32))
        self._scale("x", data=np.arange(w, dtype=np.int32))
        self._scale("audio_time", data=np.arange(L.audio_tokens, dtype=np.int32))
        self._scale("text_token", data=np.arange(len(L.tokens), dtype=np.int32))

        # Per-step and per-group facts.
        ts = np.full(len(L.steps), np.nan, np.float64)  # int-valued for unipc/dpm++, fractional for euler
        ts[: len(L.timesteps)] = np.asarray(L.timesteps, dtype=np.float64)
        sg = np.full(len(L.steps), np.nan, np.float32)
        sg[: len(L.sigmas)] = np.asarray(L.sigmas, dtype=np.float32)
        self._var("timestep", ["step"], data=ts)
        self._var("sigma", ["step"], data=sg)
        self._var("token_kind", ["token"], data=np.array(list(L.group_kinds), dtype=object), dtype=str_t)
        self._var("group_members", ["token", "text_token"],
                  data=np.asarray(L.group_members, dtype=np.uint8).reshape(len(L.groups), len(L.tokens)))
        self._var("audio_time_seconds", ["audio_time"],
                  data=np.arange(L.audio_tokens) * L.audio_samples_per_token / L.audio_sample_rate)

        # Token table of the positive prompt.
        T = L.tokens
        self._var("token_id", ["text_token"], data=np.array([t.id for t in T], np.int64))
        self._var("token_piece", ["text_token"], data=np.array([t.piece for t in T], dtype=object), dtype=str_t)
        self._var("token_word", ["text_token"], data=np.array([t.word for t in T], dtype=object), dtype=str_t)
        self._var("token_word_index", ["text_token"], data=np.array([t.word_index for t in T], np.int32))
        self._var("token_start", ["text_token"], data=np.array([t.start for t in T], np.int32))
        self._var("token_end", ["text_token"], data=np.array([t.end for t in T], np.int32))

        # Maps: preallocated, NaN-filled, uncompressed; one 2-D map per chunk.
        dt = np.dtype(L.map_dtype)
        for kind in L.kinds:
            for var in KIND_VARIABLES[kind]:
                shape = map_shape(var, L)
                if 0 in shape:
                    continue
                ds = self._preallocated(var, MAP_DIMS[var], shape, dt, chunk_shape(var, shape), np.nan)
                ds.attrs["description"] = MAP_DESCRIPTIONS[var]
                ds.attrs["units"] = "probability"

        # Decoded clip (written at the end of generation, its space taken now).
        if L.video_frames:
            H, W = L.video_size
            self._scale("pixel_frame", data=np.arange(L.video_frames, dtype=np.int32))
            self._scale("pixel_y", size=H)
            self._scale("pixel_x", size=W)
            self._scale("rgb", size=3)
            self._preallocated("video", ["pixel_frame", "pixel_y", "pixel_x", "rgb"], (L.video_frames, H, W, 3),
                               np.uint8, (1, H, W, 3), 0)
            self._var("latent_frame_of_pixel", ["pixel_frame"],
                      data=latent_frame_of(np.arange(L.video_frames)).astype(np.int32))
        if L.audio_samples:
            self._scale("sample", size=L.audio_samples)
            ds = self._preallocated("audio", ["sample"], (L.audio_samples,), np.float32, None, 0)
            ds.attrs["sample_rate"] = L.audio_sample_rate

    def _preallocated(self, name: str, dims, shape, dtype, chunks, fillvalue) -> h5py.Dataset:
        """A big dataset whose every byte is allocated (and filled) now, so that running out
        of space can only happen at creation; later writes overwrite allocated bytes."""
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY if self.allocate else h5py.h5d.ALLOC_TIME_LATE)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC if self.allocate and self.fill else h5py.h5d.FILL_TIME_NEVER)
        ds = self._var(name, dims, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fillvalue, dcpl=dcpl)
        self.allocated.append(ds)
        return ds

    # ------------------------------------------------------------------ writing
    def write_map(self, var: str, branch: int, step: int, layer: int, values: np.ndarray) -> None:
        """Write all maps of one (branch, captured step index, captured layer index).

        values has dims VALUE_DIMS[var], e.g. text_video: [G, heads, F, h, w]."""
        file_dims = [d for d in MAP_DIMS[var] if d not in ("branch", "step", "layer")]
        values = np.transpose(values, [VALUE_DIMS[var].index(d) for d in file_dims])
        where = tuple({"branch": branch, "step": step, "layer": layer}.get(d, slice(None)) for d in MAP_DIMS[var])
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
