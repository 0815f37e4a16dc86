"""Every attention backend on this machine against a float64 reference, masks included."""

import math

import pytest
import torch

from ovi_attn_capture.model import attention as attn


def _qkv(B=2, Lq=37, Lk=19, H=3, D=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, H, D, generator=g) * 2
    k = torch.randn(B, Lk, H, D, generator=g) * 2
    v = torch.randn(B, Lk, H, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _reference(q, k, v, k_lens):
    s = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if k_lens is not None:
        valid = torch.arange(k.shape[1])[None, :] < k_lens[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1)
    return torch.einsum("bhlk,bkhd->blhd", p, v.double()), lse


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CASES = [(d, b) for d in DEVICES for b in attn.available_backends(d, torch.bfloat16)]
BACKENDS = attn.available_backends("cpu")


def test_cpu_offers_sdpa_and_math():
    assert BACKENDS[-2:] == ["sdpa", "math"]


def test_flash_attn_is_never_picked_for_float32():
    assert attn.available_backends("cuda", torch.float32) == ["sdpa", "math"]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("masked", [False, True])
def test_backend_matches_float64_reference(device, backend, dtype, tol, masked):
    if dtype == torch.float32 and backend.startswith("flash"):
        pytest.skip("flash-attn runs half precision only")
    q, k, v = (t.to(device) for t in _qkv(dtype=dtype))
    k_lens = torch.tensor([19, 11]) if masked else None
    out, lse = attn.attention(q, k, v, k_lens, backend=backend)
    out, lse, q, k, v = (t.cpu() for t in (out, lse, q, k, v))
    ref_out, ref_lse = _reference(q, k, v, k_lens)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 37)
    # lse is computed from the (possibly bf16) inputs in float32 accumulation: tight.
    assert torch.allclose(lse.double(), ref_lse, atol=1e-4, rtol=1e-5)
    assert torch.allclose(out.double(), ref_out, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_keys_get_no_weight(backend):
    q, k, v = _qkv(B=1)
    k_lens = torch.tensor([5])
    out1, lse1 = attn.attention(q, k, v, k_lens, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, 5:] = 100.0  # garbage beyond the length must not matter
    v2[:, 5:] = -7.0
    out2, lse2 = attn.attention(q, k2, v2, k_lens, backend=backend)
    assert torch.allclose(out1, out2, atol=1e-6) and torch.allclose(lse1, lse2, atol=1e-6)


def test_full_length_mask_is_the_unmasked_kernel():
    q, k, v = _qkv(dtype=torch.bfloat16)
    a = attn.attention(q, k, v, torch.tensor([19, 19]))
    b = attn.attention(q, k, v, None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_set_backend_validates_names():
    with pytest.raises(ValueError):
        attn.set_backend("cudnn-magic")
