"""The one attention entry point that every attention call of the model goes through.

`attention(q, k, v, k_lens)` returns the output and, from the very same kernel call, the
softmax log-sum-exp (natural log, float32, scale included). Capture recovers exact
probabilities for a few keys as p = exp(scale * q.k - lse) without ever forming the
attention matrix, and since plain generation calls the same kernel, switching capture on
cannot change a single bit of the output.

Backends, in order of preference: flash-attn 3, flash-attn 2, PyTorch's SDPA kernels
(flash / efficient on CUDA, the flash kernel on CPU), and `math`, the reference.
Layout everywhere: q [B, Lq, H, D], k and v [B, Lk, H, D] (Wan's layout). Each kernel's
calling convention and return layout, per version, is written beside its wrapper below and
held to by CPU stand-ins in tests/test_kernel_contracts.py; bench/gpu_check.py runs the
real kernels on a GPU.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings

import torch

from ovi_attn_render.common.errors import UserError

try:  # flash-attn 3 (Hopper): its wheel installs the top-level module flash_attn_interface
    import flash_attn_interface as _fa3  # type: ignore
except ImportError:  # pragma: no cover - not installed on CPU machines
    _fa3 = None
try:  # flash-attn 2
    import flash_attn as _fa2  # type: ignore
except ImportError:  # pragma: no cover
    _fa2 = None

# PyTorch's SDPA kernels, reached through one name so the contract tests can swap in CPU
# stand-ins of the CUDA ops (tests/test_kernel_contracts.py).
_aten = torch.ops.aten

BACKENDS = ("flash3", "flash2", "sdpa", "math")
_forced: str | None = os.environ.get("OVI_ATTN_BACKEND") or None


class NoLogSumExp(UserError):
    """The installed kernel returns no log-sum-exp, which capture needs (an environment to fix)."""


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
    try:
        out, lse = fn(q, k, v, k_lens)
    except NoLogSumExp as e:
        if backend is not None or _forced is not None:
            raise  # the user asked for this kernel by name: say so rather than switch
        _drop_flash3(str(e))  # once, before any output exists: every later call agrees
        return attention(q, k, v, k_lens)
    return out.to(q.dtype), lse.float()


def _drop_flash3(why: str) -> None:
    global _fa3
    warnings.warn(f"{why} Using the next attention backend instead.", RuntimeWarning, stacklevel=3)
    _fa3 = None


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


# ----------------------------------------------------------------------------- sdpa
# Signatures as in PyTorch 2.4-2.13's native_functions.yaml (outputs by position):
#   _scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, *, attn_mask, scale)
#       -> (output, logsumexp [B, H, Lq])
#   _scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, return_debug_mask, *, scale)
#       -> (output, logsumexp [B, H, Lq], cum_seq_q, cum_seq_k, max_q, max_k, rng_state, unused, debug_mask)
#   _scaled_dot_product_efficient_attention(q, k, v, attn_bias, compute_log_sumexp, dropout_p, is_causal, *, scale)
#       -> (output, log_sumexp [B, H, ceil(Lq / 32) * 32], philox_seed, philox_offset)
# q, k, v (and output) are [B, H, L, D] views with a contiguous last dim.
def additive_mask(k_lens, Lk, dtype, device):
    valid = key_mask(k_lens, Lk, device)  # [B, Lk]
    mask = torch.zeros(valid.shape, dtype=dtype, device=device)
    return mask.masked_fill(~valid, float("-inf"))[:, None, None, :]  # [B, 1, 1, Lk]


def _is_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def _sdpa(q, k, v, k_lens):
    if not _is_cuda(q):
        return _sdpa_cpu(q, k, v, k_lens)
    if k_lens is None and q.dtype in (torch.float16, torch.bfloat16):
        return _sdpa_flash(q, k, v)
    return _sdpa_efficient(q, k, v, k_lens)  # the CUDA flash kernel takes no mask


def _sdpa_cpu(q, k, v, k_lens):
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    mask = None if k_lens is None else additive_mask(k_lens, kh.shape[2], q.dtype, q.device)
    out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2), lse


def _sdpa_flash(q, k, v):
    """The CUDA flash kernel (half precision, no mask)."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    res = _aten._scaled_dot_product_flash_attention(qh, kh, vh)
    return res[0].transpose(1, 2), res[1]  # lse [B, H, Lq]


