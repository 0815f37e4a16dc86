"""Attention processors: what an attention module does with the q, k, v it computed.

Every attention module of the model (self-attention, and the two attentions inside each
cross-attention: to the text and to the other tower) computes its q, k, v (norms, RoPE,
the sequence-parallel swap) and hands them to its processor, diffusers' `set_processor`
idea. The processor returns the output [B, Lq, H, D]; what else it does (keep maps, time a
materialised softmax, train through a differentiable kernel) is its own business.
`FusionModel.set_processor(processor, which=..., towers=..., layers=...)` installs one.

The call: `processor(attn, kind, q, k, v, k_lens=None, key_bias=None)`
    attn      the module (attn.where = (tower, layer) says which one)
    kind      "self", "text" (the cross-attention's text keys) or "fusion" (the other tower)
    q         [B, Lq, H, D], RoPE applied for "self" and "fusion"
    k, v      [B, Lk, H, D] (k RoPE'd likewise)
    k_lens    None or int [B] on the CPU: keys at positions >= k_lens[b] are masked out
    key_bias  None or float [B, Lk], additive logits per key (the folded text padding
              that training uses, see `Tower.embed_text`); only processors that say so take it

Processors here: `AttnProcessor` (plain: the fast kernel, what generation runs) and
`TrainingProcessor` (PyTorch's differentiable SDPA with the key bias, the toy training's).
The capture probe (`probe.probe.CaptureProbe`) is a processor too, and so is the naive
benchmark's materialising one (bench/capture_overhead.py). `attend` gives a subclass the
kernel's log-sum-exp as well, from the very same call: a processor that wants exact
attention probabilities for a few queries or keys computes them as exp(scale q.k - lse)
without forming the matrix, and cannot change the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovi_attn_capture.model.attention import additive_mask, attention

KINDS = ("self", "text", "fusion")


class AttnProcessor:
    """Plain: every attention through the one kernel (attention.attention); nothing kept."""

    def attend(self, q, k, v, k_lens=None):
        """(out [B, Lq, H, D], lse [B, H, Lq] float32) from one kernel call."""
        return attention(q, k, v, k_lens=k_lens)

    def __call__(self, attn, kind: str, q, k, v, k_lens=None, key_bias=None):
        if key_bias is not None:
            raise ValueError(f"{type(self).__name__} takes no key bias (folded text padding); "
                             "install a processor that does, e.g. TrainingProcessor")
        out, _ = self.attend(q, k, v, k_lens)
        return out


PLAIN = AttnProcessor()  # the default of every module


class TrainingProcessor(AttnProcessor):
    """Cross-attention through F.scaled_dot_product_attention, which has a backward pass
    and takes an additive key bias: the toy training folds the zero-padded text rows into
    one key whose logit carries log(number of padded rows) (same softmax, 512 -> n + 1 keys)."""

    def __call__(self, attn, kind: str, q, k, v, k_lens=None, key_bias=None):
        if kind == "self":
            return super().__call__(attn, kind, q, k, v, k_lens)
        mask = None
        if key_bias is not None:
            mask = key_bias[:, None, None, :].to(q.dtype)  # [B, 1, 1, Lk]
        elif k_lens is not None and not bool((k_lens >= k.shape[1]).all()):
            mask = additive_mask(k_lens, k.shape[1], q.dtype, q.device)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask)  # [B, H, Lq, D]
        return out.transpose(1, 2)
