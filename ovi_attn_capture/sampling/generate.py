"""Text(+image) to video+audio generation, as upstream Ovi samples it, with an optional probe.

`sample(...)` is the denoising loop alone (noise, schedulers, two guided passes per step);
`capture.run_capture` wraps it with the prompt file, the components and the writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ovi_attn_capture.model.fusion import FusionModel
from ovi_attn_capture.sampling.solvers import make_scheduler


@dataclass
class SamplerSettings:
    steps: int = 50
    solver: str = "unipc"
    shift: float = 5.0
    video_guidance_scale: float = 4.0
    audio_guidance_scale: float = 3.0
    slg_layer: int = 11
    seed: int = 100


@dataclass
class Texts:
    """Text embeddings [n, text_dim] of the three prompts upstream feeds the towers."""

    positive: torch.Tensor
    video_negative: torch.Tensor
    audio_negative: torch.Tensor


def initial_noise(shape, seed: int, device, dtype=torch.bfloat16) -> torch.Tensor:
    """Upstream draws each tower's noise from its own generator seeded with the same seed."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, device=device, dtype=dtype, generator=gen)


@torch.no_grad()
def sample(model: FusionModel, texts: Texts, video_shape, audio_shape, settings: SamplerSettings,
           device, probe=None, first_frame: torch.Tensor | None = None,
           on_step: Callable[[int, int, float], None] | None = None):
    """Denoise from seeded noise to clean latents.

    video_shape: (48, F, H/16, W/16); audio_shape: (La, 20); first_frame: i2v image latent
    [48, 1, h, w] that replaces the first latent frame before every step and at the end.
    on_step(i, timestep, sigma) runs after step i (the capture writer's flush).
    Returns (video latent [48, F, h, w], audio latent [La, 20])."""
    dtype = model.compute_dtype
    video = initial_noise(video_shape, settings.seed, device, dtype)
    audio = initial_noise(audio_shape, settings.seed, device, dtype)
    sched_v = make_scheduler(settings.solver, settings.steps, settings.shift, device)
    sched_a = make_scheduler(settings.solver, settings.steps, settings.shift, device)
    is_i2v = first_frame is not None

    for i, (t_v, t_a) in enumerate(zip(sched_v.timesteps, sched_a.timesteps)):
        t = torch.full((1,), t_v.item(), device=device)  # int64 (unipc, dpm++) or float32 (euler), as upstream
        if is_i2v:
            video[:, :1] = first_frame

        if probe is not None:
            probe.begin_pass(i, "cond")
        v_pos, a_pos = model(video, audio, t, texts.positive, texts.positive, first_frame_is_clean=is_i2v)
        if probe is not None:
            probe.begin_pass(i, "uncond")
        v_neg, a_neg = model(video, audio, t, texts.video_negative, texts.audio_negative,
                             first_frame_is_clean=is_i2v, slg_layer=settings.slg_layer)
        if probe is not None:
            probe.end_pass()

        v_guided = v_neg + settings.video_guidance_scale * (v_pos - v_neg)
        a_guided = a_neg + settings.audio_guidance_scale * (a_pos - a_neg)
        video = sched_v.step(v_guided.unsqueeze(0), t_v, video.unsqueeze(0)).squeeze(0)
        audio = sched_a.step(a_guided.unsqueeze(0), t_a, audio.unsqueeze(0)).squeeze(0)
        if on_step is not None:
            on_step(i, t_v.item(), float(sched_v.sigmas[i]))

    if is_i2v:
        video[:, :1] = first_frame
    return video, audio
