"""The one attention entry point that every attention call of the model goes through.

`attention(q, k, v, k_lens)` returns the output and, from the very same kernel call, the
softmax log-sum-exp (natural log, float32, scale included). Capture recovers exact
probabilities for a few keys as p = exp(scale * q.k - lse) without ever forming the
attention matrix, and since plain generation calls the same kernel, switching capture on
cannot change a single bit of the output.

Backends, in order of preference: flash-attn 3, flash-attn 2, PyTorch's SDPA kernels
(flash / efficient on CUDA, the flash kernel on CPU), and `math`, the reference.
Layout everywhere: q [B, Lq, H, D], k and v [B, Lk, H, D] (Wan's layout).
"""

from __future__ import annotations

import math
import os

import torch

try:  # flash-attn 3 (Hopper)
    import flash_attn_interface as _fa3  # type: ignore
except ImportError:  # pragma: no cover - not installed on CPU machines
    _fa3 = None
try:  # flash-attn 2
    import flash_attn as _fa2  # type: ignore
except ImportError:  # pragma: no cover
    _fa2 = None

BACKENDS = ("flash3", "flash2", "sdpa", "math")
_forced: str | None = os.environ.get("OVI_ATTN_BACKEND") or None


def set_backend(name: str | None) -> None:
    """Force a backend for every later call (None: pick the best available)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    _forced = name


def available_backends(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """Backends that can run on this device and dtype, best first (flash-attn: half only)."""
    device = torch.device(device)
    names = []
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if _fa3 is not None:
            names.append("flash3")
        if _fa2 is not None:
            names.append("flash2")
    names += ["sdpa", "math"]
    return names


def backend_for(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> str:
    if _forced is not None:
        return _forced
    return available_backends(device, dtype)[0]


def attention(q, k, v, k_lens=None, *, backend: str | None = None):
    """Softmax attention with optional key lengths.

    q: [B, Lq, H, D]; k, v: [B, Lk, H, D]; k_lens: None or int tensor [B] (keys at
    positions >= k_lens[b] are masked out). Returns (out [B, Lq, H, D] in q's dtype,
    lse [B, H, Lq] float32, the natural-log log-sum-exp of scale * q.k over unmasked keys).
    """
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    if k_lens is not None and bool((k_lens >= Lk).all()):  # k_lens lives on the CPU: no device sync
        k_lens = None  # every key valid: the unmasked kernel computes the same thing
    name = backend or backend_for(q.device, q.dtype)
    fn = {"flash3": _flash3, "flash2": _flash2, "sdpa": _sdpa, "math": _math}[name]
    out, lse = fn(q, k, v, k_lens)
    return out.to(q.dtype), lse.float()


def key_mask(k_lens, Lk: int, device) -> torch.Tensor:
    """Boolean [B, Lk], True where a key is valid."""
    return torch.arange(Lk, device=device)[None, :] < k_lens.to(device)[:, None]


# ----------------------------------------------------------------------------- math
def _math(q, k, v, k_lens, compute_dtype=torch.float32):
    """The reference: explicit scores and softmax in float32 (or float64 for tests)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    qh = q.to(compute_dtype).transpose(1, 2)  # [B, H, Lq, D]
    kh = k.to(compute_dtype).transpose(1, 2)
    vh = v.to(compute_dtype).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    if k_lens is not None:
        valid = key_mask(k_lens, k.shape[1], q.device)[:, None, None, :]
        s = s.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [B, H, Lq]
    p = torch.exp(s - lse[..., None])
    out = (p @ vh).transpose(1, 2)  # [B, Lq, H, D]
    return out, lse


def reference_attention(q, k, v, k_lens=None):
    """Float64 reference used by tests: (out float64, lse float64, probabilities)."""
    out, lse = _math(q, k, v, k_lens, compute_dtype=torch.float64)
    return out, lse