def _sdpa_efficient(q, k, v, k_lens):
    """The CUDA memory-efficient kernel (any float dtype, additive key mask)."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    B, H, Lq, _ = qh.shape
    Lk = kh.shape[2]
    bias = None
    if k_lens is not None:
        # The kernel wants the bias rows 16-element aligned: pad the keys with masked-out
        # zeros up to a multiple of 16 (they get exactly zero weight, also where a length
        # runs past the keys: hence the clamp).
        pad = (-Lk) % 16
        kh = torch.nn.functional.pad(kh, (0, 0, 0, pad))
        vh = torch.nn.functional.pad(vh, (0, 0, 0, pad))
        bias = additive_mask(k_lens.clamp(max=Lk), Lk + pad, q.dtype, q.device).expand(B, H, Lq, Lk + pad)
    res = _aten._scaled_dot_product_efficient_attention(qh, kh, vh, bias, True)
    return res[0].transpose(1, 2), res[1][..., :Lq]  # lse padded to a multiple of 32: cut


# ----------------------------------------------------------------------------- flash-attn
# flash-attn 2 (flash_attn/flash_attn_interface.py, v2.0-v2.8.3):
#   flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, ...,
#                   return_attn_probs=False) -> out | (out, softmax_lse [B, H, Lq], S_dmask)
#   flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ...,
#                          return_attn_probs=False) -> out | (out, softmax_lse, S_dmask)
#   varlen softmax_lse: [H, total_q] since v2.6.0, [B, H, max_seqlen_q] in v2.0-v2.5.
# flash-attn 3 (hopper/flash_attn_interface.py), by the dates of its sources:
#   2024-07 .. 2025-05: both functions return (out, softmax_lse), no return_attn_probs;
#   2025-01-07 .. 2025-02-16: varlen takes seqused_q, seqused_k as required arguments
#       placed before max_seqlen_q (hence keyword arguments below);
#   2025-07-11 .. 2025-08-29: both return out alone (no lse at all);
#   2025-08-29 on: return_attn_probs=True -> (out, softmax_lse).
#   softmax_lse: [B, H, Lq] dense, [H, total_q] varlen, in every version.
def _varlen_inputs(q, k, v, k_lens):
    """Pack keys of different lengths the way flash-attn's varlen API wants them."""
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    lens = [min(int(n), Lk) for n in k_lens.cpu()] if k_lens is not None else [Lk] * B
    cu_q = torch.arange(0, (B + 1) * Lq, Lq, dtype=torch.int32, device=q.device)
    cu_k = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(q.device)
    kp = torch.cat([k[b, :n] for b, n in enumerate(lens)])  # [total_k, H, D]
    vp = torch.cat([v[b, :n] for b, n in enumerate(lens)])
    packed = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=Lq, max_seqlen_k=Lk)
    return q.reshape(B * Lq, H, D), kp, vp, packed


def _varlen_lse(lse, B, H, Lq):
    """A varlen call's lse -> [B, H, Lq], from either layout flash-attn has returned."""
    if lse.dim() == 3:  # flash-attn 2.0-2.5: [B, H, max_seqlen_q], each sequence padded
        return lse[:, :, :Lq]
    return lse.reshape(H, B, Lq).transpose(0, 1)  # [H, total_q], queries packed batch-major


def _flash2(q, k, v, k_lens):
    B, Lq, H, D = q.shape
    if k_lens is None:
        out, lse, _ = _fa2.flash_attn_func(q, k, v, return_attn_probs=True)
        return out, lse  # lse [B, H, Lq]
    qp, kp, vp, packed = _varlen_inputs(q, k, v, k_lens)
    out, lse, _ = _fa2.flash_attn_varlen_func(qp, kp, vp, **packed, return_attn_probs=True)
    return out.view(B, Lq, H, D), _varlen_lse(lse, B, H, Lq)


@functools.lru_cache(maxsize=None)
def _parameters(fn) -> frozenset:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: assume the newest API
        return frozenset({"return_attn_probs"})


def _fa3_call(fn, *args, **kwargs):
    """Call a flash-attn 3 function the way its installed version wants; (out, lse)."""
    params = _parameters(fn)
    if "return_attn_probs" in params:
        kwargs["return_attn_probs"] = True
    if "cu_seqlens_q" in kwargs and "seqused_q" in params:
        kwargs.update(seqused_q=None, seqused_k=None)  # required (no default) in early 2025
    res = fn(*args, **kwargs)
    if isinstance(res, torch.Tensor):
        raise NoLogSumExp("The installed flash-attn 3 returns no log-sum-exp (a build of its 2025-07-11 to "
                          "2025-08-29 sources); update flash-attn 3 or set OVI_ATTN_BACKEND=sdpa.")
    return res[0], res[1]


def _flash3(q, k, v, k_lens):
    B, Lq, H, D = q.shape
    if k_lens is None:
        out, lse = _fa3_call(_fa3.flash_attn_func, q, k, v)
        return out, lse.view(B, H, Lq)
    qp, kp, vp, packed = _varlen_inputs(q, k, v, k_lens)
    out, lse = _fa3_call(_fa3.flash_attn_varlen_func, qp, kp, vp, **packed)
    return out.view(B, Lq, H, D), _varlen_lse(lse, B, H, Lq)
