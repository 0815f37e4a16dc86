"""Float64 references for the exact-map tests: attention probabilities computed the slow way."""

import math

import torch


def softmax64(q, k, k_lens=None):
    """Every query's probabilities over every key, in float64, with keys past k_lens masked.

    q: [B, Lq, H, D], k: [B, Lk, H, D], k_lens: [B] or None -> [B, H, Lq, Lk]."""
    s = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if k_lens is not None:
        valid = torch.arange(k.shape[1])[None, :] < k_lens[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1)
