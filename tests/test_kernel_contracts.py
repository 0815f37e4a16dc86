"""Contract tests of the CUDA attention kernels' Python APIs, on the CPU.

No CUDA kernel runs in CI, yet every real user runs one. So each kernel's documented
Python signature and return layout is mimicked here by a stand-in that computes with a
float64 reference on the CPU, checks its inputs the way the real kernel does, and returns
exactly the real tuple, in the real layout. Our wrappers (ovi_attn_capture/model/attention.py)
run through these stand-ins with and without key masks, and out and lse must match the
reference. Stand-ins with one deliberate layout slip show that such a slip fails here.

Signatures mimicked (read from the sources):
- flash-attn 2: flash_attn/flash_attn_interface.py at v2.8.3 (flash_attn_func,
  flash_attn_varlen_func); the varlen lse layout of v2.0-v2.5 ([B, H, max_seqlen_q],
  csrc/flash_attn/flash_api.cpp) against [H, total_q] from v2.6.0 on.
- flash-attn 3: hopper/flash_attn_interface.py at 7f67966c (2024-07-11, first release),
  7a802796 (2025-01-07, seqused_q/seqused_k required and before max_seqlen_q), a09abcd3
  (2025-02-16, seqused optional), ed209409 (2025-07-11, returns out only) and 203b9b3d
  (2025-08-29, return_attn_probs). lse [B, H, Lq] dense, [H, total_q] varlen
  (hopper/flash_api.cpp, every version).
- PyTorch: aten::_scaled_dot_product_flash_attention and
  aten::_scaled_dot_product_efficient_attention as in native_functions.yaml (torch 2.4-2.13);
  the efficient kernel's lse is [B, H, ceil(Lq / 32) * 32]
  (aten/src/ATen/native/transformers/cuda/attention.cu, kAlignLSE).
"""

from __future__ import annotations

import inspect
import math
import types

import pytest
import torch

from ovi_attn_capture.model import attention as attn

B, LQ, LK, H, D = 2, 37, 19, 3, 64  # Lq not a multiple of 32 and Lk not of 16: the paddings matter
MASKS = {"none": None, "short": [LK, 11], "over": [LK + 3, 4]}  # "over": a length past the keys


# ----------------------------------------------------------------------------- reference

def reference(q, k, v, k_lens=None, bias=None):
    """float64 softmax attention in Wan's layout: q [B, Lq, H, D], k, v [B, Lk, H, D];
    keys at positions >= k_lens[b] masked; bias [B, H, Lq, Lk] added to the scores.
    Returns (out float64 [B, Lq, H, D], lse float64 [B, H, Lq])."""
    s = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias.double()
    if k_lens is not None:
        valid = torch.arange(k.shape[1])[None, :] < torch.as_tensor(k_lens)[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.einsum("bhlk,bkhd->blhd", torch.exp(s - lse[..., None]), v.double()), lse


def _qkv(dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, LQ, H, D, generator=g) * 2
    k = torch.randn(B, LK, H, D, generator=g) * 2
    v = torch.randn(B, LK, H, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _half_only(*ts):
    for t in ts:
        assert t.dtype in (torch.float16, torch.bfloat16), "FlashAttention only supports fp16 and bf16"
        assert t.stride(-1) == 1, "Input tensor must have contiguous last dimension"


# ----------------------------------------------------------------------------- flash-attn 2 stand-in

def _fa2_varlen_core(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """What the varlen kernel computes: per sequence b, q[cu_q[b]:cu_q[b+1]] against
    k[cu_k[b]:cu_k[b+1]]. Checks what the kernel relies on (it cannot check bounds)."""
    _half_only(q, k, v)
    assert q.dim() == 3 and k.dim() == 3, "varlen q, k, v are packed [total, heads, dim]"
    for cu, total, longest in ((cu_seqlens_q, q.shape[0], max_seqlen_q), (cu_seqlens_k, k.shape[0], max_seqlen_k)):
        assert cu.dtype == torch.int32 and cu.dim() == 1, "cu_seqlens must have dtype int32"
        assert int(cu[0]) == 0 and int(cu[-1]) == total, "cu_seqlens must start at 0 and end at the packed length"
        assert bool((cu[1:] >= cu[:-1]).all()) and int((cu[1:] - cu[:-1]).max()) <= longest
    assert len(cu_seqlens_q) == len(cu_seqlens_k)
    outs, lses = [], []
    for b in range(len(cu_seqlens_q) - 1):
        qs, ks = slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])), slice(int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1]))
        out, lse = reference(q[None, qs], k[None, ks], v[None, ks])
        outs.append(out[0].to(q.dtype))  # [Lq_b, H, D]
        lses.append(lse[0].float())  # [H, Lq_b]
    return torch.cat(outs), lses


