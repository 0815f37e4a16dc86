"""One selection grammar for every render option that picks entries of a dimension.

A spec is a comma-separated list of parts; each part is
    `n`        one value              (`-1`: the last available one)
    `a-b`      values a..b inclusive  (`10-19`)
    `a:b[:c]`  values a <= v < b, every c-th (Python slice on values; ends may be empty)
Values are coordinate values (sampler step numbers, block indices, pixel frames, head
numbers), never positions in the file, so `--layers 10-19` means blocks 10 to 19 whatever
subset was captured. `resolve` turns a spec into sorted positions into the available
coordinate and raises a UserError that states what is available when nothing matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ovi_attn_render.common.errors import UserError

_INT = r"-?\d+"


@dataclass(frozen=True)
class Part:
    """One comma-separated part of a spec: a single value or a range of values."""

    start: int | None
    stop: int | None  # exclusive
    step: int = 1
    single: bool = False  # an explicit value: it must exist


def parse_spec(spec: str, name: str) -> list[Part]:
    """`0:50:5`, `10-19,25`, `-1` -> parts; a malformed spec raises a UserError."""
    parts: list[Part] = []
    for raw in str(spec).replace(" ", "").split(","):
        if raw == "":
            continue
        if re.fullmatch(_INT, raw):
            v = int(raw)
            parts.append(Part(v, v + 1, 1, single=True))
        elif m := re.fullmatch(r"(\d+)-(\d+)", raw):
            a, b = int(m[1]), int(m[2])
            if b < a:
                raise UserError(f"--{name} range '{raw}' runs backwards; write it as {b}-{a}.")
            parts.append(Part(a, b + 1))
        elif m := re.fullmatch(rf"({_INT})?:({_INT})?(?::(\d+))?", raw):
            step = int(m[3]) if m[3] else 1
            if step == 0:
                raise UserError(f"--{name} '{raw}' has a zero stride; use a positive stride like 0:50:5.")
            parts.append(Part(int(m[1]) if m[1] else None, int(m[2]) if m[2] else None, step))
        else:
            raise UserError(f"--{name} '{raw}' is not understood; write values like 5, 10-19, 0:50:5 "
                            f"or a comma-separated list of those.")
    if not parts:
        raise UserError(f"--{name} is empty; give values like 5, 10-19 or 0:50:5.")
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


def resolve(spec: str | None, available, name: str, what: str | None = None) -> list[int]:
    """Positions (sorted, unique) into `available` selected by spec; None selects all.

    A single value that is not available is an error; a range keeps the available values
    inside it and is an error only when none are."""
    avail = np.asarray(available).astype(np.int64)
    what = what or f"{name} available"
    if len(avail) == 0:
        raise UserError(f"no {name} values are available in this capture.")
    if spec is None or str(spec).strip() in ("", "all", ":"):
        return list(range(len(avail)))
    chosen: set[int] = set()
    for p in parse_spec(spec, name):
        if p.single:
            v = p.start if p.start >= 0 else int(avail[p.start]) if -p.start <= len(avail) else None
            hits = np.flatnonzero(avail == v) if v is not None else []
            if len(hits) == 0:
                raise UserError(f"--{name} {p.start} is not available; {what}: {describe_values(avail)}.")
            chosen.add(int(hits[0]))
            continue
        lo = int(avail.min()) if p.start is None else p.start
        hi = int(avail.max()) + 1 if p.stop is None else p.stop
        if lo < 0:
            lo = int(avail.max()) + 1 + lo
        if hi < 0:
            hi = int(avail.max()) + 1 + hi
        wanted = set(range(lo, hi, p.step))
        hits = [i for i, v in enumerate(avail) if int(v) in wanted]
        if not hits:
            raise UserError(f"--{name} '{spec}' selects nothing; {what}: {describe_values(avail)}.")
        chosen.update(hits)
    return sorted(chosen)


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
