"""One selection grammar for steps, layers, frames and heads: prompt files, CLI flags, the
viewer and the API all read it here.

A selection is `all` (or None), an int, a YAML list of ints and strings, `{every: N}`, or
a string of comma-separated parts; each part is
    `n`        one value              (`-1`: the last available one, `-2` the one before)
    `a-b`      values a..b inclusive  (`10-19`)
    `a:b[:c]`  values a <= v < b, every c-th (a Python slice over values; ends may be empty)
    `every N`  the same as `::N`: the first available value and every N-th after it
    `all`      every available value
Values are coordinate values (sampler step numbers, block indices, pixel frames, head
numbers), never positions: capture selects from steps 0..num_steps-1 and the model's
blocks, render from what the file holds, with the same words. Out-of-range parts are
errors, never clipped: a value that is not available, or a range with an end outside the
available span, raises a UserError of one sentence naming the option and what is available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovi_attn_render.common.errors import UserError

_INT = r"-?\d+"
GRAMMAR_HINT = "5, -1, 10-19, 0:50:5, every 5, all or a comma-separated list of those"


class SelectionError(ValueError):
    """A phrase that completes "<option> ...", e.g. "7 is not available; captured layers: 0-2."
    The caller prefixes the option as the user wrote it (`--layers`, `p.yaml, line 7: capture.layers`)."""


@dataclass(frozen=True)
class Part:
    """One part of a selection: a single value or a half-open range of values."""

    raw: str  # as written, for messages
    start: int | None
    stop: int | None  # exclusive
    step: int = 1
    single: bool = False  # an explicit value: it must exist


def is_whole_number(value: Any) -> bool:
    """An int (numpy's too) that is not a bool: what a YAML or JSON whole number parses to."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _part(raw: str) -> Part | None:
    """One comma-separated piece of text -> a Part (None for `all`)."""
    low = raw.lower().replace(" ", "")
    if low == "all":
        return None
    if re.fullmatch(_INT, low):
        v = int(low)
        return Part(raw, v, v + 1, single=True)
    if m := re.fullmatch(r"(\d+)-(\d+)", low):
        a, b = int(m[1]), int(m[2])
        if b < a:
            raise SelectionError(f"range '{raw}' runs backwards; write it as {b}-{a}.")
        return Part(raw, a, b + 1)
    every = re.fullmatch(r"every(\d+)", low)
    m = every or re.fullmatch(rf"({_INT})?:({_INT})?(?::(\d+))?", low)
    if m is None:
        raise SelectionError(f"'{raw}' is not understood; write {GRAMMAR_HINT}.")
    if every:
        start, stop, step = None, None, int(every[1])
    else:
        start, stop = (int(m[1]) if m[1] else None), (int(m[2]) if m[2] else None)
        step = int(m[3]) if m[3] else 1
    if step == 0:
        raise SelectionError(f"'{raw}' has a zero stride; use a stride of at least 1, like 0:50:5 or every 5.")
    return Part(raw, start, stop, step)


def parse(value: Any) -> list[Part] | None:
    """A selection -> its parts, or None for "all". Checks the syntax only (no values needed),
    so a prompt file is checked before the model's depth is known."""
    if value is None:
        return None
    if isinstance(value, dict):  # YAML `{every: 5}`
        if set(value) != {"every"} or not is_whole_number(value["every"]):
            raise SelectionError(f"as a mapping must be {{every: N}} with a whole number N; write {GRAMMAR_HINT}.")
        value = f"every {value['every']}"
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise SelectionError(f"is an empty list; write {GRAMMAR_HINT}.")
    parts: list[Part] = []
    for item in items:
        if is_whole_number(item):
            item = str(int(item))
        if not isinstance(item, str):
            raise SelectionError(f"holds {item!r}, which is not a selection; write {GRAMMAR_HINT}.")
        pieces = [p.strip() for p in item.split(",") if p.strip()]
        if not pieces:
            raise SelectionError(f"is empty; write {GRAMMAR_HINT}.")
        for piece in pieces:
            part = _part(piece)
            if part is None:
                return None  # `all` anywhere selects everything
            parts.append(part)
    return parts


def describe_values(values) -> str:
    """[0,1,2,3,7] -> '0-3,7': compact text for messages, captions and file names."""
    vals = [int(v) for v in values]
    if not vals:
        return "none"
    out, a, prev = [], vals[0], vals[0]
    for v in vals[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(a) if a == prev else f"{a}-{prev}")
        if v is not None:
            a = prev = v
    return ",".join(out)


def _single(part: Part, avail: np.ndarray, what: str) -> int:
    """Position of one explicit value; negative values count from the end (-1: the last)."""
    v = part.start
    if v < 0:
        v = int(avail[v]) if -v <= len(avail) else None
    hits = np.flatnonzero(avail == v) if v is not None else []
    if len(hits) == 0:
        raise SelectionError(f"{part.raw} is not available; {what}: {describe_values(avail)}.")
    return int(hits[0])


def _range(part: Part, avail: np.ndarray, what: str) -> list[int]:
    """Positions of the available values inside a range whose ends lie in the available span."""
    first, last = int(avail.min()), int(avail.max())
    lo = first if part.start is None else part.start
    hi = last + 1 if part.stop is None else part.stop
    lo = lo + last + 1 if lo < 0 else lo  # a negative end counts back from the end, as in Python
    hi = hi + last + 1 if hi < 0 else hi
    if lo < first or hi > last + 1 or lo > last:
        raise SelectionError(f"'{part.raw}' reaches outside the available values; {what}: {describe_values(avail)}.")
    hits = [i for i, v in enumerate(avail) if lo <= v < hi and (v - lo) % part.step == 0]
    if not hits:
        raise SelectionError(f"'{part.raw}' selects nothing; {what}: {describe_values(avail)}.")
    return hits


def select(value: Any, available, what: str) -> list[int]:
    """Positions (sorted, unique) into `available` named by the selection; raises
    SelectionError (a phrase, see above). `what` names the values in messages
    ("captured layers", "sampler steps")."""
    avail = np.asarray(available).astype(np.int64).reshape(-1)
    if len(avail) == 0:
        raise SelectionError(f"has nothing to select from; no {what} exist.")
    parts = parse(value)
    if parts is None:
        return list(range(len(avail)))
    chosen: set[int] = set()
    for part in parts:
        if part.single:
            chosen.add(_single(part, avail, what))
        else:
            chosen.update(_range(part, avail, what))
    return sorted(chosen)


def resolve(spec: Any, available, name: str, what: str | None = None, option: str | None = None) -> list[int]:
    """`select` for the render side: positions into `available`, or a UserError
    "--layers 7 is not available; captured layers: 0-2." (`option` defaults to --name)."""
    try:
        return select(spec, available, what or f"{name} available")
    except SelectionError as bad:
        raise UserError(f"{option or '--' + name} {bad}") from None


def parse_threshold(text: str | None) -> float | None:
    """`--threshold 0.5` -> 0.5 (on the normalised map, 0..1); `otsu` or None -> None."""
    if text is None or str(text).lower() == "otsu":
        return None
    try:
        t = float(text)
    except ValueError:
        raise UserError(f"--threshold '{text}' is not a number; give a value in [0, 1] or 'otsu'.") from None
    if not 0.0 <= t <= 1.0:
        raise UserError(f"--threshold {t} is outside [0, 1]; it applies to the normalised map.")
    return t
