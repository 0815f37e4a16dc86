"""Captured maps against a float64 brute-force softmax computed from the same q and k."""


import pytest
import torch

from brute_force import softmax64
from ovi_attn_capture.model import attention as attn
from ovi_attn_capture.probe import maps
from ovi_attn_capture.probe.probe import key_groups


@pytest.fixture(params=[torch.float32, torch.bfloat16])
def text_case(request):
    dtype = request.param
    g = torch.Generator().manual_seed(1)
    B, Lq, H, D, n_real, text_len = 1, 48, 2, 128, 9, 512
    q = (torch.randn(B, Lq, H, D, generator=g) * 1.5).to(dtype)
    k = torch.randn(B, text_len, H, D, generator=g).to(dtype)
    k[:, n_real:] = k[:, n_real:n_real + 1]  # zero-padded context -> identical pad keys
    v = torch.randn(B, text_len, H, D, generator=g).to(dtype)
    return q, k, v, n_real, text_len


@pytest.mark.parametrize("keep_heads", [False, True])
def test_text_groups_equal_brute_force(text_case, keep_heads, monkeypatch):
    q, k, v, n_real, text_len = text_case
    monkeypatch.setattr(maps, "CHUNK_BYTES", 4096)  # force several query chunks
    _, lse = attn.attention(q, k, v)
    members = [[1, 2], [4], [n_real - 1], []]  # a two-piece word, a word, <eos>, <pad>
    kg = key_groups(members, pad_group=3, n_real=n_real, text_len=text_len)
    got = maps.text_group_maps(q, k, lse, kg.key_index, kg.key_weight, keep_heads)  # [B, Hd, Lq, G]
    p = softmax64(q, k)
    want = torch.stack([p[..., [1, 2]].sum(-1), p[..., 4], p[..., n_real - 1], p[..., n_real:].sum(-1)], -1)
    if not keep_heads:
        want = want.mean(1, keepdim=True)
    assert got.shape == want.shape
    rtol = 1e-5 if q.dtype == torch.float32 else 5e-4  # the bf16 CPU kernel's lse is good to ~1e-4
    assert torch.allclose(got.double(), want, atol=2e-6, rtol=rtol)


def test_all_word_groups_eos_and_pad_sum_to_one(text_case):
    q, k, v, n_real, text_len = text_case
    _, lse = attn.attention(q, k, v)
    members = [[j] for j in range(n_real - 1)] + [[n_real - 1], []]
    kg = key_groups(members, pad_group=len(members) - 1, n_real=n_real, text_len=text_len)
    got = maps.text_group_maps(q, k, lse, kg.key_index, kg.key_weight)
    # Exact up to the kernel's own lse: CPU flash attention on bf16 inputs is within ~1e-4.
    tol = 1e-5 if q.dtype == torch.float32 else 5e-4
    assert torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)), atol=tol)


@pytest.mark.parametrize("masked", [False, True])
def test_fusion_maps_equal_brute_force(masked, monkeypatch):
    monkeypatch.setattr(maps, "CHUNK_BYTES", 8192)
    g = torch.Generator().manual_seed(2)
    grid = (3, 2, 4)
    Lv, La, H, D = 24, 10, 2, 64
    qv = torch.randn(1, Lv, H, D, generator=g) * 2
    ka = torch.randn(1, La, H, D, generator=g) * 2
    va = torch.randn(1, La, H, D, generator=g)
    lens_a = torch.tensor([7]) if masked else None
    _, lse = attn.attention(qv, ka, va, lens_a)
    got = maps.video_to_audio_maps(qv, ka, lse, lens_a, grid)[0, 0]  # [F, La]
    p = softmax64(qv, ka, lens_a).mean(1)[0]  # [Lv, La]
    want = p.view(3, 8, La).mean(1)
    assert torch.allclose(got.double(), want, atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(3), atol=1e-5)

    qa = torch.randn(1, La, H, D, generator=g) * 2
    kv = torch.randn(1, Lv, H, D, generator=g) * 2
    vv = torch.randn(1, Lv, H, D, generator=g)
    lens_v = torch.tensor([20]) if masked else None
    _, lse = attn.attention(qa, kv, vv, lens_v)
    per_frame, spatial = maps.audio_to_video_maps(qa, kv, lse, lens_v, grid, keep_heads=True)
    p = softmax64(qa, kv, lens_v)[0]  # [H, La, Lv]
    assert torch.allclose(per_frame[0].double(), p.view(H, La, 3, 8).sum(-1), atol=1e-6)
    assert torch.allclose(spatial[0].double(), p.sum(1).view(H, 3, 2, 4), atol=1e-5)
    assert torch.allclose(per_frame.sum(-1), torch.ones(1, H, La), atol=1e-5)
