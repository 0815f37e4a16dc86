"""The fusion model: released key/shape layout, strict loading, forward semantics."""

import json
from pathlib import Path

import pytest
import torch

from ovi_attn_capture.model.fusion import (CheckpointMismatch, FusionModel, build_on_meta, build_random,
                                    load_checkpoint, released_configs, rope_1d, rope_3d, rope_table,
                                    sinusoidal_embedding, tiny_configs)

DATA = Path(__file__).parent / "data"


def test_released_configs_give_the_released_keys_and_shapes():
    model = build_on_meta(*released_configs())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    released = json.loads((DATA / "fusion_state_dict_11b.json").read_text())
    assert len(released) == 2073
    assert ours == released
    assert sum(p.numel() for p in model.parameters()) == 11_660_753_108
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.fixture(scope="module")
def tiny():
    return build_random(*tiny_configs(), seed=0)


def _inputs(seed=0, text_dim=64):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(48, 3, 8, 8, generator=g).bfloat16()
    audio = torch.randn(13, 20, generator=g).bfloat16()
    ctx = torch.randn(7, text_dim, generator=g).bfloat16()
    return video, audio, ctx


def test_tiny_weights_are_deterministic():
    a = build_random(*tiny_configs(), seed=3).state_dict()
    b = build_random(*tiny_configs(), seed=3).state_dict()
    c = build_random(*tiny_configs(), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_strict_meta_loading_of_a_local_checkpoint(tmp_path, tiny):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = load_checkpoint(path, *tiny_configs())
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    video, audio, ctx = _inputs()
    t = torch.tensor([500])
    out_a = tiny(video, audio, t, ctx, ctx)
    out_b = loaded(video, audio, t, ctx, ctx)
    assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])


def test_a_partial_or_wrong_checkpoint_names_what_does_not_fit(tmp_path, tiny):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    removed = [k for k in state if ".blocks.1." in k][:6]
    for k in removed:
        del state[k]
    state["video_model.extra.weight"] = torch.zeros(3)
    state["audio_model.head.head.bias"] = torch.zeros(7)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointMismatch) as e:
        load_checkpoint(path, *tiny_configs())
    msg = str(e.value)
    assert "6 missing keys" in msg and "1 unexpected keys (video_model.extra.weight)" in msg
    assert "1 wrong shape keys" in msg and "audio_model.head.head.bias" in msg


def test_float8_checkpoint_runs_with_the_same_keys(tmp_path, tiny):
    from safetensors.torch import save_file

    state = {k: (v.to(torch.float8_e4m3fn) if v.dim() == 2 else v).contiguous() for k, v in tiny.state_dict().items()}
    path = tmp_path / "fp8.safetensors"
    save_file(state, str(path))
    model = load_checkpoint(path, *tiny_configs())
    assert model.video_model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    video, audio, ctx = _inputs()
    v, a = model(video, audio, torch.tensor([500]), ctx, ctx)
    v_ref, a_ref = tiny(video, audio, torch.tensor([500]), ctx, ctx)
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()
    # fp8 weights: close to, not equal to, the bf16 model.
    assert (v.float() - v_ref.float()).abs().mean() < 0.1 * v_ref.float().abs().mean()


def test_output_shapes_and_dtypes(tiny):
    video, audio, ctx = _inputs()
    v, a = tiny(video, audio, torch.tensor([999]), ctx, ctx)
    assert v.shape == video.shape and a.shape == audio.shape
    assert v.dtype == a.dtype == torch.bfloat16


def test_single_tower_paths(tiny):
    video, audio, ctx = _inputs()
    v, a = tiny(video, None, torch.tensor([500]), ctx, None)
    assert a is None and v.shape == video.shape
    v2, a2 = tiny(None, audio, torch.tensor([500]), None, ctx)
    assert v2 is None and a2.shape == audio.shape
    # Single-tower output equals the tower run alone, and differs from the fused one.
    assert torch.equal(v, tiny.video_model(video, torch.tensor([500]), ctx))
    fused_v, _ = tiny(video, audio, torch.tensor([500]), ctx, ctx)
    assert not torch.equal(v, fused_v)


def test_towers_exchange_information_in_both_directions(tiny):
    video, audio, ctx = _inputs()
    t = torch.tensor([700])
    v1, a1 = tiny(video, audio, t, ctx, ctx)
    v2, a2 = tiny(video, audio * 0.5, t, ctx, ctx)  # change only the audio input
    assert not torch.equal(v1, v2)  # video hears the audio
    v3, a3 = tiny(video * 0.5, audio, t, ctx, ctx)  # change only the video input
    assert not torch.equal(a1, a3)  # audio sees the video


