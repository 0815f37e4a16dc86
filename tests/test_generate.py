"""The sampling loop: seeding, classifier-free guidance and skip-layer guidance wiring."""

import torch

from ovi_attn_capture.sampling.generate import SamplerSettings, Texts, initial_noise, sample
from ovi_attn_capture.model.fusion import build_random, tiny_configs


def _setup():
    model = build_random(*tiny_configs(), seed=0)
    g = torch.Generator().manual_seed(5)
    texts = Texts(*(torch.randn(n, 64, generator=g).bfloat16() for n in (8, 5, 6)))
    return model, texts


def test_same_seed_same_noise_and_result_other_seed_differs():
    model, texts = _setup()
    a = initial_noise((48, 2, 4, 4), 11, "cpu")
    assert torch.equal(a, initial_noise((48, 2, 4, 4), 11, "cpu")) and a.dtype == torch.bfloat16
    # each tower draws from its own generator seeded with the same seed
    assert torch.equal(initial_noise((10, 20), 11, "cpu"), torch.randn((10, 20), generator=torch.Generator().manual_seed(11), dtype=torch.bfloat16))
    s = SamplerSettings(steps=4, slg_layer=1, seed=11)
    r1 = sample(model, texts, (48, 2, 8, 8), (9, 20), s, "cpu")
    r2 = sample(model, texts, (48, 2, 8, 8), (9, 20), s, "cpu")
    r3 = sample(model, texts, (48, 2, 8, 8), (9, 20), SamplerSettings(steps=4, slg_layer=1, seed=12), "cpu")
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
    assert not torch.equal(r1[0], r3[0])


def test_guidance_combines_a_positive_and_a_negative_pass_as_upstream():
    model, texts = _setup()
    calls = []
    real_forward = model.forward

    def spy(video, audio, t, vctx, actx, first_frame_is_clean=False, slg_layer=None):
        calls.append((vctx is texts.positive, actx is texts.positive, vctx is texts.video_negative,
                      actx is texts.audio_negative, slg_layer))
        return real_forward(video, audio, t, vctx, actx, first_frame_is_clean, slg_layer)

    model.forward = spy
    try:
        s = SamplerSettings(steps=2, slg_layer=1, seed=1, video_guidance_scale=4.0, audio_guidance_scale=3.0)
        sample(model, texts, (48, 2, 8, 8), (9, 20), s, "cpu")
    finally:
        del model.forward
    # per step: positive pass (prompt for both towers, all blocks), then negative pass
    # (video negative for video, audio negative for audio, slg layer skipped)
    assert calls == [(True, True, False, False, None), (False, False, True, True, 1)] * 2


def test_guidance_scale_one_equals_the_positive_pass_alone():
    """pred = neg + 1 * (pos - neg) = pos: with scale 1 the negative pass cannot matter."""
    model, texts = _setup()
    s1 = SamplerSettings(steps=3, slg_layer=1, seed=2, video_guidance_scale=1.0, audio_guidance_scale=1.0)
    other = Texts(texts.positive, texts.video_negative * 3, texts.audio_negative * 3)
    a = sample(model, texts, (48, 2, 8, 8), (9, 20), s1, "cpu")
    b = sample(model, other, (48, 2, 8, 8), (9, 20), s1, "cpu")
    s4 = SamplerSettings(steps=3, slg_layer=1, seed=2)
    c = sample(model, texts, (48, 2, 8, 8), (9, 20), s4, "cpu")
    d = sample(model, other, (48, 2, 8, 8), (9, 20), s4, "cpu")
    # bf16 arithmetic: neg + (pos - neg) rounds, so scale 1 is only close to independent of
    # the negatives, while scale 4 clearly depends on them.
    diff1 = (a[0].float() - b[0].float()).abs().mean()
    diff4 = (c[0].float() - d[0].float()).abs().mean()
    assert diff1 * 3 < diff4  # measured: 0.0010 vs 0.0053
