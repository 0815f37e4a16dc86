"""Which query tokens the probe follows in self-attention, and how adaptive ones are found.

A fixed query is a token index from the start. An adaptive query ("the peak of token `man`
at frame 60, step 10") is found during generation: in the positive pass of its step, every
video text attention adds the head-mean probability of that token's keys for the queries
of its latent frame (all layers, captured or not); when that pass ends, the peak cell of
the sum becomes the query, used from the next step on. Its file coordinates are written
then (sink.set_query_cell).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ovi_attn_render.contract.queries import PlacedQuery

from ovi_attn_capture.probe import maps
from ovi_attn_capture.probe.self_maps import token_of_point


@dataclass
class QueryPlan:
    video: list[PlacedQuery]  # the file's `query` dimension, in order
    audio: list[PlacedQuery]  # the file's `audio_query` dimension
    grid: tuple[int, int, int]
    audio_tokens: int
    adaptive_keys: dict = field(default_factory=dict)  # video query position -> KeyGroups of its token (cond)


class QueryTracker:
    """Token indices of the queries now followed, per tower; finds adaptive ones."""

    def __init__(self, plan: QueryPlan):
        self.plan = plan
        self.video_tokens: list[int | None] = [
            None if q.adaptive else token_of_point(q.latent_frame, q.y, q.x, plan.grid) for q in plan.video]
        self.audio_tokens: list[int] = [q.audio_token for q in plan.audio]
        self._sums: dict[int, torch.Tensor] = {}  # adaptive query position -> [h*w] summed over layers
        self._finding: int | None = None  # the step whose positive pass is being summed
        self._step = -1  # the step of the pass running now
        self._index_cache: dict = {}

    # ------------------------------------------------------------------ passes
    def pending_at(self, step: int) -> list[int]:
        return [i for i, q in enumerate(self.plan.video) if q.adaptive and q.step == step
                and self.video_tokens[i] is None]

    def begin_pass(self, step: int, branch: str) -> list[tuple[int, int, int]]:
        """Start a model pass; returns the adaptive queries found by the pass that just ended,
        as (position, y, x)."""
        found = self._finish()
        self._step = step
        if branch == "cond" and self.pending_at(step):
            self._finding = step
        return found

    def end_pass(self) -> list[tuple[int, int, int]]:
        return self._finish()

    def _finish(self) -> list[tuple[int, int, int]]:
        if self._finding is None:
            return []
        _, h, w = self.plan.grid
        found = []
        for i in self.pending_at(self._finding):
            s = self._sums.get(i)
            if s is None:  # no text attention ran (a single-tower model): the frame's centre
                y, x = h // 2, w // 2
            else:
                peak = int(s.argmax())
                y, x = peak // w, peak % w
            self.video_tokens[i] = token_of_point(self.plan.video[i].latent_frame, y, x, self.plan.grid)
            found.append((i, y, x))
        self._finding, self._sums = None, {}
        return found

    # ------------------------------------------------------------------ text maps of adaptive tokens
    def wants_text(self, tower: str) -> bool:
        return self._finding is not None and tower == "video"

    def add_text(self, q, k, lse, keep_heads: bool, heads) -> None:
        """q [B, Lv, H, D], k [B, 512, H, D], lse [B, H, Lv] of a video text attention in the
        finding pass; `heads` turns this rank's per-head maps into the one-process result
        (the probe's own reduction, so sequence parallel ranks agree)."""
        _, h, w = self.plan.grid
        hw = h * w
        for i in self.pending_at(self._finding):
            kg = self.plan.adaptive_keys[i]
            f = self.plan.video[i].latent_frame
            rows = slice(f * hw, (f + 1) * hw)
            m = maps.text_group_maps(q[:, rows], k, lse[:, :, rows], kg.key_index, kg.key_weight, keep_heads)[0]
            s = heads(m).mean(0).reshape(-1)  # [Hd, hw, 1] -> [hw], the mean over heads
            self._sums[i] = s if i not in self._sums else self._sums[i] + s

    # ------------------------------------------------------------------ what to compute
    def _in_use(self, tower: str, i: int) -> bool:
        """An adaptive query counts from the step after the one that found it (both branches
        of a step then agree on which queries they hold)."""
        q = self.plan.video[i] if tower == "video" else self.plan.audio[i]
        return not q.adaptive or self._step > q.step

    def active(self, tower: str, device) -> tuple[list[int], torch.Tensor] | None:
        """(positions in the file's query dim, token indices [Q] on the device) of the queries
        followed now, or None when there are none."""
        tokens = self.video_tokens if tower == "video" else self.audio_tokens
        pos = [i for i, t in enumerate(tokens) if t is not None and self._in_use(tower, i)]
        if not pos:
            return None
        key = (tower, tuple(tokens[i] for i in pos), str(device))
        if key not in self._index_cache:  # built once per set of tokens: no host->device copy per layer
            self._index_cache[key] = torch.tensor(key[1], dtype=torch.long, device=device)
        return pos, self._index_cache[key]