def fa2_module(varlen_lse: str = "packed"):
    """flash_attn 2 as `import flash_attn` gives it. varlen_lse: "packed" ([H, total_q],
    v2.6.0 on), "padded" ([B, H, max_seqlen_q], v2.0-v2.5) or "transposed" (a slip)."""

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        _half_only(q, k, v)
        assert softmax_scale is None and not causal and dropout_p == 0.0
        out, lse = reference(q, k, v)
        # S_dmask: the Python layer asks for it only with dropout (return_softmax and dropout_p > 0)
        return (out.to(q.dtype), lse.float(), None) if return_attn_probs else out.to(q.dtype)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                               deterministic=False, return_attn_probs=False, block_table=None):
        assert softmax_scale is None and not causal and dropout_p == 0.0
        out, lses = _fa2_varlen_core(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        if varlen_lse == "padded":
            lse = torch.full((len(lses), q.shape[1], max_seqlen_q), float("inf"))  # padding is garbage
            for b, part in enumerate(lses):
                lse[b, :, : part.shape[1]] = part
        else:
            lse = torch.cat(lses, dim=1)  # [H, total_q]
            if varlen_lse == "transposed":
                lse = lse.t().contiguous()  # [total_q, H]: same size, wrong order
        return (out, lse, None) if return_attn_probs else out

    return types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func)


# ----------------------------------------------------------------------------- flash-attn 3 stand-ins

def _fa3_dense(q, k, v, softmax_scale, causal):
    _half_only(q, k, v)
    assert softmax_scale is None and not causal
    out, lse = reference(q, k, v)
    return out.to(q.dtype), lse.float()  # lse [B, H, Lq]


def _fa3_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                seqused_q=None, seqused_k=None):
    assert softmax_scale is None and not causal and seqused_q is None and seqused_k is None
    out, lses = _fa2_varlen_core(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return out, torch.cat(lses, dim=1)  # [H, total_q]


def fa3_module(version: str):
    """`import flash_attn_interface` of the flash-attn 3 build whose sources are of `version`."""
    if version == "2024-07":  # 7f67966c / dfe1a59e: always (out, lse)
        def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
            return _fa3_dense(q, k, v, softmax_scale, causal)

        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   softmax_scale=None, causal=False):
            return _fa3_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal)

    elif version == "2025-01":  # 7a802796: seqused_q, seqused_k required, before max_seqlen_q
        def flash_attn_func(q, k, v, softmax_scale=None, causal=False, q_descale=None, k_descale=None,
                            v_descale=None, window_size=(-1, -1), sink_token_length=0, softcap=0.0, num_splits=1,
                            pack_gqa=None, deterministic=False, sm_margin=0):
            return _fa3_dense(q, k, v, softmax_scale, causal)

        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q,
                                   max_seqlen_k, softmax_scale=None, causal=False, q_descale=None, k_descale=None,
                                   v_descale=None, window_size=(-1, -1), sink_token_length=0, softcap=0.0,
                                   num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0):
            return _fa3_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                               seqused_q, seqused_k)

    elif version in ("2025-02", "2025-07", "2025-08", "2025-08-blh"):
        # a09abcd3 .. db4baba2: (out, lse); ed209409: out alone; 203b9b3d: lse when asked.
        # "2025-08-blh" is a slip: the dense lse comes back as [B, Lq, H].
        def finish(out, lse, return_attn_probs):
            if version == "2025-02":
                return out, lse
            if version == "2025-07":
                return out
            if version == "2025-08-blh" and lse.dim() == 3:
                lse = lse.transpose(1, 2).contiguous()
            return (out, lse) if return_attn_probs else out

        def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                            v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                            pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
            return finish(*_fa3_dense(q, k, v, softmax_scale, causal), return_attn_probs)

        def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None,
                                   seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None,
                                   k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0,
                                   softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0,
                                   return_attn_probs=False):
            out, lse = _fa3_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                                   causal, seqused_q, seqused_k)
            return finish(out, lse, return_attn_probs)

        if not version.startswith("2025-08"):  # before 203b9b3d the keyword did not exist
            flash_attn_func = _without_parameter(flash_attn_func, "return_attn_probs")
            flash_attn_varlen_func = _without_parameter(flash_attn_varlen_func, "return_attn_probs")
    else:
        raise ValueError(version)
    return types.SimpleNamespace(flash_attn_func=flash_attn_func, flash_attn_varlen_func=flash_attn_varlen_func)


