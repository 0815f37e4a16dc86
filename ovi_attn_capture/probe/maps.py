"""Exact attention maps from q, k and the kernel's log-sum-exp.

The kernel that produced an attention output also returned lse = log sum_j exp(s_j),
s_j = scale * q.k_j. So the probability a query puts on key j is exp(s_j - lse), which
needs only the keys we care about: a handful of text tokens instead of 512, computed in
float32 and reduced over heads on the device. For the fusion maps (video <-> audio) every
key matters, so those are computed in query chunks and reduced immediately; the full
[heads, queries, keys] matrix never exists at once.
"""

from __future__ import annotations

import math

import torch

# Upper bound on the float32 scratch one chunk may take (bytes).
CHUNK_BYTES = 64 * 2**20


def _chunks(total: int, per_item_bytes: int, multiple: int = 1):
    """Split range(total) into slices whose scratch fits CHUNK_BYTES, each a multiple of `multiple`."""
    n = max(multiple, (CHUNK_BYTES // max(1, per_item_bytes)) // multiple * multiple)
    for start in range(0, total, n):
        yield slice(start, min(total, start + n))


def reduce_heads(p: torch.Tensor, keep_heads: bool) -> torch.Tensor:
    """[B, H, ...] -> [B, 1, ...] (mean) or unchanged."""
    return p if keep_heads else p.mean(dim=1, keepdim=True)


def text_group_maps(q, k, lse, key_index, key_weight, keep_heads: bool = False) -> torch.Tensor:
    """Probability mass each query puts on each token group.

    q: [B, Lq, H, D]; k: [B, Lk, H, D]; lse: [B, H, Lq] (natural log, scale included);
    key_index: long [J], the keys any group uses; key_weight: float [J, G], how much key j
    counts towards group g (1 for a member; n for one representative of n identical keys).
    Returns float32 [B, Hd, Lq, G] with Hd = H or 1."""
    B, Lq, H, D = q.shape
    scale = 1.0 / math.sqrt(D)
    k_sel = k.index_select(1, key_index).float()  # [B, J, H, D]
    J = k_sel.shape[1]
    weight = key_weight.to(device=q.device, dtype=torch.float32)
    out = []
    for sl in _chunks(Lq, B * H * J * 4 * 2):
        s = torch.einsum("blhd,bjhd->bhlj", q[:, sl].float(), k_sel) * scale  # [B, H, l, J]
        p = torch.exp(s - lse[:, :, sl, None].float())
        out.append(reduce_heads(p, keep_heads) @ weight)  # [B, Hd, l, G]
    return torch.cat(out, dim=2)


def key_probabilities(q, k, lse, k_lens, sl):
    """exp(scale q.k - lse) for the queries in slice sl against all keys, masked keys 0 (fusion maps and
    the self-attention rows of query points)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.einsum("blhd,bkhd->bhlk", q[:, sl].float(), k.float()) * scale  # [B, H, l, Lk]
    p = torch.exp(s - lse[:, :, sl, None].float())
    if k_lens is not None:
        valid = torch.arange(k.shape[1], device=k.device)[None, :] < k_lens.to(k.device)[:, None]
        p = p * valid[:, None, None, :]
    return p


def video_to_audio_maps(q, k, lse, k_lens, grid, keep_heads: bool = False) -> torch.Tensor:
    """Video queries attending to audio keys -> [B, Hd, F, La]: per latent frame, the
    attention over audio tokens averaged over the frame's spatial tokens.

    q: [B, Lv, H, D] video (roped), k: [B, La, H, D] audio (roped), lse: [B, H, Lv]."""
    B, Lv, H, D = q.shape
    F_, h, w = grid
    hw = h * w
    La = k.shape[1]
    rows = []
    for sl in _chunks(F_ * hw, B * H * La * 4 * 2, multiple=hw):
        p = reduce_heads(key_probabilities(q, k, lse, k_lens, sl), keep_heads)  # [B, Hd, l, La]
        rows.append(p.unflatten(2, (-1, hw)).mean(dim=3))  # [B, Hd, frames, La]
    return torch.cat(rows, dim=2)


def audio_to_video_maps(q, k, lse, k_lens, grid, keep_heads: bool = False):
    """Audio queries attending to video keys.

    Returns (per_frame [B, Hd, La, F]: each audio token's mass on each latent frame,
             spatial [B, Hd, F, h, w]: mass from all audio tokens on each video token)."""
    B, La, H, D = q.shape
    F_, h, w = grid
    Lv = F_ * h * w
    per_frame, spatial = [], None
    for sl in _chunks(La, B * H * k.shape[1] * 4 * 2):
        p = reduce_heads(key_probabilities(q, k, lse, k_lens, sl), keep_heads)[..., :Lv]  # [B, Hd, l, Lv]
        per_frame.append(p.unflatten(3, (F_, h * w)).sum(dim=4))  # [B, Hd, l, F]
        part = p.sum(dim=2)  # [B, Hd, Lv]
        spatial = part if spatial is None else spatial + part
    return torch.cat(per_frame, dim=2), spatial.unflatten(2, (F_, h, w))
