"""Exact self-attention maps of a few chosen query tokens, from q, k and the kernel's lse.

Self-attention in the video tower is all-to-all: every patch attends to every patch of the
clip (27,900 keys at 720x720, 5 s). Forming that matrix is out of the question, but for a
handful of chosen query rows it is cheap: the kernel that computed the attention output
also returned lse = log sum_j exp(s_j), s_j = scale * q.k_j, so the probability the query
puts on key j is exp(s_j - lse) exactly, for every key, from one [Q, Lk] product per head.
Rows are reduced over heads on the device; the work is chunked over queries so the float32
scratch stays under maps.CHUNK_BYTES whatever the clip's length.
"""

from __future__ import annotations

import torch

from ovi_attn_capture.probe import maps


def query_rows(q: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
    """q [B, Lq, H, D] -> the chosen rows [B, Q, H, D] (query_index: long [Q], on q's device)."""
    return q.index_select(1, query_index)


def query_probabilities(q, k, lse, query_index, k_lens=None, keep_heads: bool = False) -> torch.Tensor:
    """Softmax probabilities of the chosen queries over every key.

    q: [B, Lq, H, D] and k: [B, Lk, H, D] exactly as the kernel saw them (RoPE applied);
    lse: [B, H, Lq] float32 (natural log, scale included); query_index: long [Q];
    k_lens: None or [B] valid keys per sample (keys past it get probability 0).
    Returns float32 [B, Hd, Q, Lk], Hd = H (keep_heads) or 1 (the head mean). Each row
    sums to 1 over the valid keys, up to the kernel's own lse rounding."""
    B, Lq, H, D = q.shape
    index = query_index.to(q.device)
    q_sel = query_rows(q, index)  # [B, Q, H, D]
    lse_sel = lse.index_select(2, index)  # [B, H, Q]
    out = []
    for sl in maps._chunks(q_sel.shape[1], B * H * k.shape[1] * 4 * 2):
        p = maps.key_probabilities(q_sel, k, lse_sel, k_lens, sl)  # [B, H, q, Lk], masked keys 0
        out.append(maps.reduce_heads(p, keep_heads))  # [B, Hd, q, Lk]
    return torch.cat(out, dim=2)


def video_query_maps(q, k, lse, query_index, grid, k_lens=None, keep_heads: bool = False) -> torch.Tensor:
    """Video self-attention rows laid out on the clip: [B, Hd, Q, F, h, w]."""
    p = query_probabilities(q, k, lse, query_index, k_lens, keep_heads)  # [B, Hd, Q, Lk]
    F_, h, w = grid
    return p[..., : F_ * h * w].unflatten(3, (F_, h, w))


def audio_query_maps(q, k, lse, query_index, audio_tokens: int, k_lens=None, keep_heads: bool = False):
    """Audio self-attention rows over audio time: [B, Hd, Q, La]."""
    return query_probabilities(q, k, lse, query_index, k_lens, keep_heads)[..., :audio_tokens]


def token_of_point(frame: int, y: int, x: int, grid) -> int:
    """Raster index of a video token (latent frame, row, column) on the patch grid."""
    F_, h, w = grid
    return (frame * h + y) * w + x