def test_skip_layer_guidance_skips_the_block_in_both_towers(tiny):
    video, audio, ctx = _inputs()
    t = torch.tensor([600])
    calls = []
    handles = [b.register_forward_pre_hook(lambda m, a, name=n: calls.append(name))
               for n, b in [("v0", tiny.video_model.blocks[0].cross_attn), ("v1", tiny.video_model.blocks[1].cross_attn),
                            ("a0", tiny.audio_model.blocks[0].cross_attn), ("a1", tiny.audio_model.blocks[1].cross_attn)]]
    try:
        tiny(video, audio, t, ctx, ctx, slg_layer=1)
        assert calls == ["a0", "v0"]
        calls.clear()
        tiny(video, audio, t, ctx, ctx, slg_layer=0)  # upstream: only slg_layer > 0 skips
        assert calls == ["a0", "v0", "a1", "v1"]
    finally:
        for h in handles:
            h.remove()


def test_block_order_audio_cross_sees_video_after_self_and_video_sees_audio_after_self(tiny):
    """Record what each fusion attention receives as its target and check it against a
    manual walk through the documented order."""
    video, audio, ctx = _inputs()
    t = torch.tensor([400])
    seen = {}

    def grab(name):
        def hook(module, args, kwargs):
            target = args[3] if len(args) > 3 else kwargs.get("target")
            seen[name] = target[0].clone()
        return hook

    h1 = tiny.audio_model.blocks[0].cross_attn.register_forward_pre_hook(grab("audio"), with_kwargs=True)
    h2 = tiny.video_model.blocks[0].cross_attn.register_forward_pre_hook(grab("video"), with_kwargs=True)
    try:
        tiny(video, audio, t, ctx, ctx)
    finally:
        h1.remove(), h2.remove()
    vm, am = tiny.video_model, tiny.audio_model
    xv, ev, e0v, grid_v = vm.embed(video[None], t)  # embed takes a batch
    xa, ea, e0a, grid_a = am.embed(audio[None], t)
    bv, ba = vm.blocks[0], am.blocks[0]
    xa_self = ba.self_attention_part(xa, ba.modulation(e0a), torch.tensor([xa.shape[1]]), am.rope_fn(grid_a, "cpu"))
    xv_self = bv.self_attention_part(xv, bv.modulation(e0v), torch.tensor([xv.shape[1]]), vm.rope_fn(grid_v, "cpu"))
    assert torch.equal(seen["audio"], xv_self)  # audio cross attends to video after its self-attention
    assert torch.equal(seen["video"], xa_self)  # video cross attends to audio after self, before audio's cross


def test_i2v_first_frame_tokens_get_t_zero(tiny):
    video, _, ctx = _inputs()
    vm = tiny.video_model
    t = torch.tensor([800])
    _, e_clean, e0_clean, grid = vm.embed(video[None], t, first_frame_is_clean=True)
    _, e_t, _, _ = vm.embed(video[None], t)
    _, e_0, _, _ = vm.embed(video[None], torch.tensor([0]))
    n0 = grid[1] * grid[2]
    assert e_clean.shape[1] == grid[0] * n0
    assert torch.equal(e_clean[:, :n0], e_0.expand(1, n0, -1))
    assert torch.equal(e_clean[:, n0:], e_t.expand(1, e_clean.shape[1] - n0, -1))


def test_rope_tables_follow_the_device_and_audio_scaling():
    v, a = tiny_configs()
    m = build_random(v, a, seed=0)
    ta = m.audio_model.rope_table("cpu")
    assert ta.shape == (1024, 22) and ta.dtype == torch.complex128
    # audio position l rotates by 0.19676 * l * base frequency
    base = rope_table(1024, 44)
    assert torch.allclose(torch.angle(ta[3, 0]), torch.angle(base[3, 0]) * 0.19676, atol=1e-12)
    tv = m.video_model.rope_table("cpu")
    assert tv.shape == (1024, 64) and "meta" not in str(tv.device)


def test_rope_3d_rotates_by_position_in_raster_order():
    table = torch.cat([rope_table(1024, 44), rope_table(1024, 42), rope_table(1024, 42)], dim=1)
    grid = (2, 3, 4)
    x = torch.ones(1, 24, 1, 128, dtype=torch.float64)
    y = rope_3d(x, grid, table)
    # token (f=1, y=2, x=3) sits at index 1*12 + 2*4 + 3 = 23; first pair rotates with f, pair 22 with y, pair 43 with x.
    z = torch.view_as_complex(y[0, 23, 0].reshape(64, 2))
    one = complex(1, 1)
    assert torch.allclose(z[0], torch.tensor(one) * table[1, 0])
    assert torch.allclose(z[22], torch.tensor(one) * table[2, 22])
    assert torch.allclose(z[43], torch.tensor(one) * table[3, 43])
    # audio: pairs beyond 22 pass through
    a = rope_1d(torch.ones(1, 5, 1, 128, dtype=torch.float64), 5, rope_table(1024, 44, scaling=0.19676))
    assert torch.equal(a[0, :, 0, 44:], torch.ones(5, 84, dtype=torch.float64))


