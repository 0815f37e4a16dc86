"""Ulysses sequence parallelism: one generation spread over the K ranks of a group.

What upstream Ovi does (ovi/modules/model.py, fusion.py; written here from that reading):
- After the patch embedding every rank holds the whole token sequence; it pads it with
  zero tokens to a multiple of K and keeps its own contiguous 1/K (`shard`). Per-token
  time modulations are sharded the same way. Norms, projections and FFNs then run on
  the local tokens only.
- Around each attention an all-to-all swaps the split: [B, L/K, H, D] (local tokens,
  all heads) -> [B, L, H/K, D] (all tokens, 1/K of the heads) (`to_heads`), the kernel
  runs on those heads, and the inverse all-to-all brings the output back (`to_sequence`).
  RoPE is applied after the swap, where every token sits at its true position.
- Text keys/values are computed from the full 512-token context on every rank and only
  this rank's heads are kept (`local_heads`): no communication. The other tower's
  fusion keys/values are projected from that tower's local tokens and swapped like q.
- The head's output is all-gathered along the sequence (`gather`).

Differences from upstream, for exactness: after `to_heads` the padding tokens are cut
off again (the kernel sees exactly the one-process sequence, so no padded keys need
masking), and capture reduces each map over heads across the group (`reduce_maps`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class SequenceParallel:
    """The collectives of one sequence-parallel group (size K, this rank's index in it)."""

    def __init__(self, group, rank: int, size: int, total_heads: int):
        self.group, self.rank, self.size = group, rank, size
        self.total_heads = total_heads  # heads of a tower (both towers have the same count in Ovi)
        self.lengths: dict[str, int] = {}  # tower -> its true token count, set per forward
        self.calls = 0  # collectives started: ranks that agree on it are still in step

    # ------------------------------------------------------------------ tokens
    def padded(self, length: int) -> int:
        return -(-length // self.size) * self.size

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [B, ceil(L/K), ...]: this rank's contiguous slice, zero-padded at the end."""
        L = x.shape[1]
        pad = self.padded(L) - L
        if pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
        return x.chunk(self.size, dim=1)[self.rank].contiguous()

    def shard_if_per_token(self, x: torch.Tensor) -> torch.Tensor:
        """Time embeddings are [B, 1, ...] (one t for all tokens) or [B, L, ...] (i2v): shard only the latter."""
        return x if x.shape[1] == 1 else self.shard(x)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L/K, C] local tokens -> [B, L_padded, C] on every rank (rank order = token order)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self.calls += 1
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ heads
    def to_heads(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """[B, L/K, H, D] -> [B, length, H/K, D]: all tokens (padding cut), this rank's heads."""
        B, Ls, H, D = x.shape
        K = self.size
        send = x.reshape(B, Ls, K, H // K, D).permute(2, 0, 1, 3, 4).contiguous()  # [K, B, Ls, H/K, D]: row p -> rank p
        recv = torch.empty_like(send)  # recv[p]: rank p's tokens of my heads
        self.calls += 1
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 0, 2, 3, 4).reshape(B, K * Ls, H // K, D)[:, :length]

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H/K, D] -> [B, ceil(L/K), H, D]: back to this rank's tokens with every head."""
        B, L, Hk, D = x.shape
        K = self.size
        pad = self.padded(L) - L
        if pad:
            x = torch.cat([x, x.new_zeros(B, pad, Hk, D)], dim=1)
        Ls = x.shape[1] // K
        send = x.reshape(B, K, Ls, Hk, D).permute(1, 0, 2, 3, 4).contiguous()  # [K, B, Ls, H/K, D]: tokens of rank p
        recv = torch.empty_like(send)  # recv[p]: my tokens, heads of rank p
        self.calls += 1
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 2, 0, 3, 4).reshape(B, Ls, K * Hk, D)

    def local_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H, D] computed in full on every rank -> [B, L, H/K, D] (no communication)."""
        return x.chunk(self.size, dim=2)[self.rank]

    # ------------------------------------------------------------------ capture
    @torch.no_grad()
    def reduce_maps(self, m: torch.Tensor, keep_heads: bool) -> torch.Tensor:
        """m: float32 [H/K, ...] maps of this rank's heads -> the one-process result on every rank:
        [H, ...] (heads: all, gathered in head order) or [1, ...] (the mean over all H heads:
        per-rank sums added by an all-reduce, divided by H). Only these small reduced maps travel."""
        if keep_heads:
            parts = [torch.empty_like(m) for _ in range(self.size)]
            self.calls += 1
            dist.all_gather(parts, m.contiguous(), group=self.group)
            return torch.cat(parts, dim=0)
        total = m.sum(dim=0, keepdim=True)
        self.calls += 1
        dist.all_reduce(total, group=self.group)
        return total / self.total_heads