def _without_parameter(fn, name: str):
    """fn as a version that lacks keyword `name`: passing it is a TypeError, as there, and
    inspect.signature shows the version's signature."""
    sig = inspect.signature(fn)
    sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != name])

    def api(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        return fn(*bound.args, **bound.kwargs)

    api.__signature__ = sig
    return api


# ----------------------------------------------------------------------------- PyTorch SDPA CUDA op stand-ins

def _bhld_to_blhd(t):
    return t.transpose(1, 2)


def sdpa_ops(lse_padding: str = "end"):
    """Stand-ins of torch.ops.aten's CUDA SDPA ops; records which ops were called.
    lse_padding: "end" (the real kernel) or "front" (a slip)."""
    calls = []

    def _scaled_dot_product_flash_attention(query, key, value, dropout_p=0.0, is_causal=False,
                                            return_debug_mask=False, *, scale=None):
        calls.append("flash")
        _half_only(query, key, value)
        assert query.dim() == 4 and query.shape[1] == key.shape[1], "inputs are [B, H, L, D]"
        assert dropout_p == 0.0 and not is_causal and scale is None
        out, lse = reference(*(_bhld_to_blhd(t) for t in (query, key, value)))
        out = out.to(query.dtype).transpose(1, 2)  # [B, H, Lq, D], the kernel's own transposed view
        Lq, Lk = query.shape[2], key.shape[2]
        empty = torch.empty(0)
        return out, lse.float(), empty, empty, Lq, Lk, torch.empty(2, dtype=torch.int64), empty, empty

    def _scaled_dot_product_efficient_attention(query, key, value, attn_bias, compute_log_sumexp, dropout_p=0.0,
                                                is_causal=False, *, scale=None):
        calls.append("efficient")
        Bq, Hq, Lq, _ = query.shape
        Lk = key.shape[2]
        for t in (query, key, value):  # 128-bit loads: rows and heads start aligned
            align = 16 // t.element_size()
            assert t.stride(-1) == 1 and t.stride(2) % align == 0 and (t.shape[1] <= 1 or t.stride(1) % align == 0), \
                "query/key/value is not correctly aligned"
        if attn_bias is not None:
            assert attn_bias.dtype == query.dtype, "invalid dtype for bias - should match query's dtype"
            assert attn_bias.dim() == 4, "Bias expected in BMHK format"
            assert tuple(attn_bias.shape) == (Bq, Hq, Lq, Lk), "attn_bias: wrong shape"
            assert attn_bias.stride(-1) == 1
            align = 16 // attn_bias.element_size()  # 128-bit loads
            for dim, size in ((0, Bq), (1, Hq), (2, Lq)):
                assert size <= 1 or attn_bias.stride(dim) % align == 0, f"attn_bias is not correctly aligned ({dim})"
        out, lse = reference(*(_bhld_to_blhd(t) for t in (query, key, value)),
                             bias=attn_bias)
        padded = math.ceil(Lq / 32) * 32 if compute_log_sumexp else 0
        lse_out = torch.full((Bq, Hq, padded), float("inf"))  # the padding is never written
        if compute_log_sumexp:
            where = slice(0, Lq) if lse_padding == "end" else slice(padded - Lq, padded)
            lse_out[..., where] = lse.float()
        out = out.to(query.dtype).transpose(1, 2)
        return out, lse_out, torch.empty((), dtype=torch.int64), torch.empty((), dtype=torch.int64)

    ops = types.SimpleNamespace(_scaled_dot_product_flash_attention=_scaled_dot_product_flash_attention,
                                _scaled_dot_product_efficient_attention=_scaled_dot_product_efficient_attention)
    return ops, calls


# ----------------------------------------------------------------------------- the check

def check_wrapper(backend: str, mask: str, dtype=torch.bfloat16):
    """Run attention() with one backend (its module patched in by the caller) and compare."""
    q, k, v = _qkv(dtype)
    k_lens = None if MASKS[mask] is None else torch.tensor(MASKS[mask])
    out, lse = attn.attention(q, k, v, k_lens, backend=backend)
    ref_out, ref_lse = reference(q, k, v, k_lens)
    assert out.shape == (B, LQ, H, D) and out.dtype == dtype
    assert lse.shape == (B, H, LQ) and lse.dtype == torch.float32
    assert torch.allclose(lse.double(), ref_lse, atol=1e-5, rtol=1e-6), "lse differs from the reference"
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3}.get(dtype, 1e-5)  # the stand-ins round out to the input dtype
    assert torch.allclose(out.double(), ref_out, atol=tol, rtol=tol), "out differs from the reference"


