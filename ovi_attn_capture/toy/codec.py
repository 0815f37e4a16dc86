"""Fixed latent codecs with Ovi's latent shapes, so the toy model runs the real code unchanged.

Video, like the Wan2.2 VAE: 16x spatial, 4x temporal compression into 48 channels,
[3, 1 + 4(F-1), H, W] <-> [48, F, H/16, W/16]. Frames are average-pooled 4x4 into
sub-cells; one latent cell holds its 4x4 sub-cells times 3 colours (space to depth).
Latent frame 0 is pixel frame 0 and latent frame f >= 1 is the mean of pixel frames
4f-3..4f (the causal VAE's grouping); decoding repeats a latent frame over its pixel
frames and upsamples bilinearly.

Audio, like MMAudio's latents: 20 channels per 512 samples at 16 kHz. Channel k is the
amplitude of a sine at (8 + 2k) * 31.25 Hz (250-1437.5 Hz, a whole number of cycles
per latent, so the bank is orthogonal over one latent); decoding synthesises the sines
with amplitudes interpolated between latent centres.

Latents are normalised to be roughly zero-mean, unit-scale for the diffusion model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ovi_attn_render.contract.geometry import PIXEL_FRAME_STRIDE, SAMPLE_RATE, pixel_frames_of
from ovi_attn_render.contract.geometry import SAMPLES_PER_TOKEN as SAMPLES_PER_LATENT

SUB = 4  # sub-cells per latent cell side: 16 px latent cell / 4 px sub-cell
# Pixel statistics of the world (black background, a few bright objects), measured on 300
# random clips: pooled pixels have mean -0.91 to -0.94 and std 0.24 to 0.33 per colour. One
# scale for all colours keeps them comparable; latents come out with std ~0.8, objects at ~+5.
VIDEO_MEAN = (-0.9, -0.9, -0.9)
VIDEO_STD = (0.35, 0.35, 0.35)


class VideoCodec:
    """Space-to-depth video codec; `decode` matches VideoVAE.decode ([48, F, h, w] -> [3, T, H, W])."""

    latent_channels = 3 * SUB * SUB

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.mean = torch.tensor(VIDEO_MEAN).view(3, 1, 1, 1)
        self.std = torch.tensor(VIDEO_STD).view(3, 1, 1, 1)

    def to(self, device) -> "VideoCodec":
        self.device = torch.device(device)
        return self

    def encode_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Sub-cell frames [..., 3, F, H/4, W/4] (already time-grouped) -> latents [..., 48, F, H/16, W/16]."""
        z = (pooled - self.mean.to(pooled)) / self.std.to(pooled)
        *lead, c, f, hs, ws = z.shape
        z = z.reshape(*lead, c, f, hs // SUB, SUB, ws // SUB, SUB)  # [..., 3, F, h, sy, w, sx]
        n = len(lead)
        order = [*range(n), n, n + 3, n + 5, n + 1, n + 2, n + 4]  # -> [..., 3, sy, sx, F, h, w]
        return z.permute(order).reshape(*lead, c * SUB * SUB, f, hs // SUB, ws // SUB)

    @staticmethod
    def group_time(video: torch.Tensor) -> torch.Tensor:
        """[..., T, H, W] pixel frames -> [..., F, H, W]: frame 0 alone, then means of 4."""
        first, rest = video[..., :1, :, :], video[..., 1:, :, :]
        *lead, t, h, w = rest.shape
        k = PIXEL_FRAME_STRIDE
        rest = rest.reshape(*lead, t // k, k, h, w).mean(-3)
        return torch.cat([first, rest], -3)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] (or an image [3, H, W]) in [-1, 1] -> [48, F, H/16, W/16]."""
        if video.dim() == 3:
            video = video.unsqueeze(1)
        video = video.float().cpu()
        grouped = self.group_time(video)  # [3, F, H, W]
        pooled = F.avg_pool2d(grouped, SUB)  # [3, F, H/4, W/4]
        return self.encode_pooled(pooled).to(self.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[48, F, h, w] -> [3, 1 + 4(F-1), 16h, 16w] in [-1, 1]."""
        z = latent.float()
        c, f, h, w = z.shape
        z = z.reshape(3, SUB, SUB, f, h, w).permute(0, 3, 4, 1, 5, 2).reshape(3, f, h * SUB, w * SUB)
        pooled = z * self.std.to(z) + self.mean.to(z)  # [3, F, H/4, W/4]
        frames = F.interpolate(pooled, scale_factor=SUB, mode="bilinear", align_corners=False)  # [3, F, H, W]
        repeat = torch.tensor([len(pixel_frames_of(i)) for i in range(f)], device=frames.device)  # 1, 4, 4, ...
        return frames.repeat_interleave(repeat, dim=1).clamp(-1, 1)


CHANNELS = 20
AUDIO_SCALE, AUDIO_OFFSET = 3.0, 0.5  # z = 3 sqrt(amplitude) - 0.5: silence -0.5, a beep ~1.6


def tone_frequencies() -> torch.Tensor:
    """[20] Hz: bins 8, 10, ..., 46 of a 512-sample window at 16 kHz."""
    return (8 + 2 * torch.arange(CHANNELS, dtype=torch.float64)) * SAMPLE_RATE / SAMPLES_PER_LATENT


class AudioCodec:
    """Sine-bank audio codec; `decode` matches AudioDecoder.decode ([La, 20] -> [La * 512])."""

    sample_rate = SAMPLE_RATE
    samples_per_latent = SAMPLES_PER_LATENT
    latent_dim = CHANNELS

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def to(self, device) -> "AudioCodec":
        self.device = torch.device(device)
        return self

    @staticmethod
    def normalise(amplitude: torch.Tensor) -> torch.Tensor:
        return AUDIO_SCALE * amplitude.clamp(min=0).sqrt() - AUDIO_OFFSET

    @staticmethod
    def amplitudes(latent: torch.Tensor) -> torch.Tensor:
        return ((latent.float() + AUDIO_OFFSET) / AUDIO_SCALE).clamp(min=0) ** 2

    def _carriers(self, n: int) -> torch.Tensor:  # [n, 20] sines with a phase that runs on across latents
        t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
        return torch.sin(2 * math.pi * t[:, None] * tone_frequencies()[None, :])

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """[La * 512] -> [La, 20]: each tone's amplitude in each latent (projection on sin and cos)."""
        x = waveform.double().cpu()
        la = x.shape[0] // SAMPLES_PER_LATENT
        x = x[: la * SAMPLES_PER_LATENT].view(la, SAMPLES_PER_LATENT)
        n = torch.arange(SAMPLES_PER_LATENT, dtype=torch.float64)
        angle = 2 * math.pi * n[:, None] * tone_frequencies()[None, :] / SAMPLE_RATE  # [512, 20]
        re, im = x @ torch.cos(angle), x @ torch.sin(angle)
        amp = 2 * torch.sqrt(re**2 + im**2) / SAMPLES_PER_LATENT
        return self.normalise(amp.float()).to(self.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[La, 20] -> float32 waveform [La * 512] at 16 kHz."""
        amp = self.amplitudes(latent).cpu().double()  # [La, 20]
        la = amp.shape[0]
        n = la * SAMPLES_PER_LATENT
        # amplitude per sample: linear between latent centres, held flat before the first and after the last
        centres = (torch.arange(la, dtype=torch.float64) + 0.5) * SAMPLES_PER_LATENT
        pos = ((torch.arange(n, dtype=torch.float64) + 0.5) - centres[0]) / SAMPLES_PER_LATENT
        pos = pos.clamp(0, la - 1)
        lo = pos.floor().long().clamp(max=la - 1)
        hi = (lo + 1).clamp(max=la - 1)
        frac = (pos - lo)[:, None]
        envelope = amp[lo] * (1 - frac) + amp[hi] * frac  # [n, 20]
        wave = (envelope * self._carriers(n)).sum(1)
        return wave.float().clamp(-1, 1).to(self.device)
