"""Self-attention rows of chosen queries against a float64 brute-force softmax over all keys."""

import math

import pytest
import torch

from ovi_attn_capture.model import attention as attn
from ovi_attn_capture.probe import maps, self_maps


def _softmax64(q, k, k_lens=None):
    s = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if k_lens is not None:
        valid = torch.arange(k.shape[1])[None, :] < k_lens[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1)  # [B, H, Lq, Lk]


def _case(dtype, B=2, L=120, H=3, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, L, H, D, generator=g) * 2.0).to(dtype)  # peaky rows: a real test of exp(s - lse)
    k = torch.randn(B, L, H, D, generator=g).to(dtype)
    v = torch.randn(B, L, H, D, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keep_heads", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_rows_equal_float64_brute_force(dtype, keep_heads, masked, monkeypatch):
    monkeypatch.setattr(maps, "CHUNK_BYTES", 4096)  # several query chunks
    q, k, v = _case(dtype)
    k_lens = torch.tensor([120, 97]) if masked else None
    _, lse = attn.attention(q, k, v, k_lens=k_lens)
    index = torch.tensor([0, 5, 64, 119, 5])  # a repeated query is fine
    got = self_maps.query_probabilities(q, k, lse, index, k_lens, keep_heads)  # [B, Hd, Q, Lk]
    want = _softmax64(q, k, k_lens)[:, :, index]  # [B, H, Q, Lk]
    if not keep_heads:
        want = want.mean(1, keepdim=True)
    assert got.shape == want.shape and got.dtype == torch.float32
    rtol = 1e-5 if dtype == torch.float32 else 5e-3  # the bf16 CPU kernel's lse is good to ~1e-3
    assert torch.allclose(got.double(), want, atol=1e-6, rtol=rtol)
    if masked:
        assert (got[1, ..., 97:] == 0).all()  # masked keys get exactly nothing
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=tol)


def test_float64_reference_kernel_is_exact():
    q, k, v = _case(torch.float64, B=1, L=50)
    _, lse = attn._math(q, k, v, None, compute_dtype=torch.float64)
    index = torch.tensor([3, 49])
    got = self_maps.query_probabilities(q, k, lse, index, keep_heads=True)
    want = _softmax64(q, k)[:, :, index]
    assert torch.allclose(got.double(), want, atol=1e-6)  # float32 scratch: ~1e-7 relative


def test_video_maps_lay_rows_on_the_grid():
    grid = (2, 3, 4)
    q, k, v = _case(torch.float32, B=1, L=24)
    _, lse = attn.attention(q, k, v)
    t = self_maps.token_of_point(1, 2, 3, grid)
    assert t == 23
    m = self_maps.video_query_maps(q, k, lse, torch.tensor([t]), grid)  # [1, 1, 1, F, h, w]
    assert m.shape == (1, 1, 1, 2, 3, 4)
    flat = self_maps.query_probabilities(q, k, lse, torch.tensor([t]))[0, 0, 0]
    assert torch.equal(m[0, 0, 0, 1, 2, 3], flat[23])  # raster order f, y, x
    assert torch.equal(m[0, 0, 0, 0, 1, 0], flat[4])


def test_audio_maps_drop_keys_past_the_audio():
    q, k, v = _case(torch.float32, B=1, L=30)
    lens = torch.tensor([22])
    _, lse = attn.attention(q, k, v, k_lens=lens)
    m = self_maps.audio_query_maps(q, k, lse, torch.tensor([0, 21]), 22, lens)
    assert m.shape == (1, 1, 2, 22)
    assert torch.allclose(m.sum(-1), torch.ones(1, 1, 2), atol=1e-5)