def test_sinusoidal_embedding_is_float64_cos_then_sin():
    e = sinusoidal_embedding(8, torch.tensor([0, 999]))
    assert e.dtype == torch.float64
    assert torch.equal(e[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float64))
    assert abs(e[1, 0].item() - torch.cos(torch.tensor(999.0, dtype=torch.float64)).item()) < 1e-12


def test_configs_are_read_back_from_checkpoint_shapes(tmp_path, tiny):
    from safetensors.torch import save_file

    from ovi_attn_capture.model.fusion import configs_from_shapes

    video, audio = configs_from_shapes({k: tuple(v.shape) for k, v in
                                        build_on_meta(*released_configs()).state_dict().items()})
    assert (video, audio) == tuple(dict(c, text_dim=4096) for c in released_configs())
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = load_checkpoint(path)  # no configs given: inferred
    v, a = tiny_configs()
    assert loaded.video_model.dim == v["dim"] and loaded.num_layers == v["num_layers"]
    assert loaded.audio_model.text_dim == a["text_dim"] and loaded.video_model.num_heads == v["num_heads"]


def test_a_damaged_checkpoint_is_a_user_error(tmp_path, tiny):
    from safetensors.torch import save_file

    from ovi_attn_render.common.errors import UserError

    path = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a download that stopped half way
    with pytest.raises(UserError, match="damaged or incomplete"):
        load_checkpoint(path)


def test_a_batch_gives_each_sample_its_own_result():
    """One forward over B = 2 (different latents, texts of different lengths, timesteps)
    agrees with two one-sample forwards; the single-tower path takes a batch too."""
    model = build_random(*tiny_configs(), seed=0, compute_dtype=torch.float32)
    (v0, a0, c0), (v1, a1, c1) = _inputs(0), _inputs(1)
    c1 = c1[:4]
    video, audio = torch.stack([v0, v1]).float(), torch.stack([a0, a1]).float()
    texts = [c0.float(), c1.float()]
    t = torch.tensor([300, 800])
    bv, ba = model(video, audio, t, texts, texts)
    assert bv.shape == (2, 48, 3, 8, 8) and ba.shape == (2, 13, 20)
    only_v, _ = model(video, None, t, texts, None)
    for i in range(2):
        rv, ra = model(video[i], audio[i], t[i:i + 1], texts[i], texts[i])
        torch.testing.assert_close(bv[i], rv, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ba[i], ra, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(only_v[i], model(video[i], None, t[i:i + 1], texts[i], None)[0],
                                   atol=1e-5, rtol=1e-4)


def test_set_processor_hands_every_attention_to_it(tiny):
    """A processor sees q, k, v of each attention it was given, with its module's place, and
    its output is what the model uses; None puts the plain kernel back."""
    from ovi_attn_capture.model.processors import AttnProcessor

    class Recorder(AttnProcessor):
        def __init__(self):
            self.calls = []

        def __call__(self, attn, kind, q, k, v, k_lens=None, key_bias=None):
            self.calls.append((attn.where, kind, q.shape[1], k.shape[1]))
            return super().__call__(attn, kind, q, k, v, k_lens, key_bias)

    video, audio, ctx = _inputs()
    t = torch.tensor([500])
    plain = tiny(video, audio, t, ctx, ctx)
    rec = Recorder()
    tiny.set_processor(rec, which="all")
    try:
        seen = tiny(video, audio, t, ctx, ctx)
    finally:
        tiny.set_processor(None, which="all")
    assert torch.equal(plain[0], seen[0]) and torch.equal(plain[1], seen[1])
    layers = tiny.num_layers
    assert len(rec.calls) == 2 * layers * 3  # two towers x (self, text, fusion)
    assert (("video", 0), "text", 3 * 4 * 4, 512) in rec.calls
    assert (("audio", layers - 1), "fusion", 13, 3 * 4 * 4) in rec.calls
    rec.calls.clear()
    tiny.set_processor(rec, which="self", towers=("audio",), layers=[1])
    try:
        tiny(video, audio, t, ctx, ctx)
    finally:
        tiny.set_processor(None, which="all")
    assert rec.calls == [(("audio", 1), "self", 13, 13)]
    tiny(video, audio, t, ctx, ctx)
    assert len(rec.calls) == 1  # detached
