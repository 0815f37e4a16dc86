"""Self-attention rows of chosen queries against a float64 brute-force softmax over all keys."""


import pytest
import torch

from brute_force import softmax64
from ovi_attn_capture.model import attention as attn
from ovi_attn_capture.probe import maps, self_maps


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
    want = softmax64(q, k, k_lens)[:, :, index]  # [B, H, Q, Lk]
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
    want = softmax64(q, k)[:, :, index]
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


def test_probe_in_the_model_writes_exact_rows_and_leaves_the_generation_alone():
    """Tiny fusion model, two sampler steps: the probe's video_self / audio_self maps equal a
    float64 softmax of the very q and k the kernel saw, and the latents are bit-identical."""
    from ovi_attn_capture.model.fusion import build_random, tiny_configs
    from ovi_attn_capture.probe.probe import CapturePlan, CaptureProbe, key_groups
    from ovi_attn_capture.probe.query_probe import QueryPlan
    from ovi_attn_capture.sampling.generate import SamplerSettings, Texts, sample
    from ovi_attn_render.contract.queries import PlacedQuery

    model = build_random(*tiny_configs(), seed=0)
    g = torch.Generator().manual_seed(0)
    texts = Texts(*(torch.randn(n, 64, generator=g).bfloat16() for n in (9, 6, 5)))
    settings = SamplerSettings(steps=2, slg_layer=1, seed=3)
    video_shape, audio_shape, grid = (48, 3, 8, 8), (13, 20), (3, 4, 4)
    plain = sample(model, texts, video_shape, audio_shape, settings, "cpu")

    video = [PlacedQuery("a", "video", 0, 0, 1, 2), PlacedQuery("b", "video", 8, 2, 3, 0)]
    audio = [PlacedQuery("t", "audio", audio_token=7)]
    groups = {(b, t): key_groups([[1], []], 1, 9 if b == "cond" else 6, 512)
              for b in ("cond", "uncond") for t in ("video", "audio")}
    plan = CapturePlan([0, 1], [0, 1], ["text_video"], ["cond"], True, torch.float32, grid, groups,
                       queries=QueryPlan(video, audio, grid, 13))
    got, seen = {}, {}

    class Sink:
        def put(self, var, b, s, l, values):
            got[(var, s, l)] = values.clone()

    probe = CaptureProbe(plan, Sink())
    original = probe.on_self_attention

    def spy(where, q, k, lse, k_lens):
        if probe.active is not None:
            seen[(where, probe.active[0])] = (q.clone(), k.clone())
        original(where, q, k, lse, k_lens)

    probe.on_self_attention = spy
    model.set_processor(probe, which="all")
    try:
        captured = sample(model, texts, video_shape, audio_shape, settings, "cpu", probe=probe)
    finally:
        model.set_processor(None, which="all")
    assert torch.equal(plain[0], captured[0]) and torch.equal(plain[1], captured[1])
    for s in (0, 1):
        for layer in (0, 1):
            q, k = seen[(("video", layer), s)]
            want = softmax64(q, k)[0][:, [1 * 4 + 2 + 0, 2 * 16 + 3 * 4 + 0]]  # [H, Q, Lv]
            m = got[("video_self", s, layer)]  # [Q, H, F, h, w]
            assert m.shape == (2, 2, 3, 4, 4)
            assert torch.allclose(m.flatten(2).transpose(0, 1).double(), want, atol=1e-6, rtol=5e-3)
            q, k = seen[(("audio", layer), s)]
            want = softmax64(q, k)[0][:, [7]]  # [H, 1, La]
            assert torch.allclose(got[("audio_self", s, layer)].transpose(0, 1).double(), want, atol=1e-6, rtol=5e-3)


def test_adaptive_query_is_the_peak_of_its_token_at_its_frame_summed_over_layers():
    from ovi_attn_capture.probe.probe import key_groups
    from ovi_attn_capture.probe.query_probe import QueryPlan, QueryTracker
    from ovi_attn_render.contract.queries import PlacedQuery

    grid = (2, 3, 3)
    plan = QueryPlan([PlacedQuery("fixed", "video", 0, 0, 0, 0), PlacedQuery("man", "video", 4, 1, token="man", step=3)],
                     [], grid, 5, {1: key_groups([[2]], None, 4, 8)})
    tracker = QueryTracker(plan)
    positions, index = tracker.active("video", "cpu")
    assert positions == [0] and index.tolist() == [0]  # the adaptive one is not found yet
    g = torch.Generator().manual_seed(0)
    H, D = 2, 16
    k = torch.randn(1, 8, H, D, generator=g)
    q = torch.randn(1, 18, H, D, generator=g) * 0.1
    assert tracker.begin_pass(2, "cond") == [] and not tracker.wants_text("video")
    tracker.begin_pass(3, "cond")
    assert tracker.wants_text("video") and not tracker.wants_text("audio")
    for cell, layer_weight in ((9 + 7, 1.0), (9 + 2, 0.3)):  # layer 0 prefers cell 7, layer 1 cell 2 (less)
        qq = q.clone()
        qq[0, cell] = k[0, 2] * layer_weight  # this query row lines up with key 2, the token `man`
        _, lse = attn.attention(qq, k, torch.zeros_like(k))
        tracker.add_text(qq, k, lse, False, lambda m: m)
    assert tracker.begin_pass(3, "uncond") == [(1, 2, 1)]  # cell 7 of the 3x3 frame: row 2, column 1
    assert tracker.active("video", "cpu")[0] == [0]  # found, but used from the next step on
    assert tracker.end_pass() == []
    tracker.begin_pass(4, "cond")
    positions, index = tracker.active("video", "cpu")
    assert positions == [0, 1] and index.tolist() == [0, 9 + 7]