@pytest.fixture
def cuda_sdpa(monkeypatch):
    """attention(backend="sdpa") takes its CUDA branch, through the op stand-ins."""
    ops, calls = sdpa_ops()
    monkeypatch.setattr(attn, "_aten", ops)
    monkeypatch.setattr(attn, "_is_cuda", lambda t: True)
    return calls


@pytest.mark.parametrize("variant", ["packed", "padded"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_flash2_wrapper_meets_the_contract(monkeypatch, variant, mask):
    monkeypatch.setattr(attn, "_fa2", fa2_module(variant))
    check_wrapper("flash2", mask)


@pytest.mark.parametrize("version", ["2024-07", "2025-01", "2025-02", "2025-08"])
@pytest.mark.parametrize("mask", list(MASKS))
def test_flash3_wrapper_meets_the_contract_of_each_beta(monkeypatch, version, mask):
    monkeypatch.setattr(attn, "_fa3", fa3_module(version))
    check_wrapper("flash3", mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("mask", list(MASKS))
def test_cuda_sdpa_wrapper_meets_the_contract(cuda_sdpa, dtype, mask):
    check_wrapper("sdpa", mask, dtype)
    # The flash kernel takes no mask and half precision only: everything else goes to the efficient one.
    expected = "flash" if (MASKS[mask] is None or min(MASKS[mask]) >= LK) and dtype != torch.float32 else "efficient"
    assert cuda_sdpa == [expected]


def test_no_lse_flash3_build_falls_back_once_when_chosen_automatically(monkeypatch):
    monkeypatch.setattr(attn, "_fa3", fa3_module("2025-07"))
    monkeypatch.setattr(attn, "_forced", None)
    # As on a GPU: flash3 is the first choice while the module is there.
    monkeypatch.setattr(attn, "available_backends",
                        lambda device, dtype=torch.bfloat16: (["flash3"] if attn._fa3 is not None else []) + ["sdpa", "math"])
    q, k, v = _qkv()
    with pytest.warns(RuntimeWarning, match="returns no log-sum-exp"):
        out, lse = attn.attention(q, k, v)
    assert attn._fa3 is None  # later calls pick the next backend directly
    ref_out, ref_lse = reference(q, k, v)
    assert torch.allclose(lse.double(), ref_lse, atol=1e-4) and torch.allclose(out.double(), ref_out, atol=3e-2)


def test_no_lse_flash3_build_asked_for_by_name_is_one_clear_error(monkeypatch):
    from ovi_attn_render.common.errors import UserError

    monkeypatch.setattr(attn, "_fa3", fa3_module("2025-07"))
    with pytest.raises(UserError, match="update flash-attn 3 or set OVI_ATTN_BACKEND=sdpa"):
        attn.attention(*_qkv(), backend="flash3")


# ----------------------------------------------------------------------------- slips are caught

def test_a_transposed_varlen_lse_is_caught(monkeypatch):
    monkeypatch.setattr(attn, "_fa2", fa2_module("transposed"))
    check_wrapper("flash2", "none")  # the dense path is unaffected
    with pytest.raises(AssertionError, match="lse differs"):
        check_wrapper("flash2", "short")


def test_a_dense_lse_in_the_wrong_order_is_caught(monkeypatch):
    monkeypatch.setattr(attn, "_fa3", fa3_module("2025-08-blh"))
    with pytest.raises(AssertionError, match="lse differs"):
        check_wrapper("flash3", "none")


def test_lse_padding_at_the_wrong_end_is_caught(monkeypatch):
    ops, _ = sdpa_ops(lse_padding="front")
    monkeypatch.setattr(attn, "_aten", ops)
    monkeypatch.setattr(attn, "_is_cuda", lambda t: True)
    with pytest.raises(AssertionError, match="lse differs"):
        check_wrapper("sdpa", "short")


def test_a_wrapper_reading_the_packed_lse_wrongly_is_caught(monkeypatch):
    monkeypatch.setattr(attn, "_fa2", fa2_module("packed"))
    monkeypatch.setattr(attn, "_varlen_lse", lambda lse, b, h, lq: lse.reshape(b, h, lq))  # ignores [H, total_q]
    with pytest.raises(AssertionError, match="lse differs"):
        check_wrapper("flash2", "short")


def test_the_stand_ins_reject_what_the_real_kernels_reject():
    """The stand-ins are strict where the kernels are: a wrapper that fed them badly would fail."""
    q, k, v = _qkv(torch.float32)
    with pytest.raises(AssertionError, match="fp16 and bf16"):
        fa2_module().flash_attn_func(q, k, v, return_attn_probs=True)
    ops, _ = sdpa_ops()
    qh, kh, vh = (t.transpose(1, 2) for t in _qkv())
    bias = torch.zeros(B, H, LQ, LK, dtype=torch.float32)
    with pytest.raises(AssertionError, match="dtype for bias"):
        ops._scaled_dot_product_efficient_attention(qh, kh, vh, bias, True)
    bias = torch.zeros(B, 1, 1, LK, dtype=torch.bfloat16).expand(B, H, LQ, LK)  # 19-element rows: misaligned
    with pytest.raises(AssertionError, match="not correctly aligned"):
        ops._scaled_dot_product_efficient_attention(qh, kh, vh, bias, True)
    with pytest.raises(TypeError):  # this beta has no return_attn_probs
        fa3_module("2025-02").flash_attn_func(*_qkv(), return_attn_probs=True)
    with pytest.raises(TypeError):  # and this one needs seqused_q, seqused_k
        qp = q.to(torch.bfloat16).reshape(B * LQ, H, D)
        cu = torch.tensor([0, LQ, 2 * LQ], dtype=torch.int32)
        fa3_module("2025-01").flash_attn_varlen_func(qp, qp, qp, cu, cu, LQ, LQ)
    packed = torch.cat([k[0, :5], k[1, :5]]).to(torch.bfloat16)
    cu_k = torch.tensor([0, 5, 12], dtype=torch.int32)  # says 12 keys, 10 are there
    with pytest.raises(AssertionError, match="packed length"):
        fa2_module().flash_attn_varlen_func(q.to(torch.bfloat16).reshape(B * LQ, H, D), packed, packed,
                                            torch.tensor([0, LQ, 2 * LQ], dtype=torch.int32), cu_k, LQ, LK)
