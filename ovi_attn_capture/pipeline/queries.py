"""Query points of the prompt file (`queries:`): where self-attention rows are captured.

    queries:
      - {frame: 60, x: 0.5, y: 0.3, label: face}     # a fixed point: floats in [0, 1] are
      - {frame: 60, x: 412, y: 200}                   #   fractions of width/height, ints pixels
      - {token: man, frame: 60, step: 10, label: man} # adaptive: the peak of token `man`'s text
                                                      #   map at frame 60, found at step 10
      - {time: 1.5, label: clap}                      # an audio query, in seconds

`parse_queries` checks the syntax (torch-free, before anything loads); `resolve_queries`
places each query on the token grid once the clip's geometry is known. Every problem is one
sentence naming the query and the fix (a UserError, exit 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import PIXEL_FRAME_STRIDE, latent_frame_of
from ovi_attn_render.contract.queries import PlacedQuery
from ovi_attn_render.contract.selection import is_whole_number

VIDEO_KEYS = ("frame", "x", "y", "label")
ADAPTIVE_KEYS = ("token", "frame", "step", "label")
AUDIO_KEYS = ("time", "label")
EXAMPLE = "queries: [{frame: 60, x: 0.5, y: 0.3, label: face}]"
MAX_QUERIES = 64  # per tower; each one adds a full map per step and layer


class QueryProblem(ValueError):
    """A phrase completing "queries ...", e.g. "item 2 (face) has x 1.5, ..."."""


@dataclass(frozen=True)
class QuerySpec:
    """One query as the prompt file writes it (checked for syntax, not yet placed)."""

    label: str
    tower: str  # "video" or "audio"
    frame: int | None = None  # decoded (pixel) frame of a video query
    x: float | int | None = None  # float in [0, 1]: fraction of the width; int: pixel column
    y: float | int | None = None
    token: str | None = None  # adaptive: the peak of this token group's text->video map ...
    step: int | None = None  # ... at this sampler step (the point is used from the next step on)
    time: float | None = None  # audio query: seconds from the start

    @property
    def adaptive(self) -> bool:
        return self.token is not None



def _is_number(v: Any) -> bool:
    return (is_whole_number(v) or isinstance(v, float)) and math.isfinite(v)


def _name(i: int, item: dict) -> str:
    label = item.get("label") if isinstance(item, dict) else None
    return f"item {i + 1}" + (f" ({label})" if isinstance(label, str) and label else "")


def _coordinate(name: str, value: Any, who: str) -> float | int:
    if not _is_number(value):
        raise QueryProblem(f"{who} has {name} {value!r}; write a fraction in [0, 1] like 0.5 or a whole pixel like 400")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise QueryProblem(f"{who} has {name} {value}, a number with a decimal point outside [0, 1]; write a "
                           f"fraction in [0, 1], or pixels as a whole number")
    if is_whole_number(value) and value < 0:
        raise QueryProblem(f"{who} has {name} {value}; pixels count from 0 at the top left")
    return value


def _whole(name: str, value: Any, who: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_whole_number(value) or value < 0:
        raise QueryProblem(f"{who} has {name} {value!r}; write a whole number of at least 0")
    return value


def _one(i: int, item: Any) -> QuerySpec:
    who = _name(i, item)
    if not isinstance(item, dict):
        raise QueryProblem(f"{who} is {item!r}, not a mapping; write each query like {{frame: 60, x: 0.5, y: 0.3}}")
    label = item.get("label", None)
    if label is not None and (not isinstance(label, (str, int)) or isinstance(label, bool) or str(label) == ""):
        raise QueryProblem(f"{who} has label {label!r}; write a short name like face")
    label = str(label) if label is not None else None
    if "time" in item:
        allowed, tower = AUDIO_KEYS, "audio"
    elif "token" in item:
        allowed, tower = ADAPTIVE_KEYS, "video"
    else:
        allowed, tower = VIDEO_KEYS, "video"
    extra = [k for k in item if k not in allowed]
    if extra:
        kinds = {"audio": "an audio query {time: 1.5}", "video": "a point {frame: 60, x: 0.5, y: 0.3}"}
        shape = ("an adaptive query {token: man, frame: 60, step: 10}" if "token" in item else kinds[tower])
        raise QueryProblem(f"{who} has the key {extra[0]!r}, which {shape} does not take; its keys are "
                           f"{', '.join(allowed)}")
    if tower == "audio":
        t = item["time"]
        if not _is_number(t) or t < 0:
            raise QueryProblem(f"{who} has time {t!r}; write seconds from the start, like 1.5")
        return QuerySpec(label or f"t{float(t):g}s", "audio", time=float(t))
    missing = [k for k in allowed if k != "label" and k not in item]
    if missing:
        raise QueryProblem(f"{who} lacks {' and '.join(missing)}; write e.g. "
                           + ("{token: man, frame: 60, step: 10}" if "token" in item else "{frame: 60, x: 0.5, y: 0.3}"))
    frame = _whole("frame", item["frame"], who)
    if "token" in item:
        token = item["token"]
        if not isinstance(token, (str, int)) or isinstance(token, bool) or str(token).strip() == "":
            raise QueryProblem(f"{who} has token {token!r}; name a word of the prompt, like man")
        step = _whole("step", item["step"], who)
        return QuerySpec(label or f"{token}@{frame}", "video", frame=frame, token=str(token).strip(), step=step)
    x = _coordinate("x", item["x"], who)
    y = _coordinate("y", item["y"], who)
    return QuerySpec(label or f"f{frame}_x{x:g}_y{y:g}", "video", frame=frame, x=x, y=y)


def parse_queries(value: Any) -> list[QuerySpec]:
    """The `queries:` value -> QuerySpecs; raises QueryProblem with a phrase completing "queries ..."."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise QueryProblem(f"must be a list of points, got {value!r}; write e.g. {EXAMPLE}")
    out = [_one(i, item) for i, item in enumerate(value)]
    labels = [q.label for q in out]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise QueryProblem(f"use the label {label!r} twice (items {labels.index(label) + 1} and {i + 1}); give "
                               f"each query its own label")
    for tower in ("video", "audio"):
        n = sum(q.tower == tower for q in out)
        if n > MAX_QUERIES:
            raise QueryProblem(f"list {n} {tower} queries; at most {MAX_QUERIES} fit one capture")
    return out


