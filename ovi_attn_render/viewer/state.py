"""A request's query parameters -> one checked `ViewState` (what the page shows).

Every parameter is checked here; a bad one raises `BadParameter` with one line that names
it and what it accepts, which the server answers with 400. Selections use the CLI's own
grammar and names (`layers=10-19`, `norm=step`, `branch=uncond`), so a state maps one to
one onto an `ovi-attn render` command line (see compute.render_command).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ovi_attn_render.contract import selection
from ovi_attn_render.views.query import TRACK_METHODS
from ovi_attn_render.views.video import NORMS

BRANCH_CHOICES = ("cond", "uncond", "diff")
REDUCE_CHOICES = ("mean", "max")
_CMAP = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")


class BadParameter(ValueError):
    """A malformed or out-of-range query parameter: answered with 400 and this one line."""


@dataclass
class ViewState:
    file: int = 0
    tokens: list[str] = field(default_factory=list)  # group labels, as the capture names them
    frame: int | None = None  # pixel frame of the decoded video; None: the middle one
    step: int | None = None  # sampler step number (a readable one); None: the last readable
    layers: str | None = None  # CLI selection spec; None: every captured layer
    heads: str | None = None  # CLI selection spec; None: reduce over every head
    branch: str = "cond"  # cond | uncond | diff (cond - uncond)
    reduce: str = "mean"  # over layers and heads
    norm: str = "global"
    renorm: bool = False
    cmap: str = "inferno"
    alpha: float = 0.5
    y: int | None = None  # a clicked token cell (patch queries)
    x: int | None = None
    query: str | None = None  # a query point's label, video or audio (self-attention maps)
    track: str = "soft"  # how its track is found: soft (soft-argmax) or argmax
    query_file: int | None = None  # whose query point the page's query panel shows (save); None: file


def _one(q: Mapping, name: str) -> str | None:
    v = q.get(name)
    return None if v is None or v == "" else str(v)


def int_param(q: Mapping, name: str, lo: int = 0, hi: int = 10**9) -> int | None:
    v = _one(q, name)
    if v is None:
        return None
    if not re.fullmatch(r"-?\d{1,9}", v):
        raise BadParameter(f"parameter {name}={v[:40]!r} is not an integer.")
    n = int(v)
    if not lo <= n <= hi:
        raise BadParameter(f"parameter {name}={n} is out of range; give {lo} to {hi}.")
    return n


def _choice(q: Mapping, name: str, choices: Sequence[str], default: str) -> str:
    v = _one(q, name) or default
    if v not in choices:
        raise BadParameter(f"parameter {name}={v[:40]!r} is not one of {', '.join(choices)}.")
    return v


def _spec(q: Mapping, name: str) -> str | None:
    v = _one(q, name)
    if v is None or v == "all":
        return None
    if len(v) > 200:
        raise BadParameter(f"parameter {name} is {len(v)} characters long; give a selection like 10-19.")
    try:  # the syntax here (selection.py); the values against the file when the state is drawn
        selection.parse(v)
    except selection.SelectionError as bad:
        raise BadParameter(f"parameter {name} is not a valid selection: {bad}") from None
    return v


def parse_state(q: Mapping, files: int, tokens: Sequence[str] = ()) -> ViewState:
    """Check every parameter the routes understand. `tokens`: the values of repeated `token=`."""
    s = ViewState()
    s.file = int_param(q, "file", 0, files - 1) or 0
    if len(tokens) > 8:
        raise BadParameter(f"{len(tokens)} tokens asked for; the page overlays at most 8.")
    for t in tokens:
        if not 0 < len(t) <= 200:
            raise BadParameter("parameter token is empty or too long; give a captured group label.")
    s.tokens = list(tokens)
    s.frame = int_param(q, "frame")
    s.step = int_param(q, "step")
    s.layers = _spec(q, "layers")
    s.heads = _spec(q, "heads")
    s.branch = _choice(q, "branch", BRANCH_CHOICES, "cond")
    s.reduce = _choice(q, "reduce", REDUCE_CHOICES, "mean")
    s.norm = _choice(q, "norm", NORMS, "global")
    s.renorm = _choice(q, "renorm", ("0", "1", "false", "true"), "0") in ("1", "true")
    cmap = _one(q, "cmap") or "inferno"
    if not _CMAP.fullmatch(cmap):
        raise BadParameter(f"parameter cmap={cmap[:40]!r} is not a colormap name.")
    s.cmap = cmap
    alpha = _one(q, "alpha")
    if alpha is not None:
        try:
            s.alpha = float(alpha)
        except ValueError:
            raise BadParameter(f"parameter alpha={alpha[:40]!r} is not a number.") from None
        if not 0.0 <= s.alpha <= 1.0:
            raise BadParameter(f"parameter alpha={s.alpha:g} is outside 0..1.")
    s.y = int_param(q, "y")
    s.x = int_param(q, "x")
    s.query = _one(q, "query")
    if s.query is not None and len(s.query) > 200:
        raise BadParameter("parameter query is too long; give a captured query label.")
    s.track = _choice(q, "track", TRACK_METHODS, "soft")
    s.query_file = int_param(q, "query_file", 0, files - 1)
    return s