# ----------------------------------------------------------------------------- sdpa
def _additive_mask(k_lens, Lk, dtype, device):
    valid = key_mask(k_lens, Lk, device)  # [B, Lk]
    mask = torch.zeros(valid.shape, dtype=dtype, device=device)
    return mask.masked_fill(~valid, float("-inf"))[:, None, None, :]  # [B, 1, 1, Lk]


def _sdpa(q, k, v, k_lens):
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    B, H, Lq, _ = qh.shape
    Lk = kh.shape[2]
    if q.device.type == "cpu":
        mask = None if k_lens is None else _additive_mask(k_lens, Lk, q.dtype, q.device)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, attn_mask=mask)
        return out.transpose(1, 2), lse
    if k_lens is None and q.dtype in (torch.float16, torch.bfloat16):
        res = torch.ops.aten._scaled_dot_product_flash_attention(qh, kh, vh)
        out, lse = res[0], res[1]
    else:
        bias = None
        if k_lens is not None:
            # The efficient kernel wants the bias rows 16-element aligned: pad the keys with
            # masked-out zeros up to a multiple of 16 (they get exactly zero weight).
            pad = (-Lk) % 16
            kh = torch.nn.functional.pad(kh, (0, 0, 0, pad))
            vh = torch.nn.functional.pad(vh, (0, 0, 0, pad))
            bias = _additive_mask(k_lens, Lk + pad, q.dtype, q.device).expand(B, H, Lq, Lk + pad)
        res = torch.ops.aten._scaled_dot_product_efficient_attention(qh, kh, vh, bias, True)
        out, lse = res[0], res[1]
    return out.transpose(1, 2), lse.reshape(B, H, -1)[..., :Lq]


# ----------------------------------------------------------------------------- flash-attn
def _varlen_inputs(q, k, v, k_lens):
    """Pack keys of different lengths the way flash-attn's varlen API wants them."""
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    lens = [int(n) for n in k_lens.cpu()] if k_lens is not None else [Lk] * B
    cu_q = torch.arange(0, (B + 1) * Lq, Lq, dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(q.device)
    kp = torch.cat([k[b, :n] for b, n in enumerate(lens)])
    vp = torch.cat([v[b, :n] for b, n in enumerate(lens)])
    return q.reshape(B * Lq, H, D), kp, vp, cu_q, cu_k, Lq, Lk


def _flash2(q, k, v, k_lens):  # pragma: no cover - needs CUDA and flash-attn
    B, Lq, H, D = q.shape
    if k_lens is None:
        out, lse, _ = _fa2.flash_attn_func(q, k, v, return_attn_probs=True)
        return out, lse  # lse [B, H, Lq]
    qp, kp, vp, cu_q, cu_k, mq, mk = _varlen_inputs(q, k, v, k_lens)
    out, lse, _ = _fa2.flash_attn_varlen_func(qp, kp, vp, cu_q, cu_k, mq, mk, return_attn_probs=True)
    return out.view(B, Lq, H, D), lse.view(H, B, Lq).transpose(0, 1)  # varlen lse: [H, total_q]


def _fa3_call(fn, *args):
    """flash-attn 3 returns (out, lse) with return_attn_probs=True; early betas always did."""
    try:
        res = fn(*args, return_attn_probs=True)
    except TypeError:
        res = fn(*args)
    return res[0], res[1]


def _flash3(q, k, v, k_lens):  # pragma: no cover - needs Hopper and flash-attn 3
    B, Lq, H, D = q.shape
    if k_lens is None:
        out, lse = _fa3_call(_fa3.flash_attn_func, q, k, v)
        return out, lse.view(B, H, Lq)
    qp, kp, vp, cu_q, cu_k, mq, mk = _varlen_inputs(q, k, v, k_lens)
    out, lse = _fa3_call(_fa3.flash_attn_varlen_func, qp, kp, vp, cu_q, cu_k, mq, mk)
    return out.view(B, Lq, H, D), lse.view(H, B, Lq).transpose(0, 1)