def check_against_run(queries: list[QuerySpec], num_steps: int) -> None:
    """Checks that need the sampler: an adaptive query's step must leave later steps to capture."""
    for i, q in enumerate(queries):
        if q.adaptive and q.step >= num_steps - 1:
            raise UserError(f"queries: item {i + 1} ({q.label}) is found at step {q.step}, but the sampler runs "
                            f"steps 0 to {num_steps - 1} and the point is used from the step after; pick a step "
                            f"below {num_steps - 1}.")


def _cell(value: float | int, pixels: int, cells: int) -> tuple[float, int]:
    """A fraction (float) or pixel (int) along one axis -> (pixel position, token cell)."""
    p = float(value) * pixels if isinstance(value, float) else float(value) + 0.5  # a pixel's centre
    return p, min(cells - 1, int(p * cells / pixels))


def resolve_queries(queries: list[QuerySpec], *, pixel_frames: int, pixel_size: tuple[int, int],
                    grid: tuple[int, int, int], audio_tokens: int, seconds_per_token: float,
                    stride: int = PIXEL_FRAME_STRIDE) -> list[PlacedQuery]:
    """Place each query on the clip's token grid (video) or audio tokens; out-of-range
    points are a UserError naming the query and what the clip has."""
    F_, h, w = grid
    H, W = pixel_size
    out = []
    for i, q in enumerate(queries):
        who = f"queries: item {i + 1} ({q.label})"
        if q.tower == "audio":
            seconds = audio_tokens * seconds_per_token
            token = int(q.time / seconds_per_token)
            if token >= audio_tokens:
                raise UserError(f"{who} is at {q.time:g} s, past the end of the audio ({seconds:.2f} s); pick a "
                                f"time below {seconds:.2f}.")
            out.append(PlacedQuery(q.label, "audio", audio_token=token, time=q.time))
            continue
        if q.frame >= pixel_frames:
            raise UserError(f"{who} is at frame {q.frame}, but the clip has {pixel_frames} frames (0 to "
                            f"{pixel_frames - 1}); pick a frame in that range.")
        latent = int(latent_frame_of(q.frame, stride))
        if q.adaptive:
            out.append(PlacedQuery(q.label, "video", q.frame, latent, token=q.token, step=q.step))
            continue
        for name, value, size in (("x", q.x, W), ("y", q.y, H)):
            if is_whole_number(value) and value >= size:
                raise UserError(f"{who} has {name} {value} pixels, but the clip is {W}x{H}; write a pixel below "
                                f"{size} or a fraction in [0, 1].")
        py, cy = _cell(q.y, H, h)
        px, cx = _cell(q.x, W, w)
        out.append(PlacedQuery(q.label, "video", q.frame, latent, cy, cx, py, px))
    return out
