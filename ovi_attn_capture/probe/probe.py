"""The capture probe: the cross-attention processor that turns (q, k, lse) into maps.

Installed with `model.set_processor(probe)`; it runs the same kernel call as the plain
processor (model/processors.py) and reads the maps off its q, k and log-sum-exp.

The sampler tells the probe which step and branch the next model pass belongs to
(`begin_pass`); the probe ignores layers, steps and kinds that were not asked for, reduces
what was asked for on the device and hands small tensors to the sink (the background
writer). It never changes a value the model computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ovi_attn_capture.model.processors import AttnProcessor
from ovi_attn_capture.probe import maps, self_maps
from ovi_attn_capture.probe.query_probe import QueryPlan, QueryTracker


@dataclass
class KeyGroups:
    """Which text keys feed which groups, for one prompt (one tower, one branch).

    key_index [J] and key_weight [J, G] as `maps.text_group_maps` wants them; `present`
    marks groups found in this prompt (absent ones are written as NaN)."""

    key_index: torch.Tensor
    key_weight: torch.Tensor
    present: torch.Tensor  # bool [G]
    n_real: int  # real tokens of the prompt, EOS included
    pad_group: int | None  # column of `<pad>`, whose weight is the number of padding keys


def key_groups(members: list[list[int] | None], pad_group: int | None, n_real: int, text_len: int,
               device="cpu") -> KeyGroups:
    """members[g]: token indices of group g in this prompt (None: not in this prompt)."""
    keys = sorted({j for m in members if m for j in m})
    pad_rep = n_real if (pad_group is not None and n_real < text_len) else None
    if pad_rep is not None:
        keys.append(pad_rep)
    index = {j: i for i, j in enumerate(keys)}
    weight = torch.zeros(len(keys), len(members))
    for g, m in enumerate(members):
        for j in m or []:
            weight[index[j], g] = 1.0
    if pad_rep is not None:
        # The zero-padded rows are identical, so are their keys: one stands for all of them.
        weight[index[pad_rep], pad_group] = float(text_len - n_real)
    present = torch.tensor([m is not None for m in members])
    if pad_group is not None:
        present[pad_group] = True
    return KeyGroups(torch.tensor(keys, dtype=torch.long, device=device), weight.to(device),
                     present.to(device), n_real, pad_group)


@dataclass
class CapturePlan:
    steps: list[int]  # sampler step indices to capture
    layers: list[int]
    kinds: list[str]  # text_video, text_audio, video_audio, audio_video
    branches: list[str]  # ["cond"], ["uncond"] or both
    keep_heads: bool
    map_dtype: torch.dtype
    video_grid: tuple[int, int, int]
    groups: dict = field(default_factory=dict)  # (branch, tower) -> KeyGroups
    queries: QueryPlan | None = None  # query points whose self-attention rows are captured


class CaptureProbe(AttnProcessor):
    def __init__(self, plan: CapturePlan, sink, sp=None):
        self.plan = plan
        self.sink = sink  # None: compute and reduce but keep nothing (a sequence-parallel rank that does not write)
        self.sp = sp  # sequence parallel: q, k, lse hold this rank's heads; maps are reduced across the group
        self._step_pos = {s: i for i, s in enumerate(plan.steps)}
        self._layer_pos = {l: i for i, l in enumerate(plan.layers)}
        self._branch_pos = {b: i for i, b in enumerate(plan.branches)}
        self.active: tuple[int, int, str] | None = None  # (step pos, branch pos, branch name)
        self.maps_written = 0
        self.stop_check = None  # called at every cross-attention: raises to stop at a layer boundary
        self.queries = QueryTracker(plan.queries) if plan.queries is not None else None

    def __call__(self, attn, kind: str, q, k, v, k_lens=None, key_bias=None):
        """The plain kernel call (the output is the plain processor's, bit for bit), then the maps."""
        if key_bias is not None:  # refused, as the plain processor does
            return super().__call__(attn, kind, q, k, v, k_lens, key_bias)
        out, lse = self.attend(q, k, v, k_lens)
        if kind == "text":
            self.on_text_attention(attn.where, q, k, lse)
        elif kind == "fusion":
            self.on_fusion_attention(attn.where, q, k, lse, k_lens)
        else:
            self.on_self_attention(attn.where, q, k, lse, k_lens)
        return out

    def begin_pass(self, step: int, branch: str) -> bool:
        """Called before each model evaluation; returns whether this pass is captured."""
        if self.queries is not None:
            self._record_found(self.queries.begin_pass(step, branch))
        if step in self._step_pos and branch in self._branch_pos:
            self.active = (self._step_pos[step], self._branch_pos[branch], branch)
        else:
            self.active = None
        return self.active is not None

    def end_pass(self) -> None:
        self.active = None
        if self.queries is not None:
            self._record_found(self.queries.end_pass())

    def _record_found(self, found) -> None:
        """Adaptive queries just found: their cells go into the file's query coordinates."""
        if self.sink is not None:
            for position, y, x in found:
                self.sink.set_query_cell(position, y, x)

    def _target(self, layer: int):
        if self.active is None or layer not in self._layer_pos:
            return None
        step_pos, branch_pos, branch = self.active
        return step_pos, branch_pos, branch, self._layer_pos[layer]

    @property
    def _keep_heads(self) -> bool:
        """Per-head maps from the map functions: asked for, or needed for the reduction across ranks."""
        return self.plan.keep_heads or self.sp is not None

    def _heads(self, m: torch.Tensor) -> torch.Tensor:
        """[Hd, ...] maps of this rank's heads -> the one-process result (identity without sequence parallel)."""
        return m if self.sp is None else self.sp.reduce_maps(m, self.plan.keep_heads)

    def _emit(self, var, branch_pos, step_pos, layer_pos, values: torch.Tensor) -> None:
        if self.sink is not None:
            self.sink.put(var, branch_pos, step_pos, layer_pos, values.to(self.plan.map_dtype))
        self.maps_written += 1

    def text_target(self, where):
        """(kind, target, key groups) when this text attention is captured, else None."""
        tower, layer = where
        kind = "text_video" if tower == "video" else "text_audio"
        target = self._target(layer)
        if target is None or kind not in self.plan.kinds:
            return None
        return kind, target, self.plan.groups[(target[2], tower)]

    def emit_text_groups(self, where, kind, target, kg: KeyGroups, m: torch.Tensor) -> None:
        """m: [Hd, Lq, G] group probabilities -> the file's [G, Hd, (F, h, w) | La] map."""
        step_pos, branch_pos, _, layer_pos = target
        m = m.permute(2, 0, 1)  # [G, Hd, Lq]
        m[~kg.present] = float("nan")
        if where[0] == "video":
            m = m.unflatten(2, self.plan.video_grid)  # [G, Hd, F, h, w]
        self._emit(kind, branch_pos, step_pos, layer_pos, m)

    @torch.no_grad()
    def on_text_attention(self, where, q, k, lse) -> None:
        if self.stop_check is not None:
            self.stop_check()
        if self.queries is not None and self.queries.wants_text(where[0]):
            self.queries.add_text(q, k, lse, self._keep_heads, self._heads)
        found = self.text_target(where)
        if found is None:
            return
        kind, target, kg = found
        m = self._heads(maps.text_group_maps(q, k, lse, kg.key_index, kg.key_weight, self._keep_heads)[0])  # [Hd, Lq, G]
        self.emit_text_groups(where, kind, target, kg, m)

    @torch.no_grad()
    def on_fusion_attention(self, where, q, k, lse, k_lens) -> None:
        if self.stop_check is not None:
            self.stop_check()
        tower, layer = where
        target = self._target(layer)
        if target is None:
            return
        step_pos, branch_pos, _, layer_pos = target
        keep = self._keep_heads
        grid = self.plan.video_grid
        if tower == "video" and "video_audio" in self.plan.kinds:
            m = self._heads(maps.video_to_audio_maps(q, k, lse, k_lens, grid, keep)[0])  # [Hd, F, La]
            self._emit("video_audio", branch_pos, step_pos, layer_pos, m)
        elif tower == "audio" and "audio_video" in self.plan.kinds:
            per_frame, spatial = maps.audio_to_video_maps(q, k, lse, k_lens, grid, keep)
            self._emit("audio_video", branch_pos, step_pos, layer_pos, self._heads(per_frame[0]))  # [Hd, La, F]
            self._emit("audio_video_spatial", branch_pos, step_pos, layer_pos, self._heads(spatial[0]))  # [Hd, F, h, w]

    @torch.no_grad()
    def on_self_attention(self, where, q, k, lse, k_lens) -> None:
        """Self-attention rows of the query points: q, k roped as the kernel saw them, lse its own."""
        if self.queries is None:
            return
        tower, layer = where
        target = self._target(layer)
        kind = "video_self" if tower == "video" else "audio_self"
        active = self.queries.active(tower, q.device) if target is not None else None
        if active is None:
            return
        positions, index = active
        step_pos, branch_pos, _, layer_pos = target
        qp = self.plan.queries
        if tower == "video":
            m = self_maps.video_query_maps(q, k, lse, index, qp.grid, k_lens, self._keep_heads)  # [B, Hd, Q, F, h, w]
            total = len(qp.video)
        else:
            m = self_maps.audio_query_maps(q, k, lse, index, qp.audio_tokens, k_lens, self._keep_heads)  # [B, Hd, Q, La]
            total = len(qp.audio)
        m = self._heads(m[0]).transpose(0, 1)  # [Q, Hd, ...]
        if len(positions) < total:  # adaptive queries not found yet: NaN rows
            full = torch.full((total, *m.shape[1:]), float("nan"), dtype=m.dtype, device=m.device)
            full[positions] = m
            m = full
        self._emit(kind, branch_pos, step_pos, layer_pos, m)
