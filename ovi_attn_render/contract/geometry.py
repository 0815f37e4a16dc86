"""Clip geometry: how decoded pixels, latents, video tokens and audio tokens line up.

The one home of these facts; capture (which builds the grid and writes the file) and
render (which maps a decoded frame to its maps) both import them. Torch-free.

    pixel frames T = 1 + stride (F - 1)      the causal VAE keeps frame 0 alone, then packs
    latent frame f covers pixel frames       `stride` (4) frames per latent frame:
        0 -> [0], f -> stride f - stride + 1 .. stride f
    latent cells  = pixels / VAE_SCALE (16)  per side
    video tokens  = latent cells / patch     (patch (1, 2, 2): a token is 32x32 pixels)
    audio token a starts at a * samples_per_token / sample_rate seconds
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PIXEL_FRAME_STRIDE = 4  # pixel frames per latent frame after the first (Wan2.2's causal VAE)
VAE_SCALE = 16  # pixels per latent cell side
PATCH = (1, 2, 2)  # the video tower's patch (frames, rows, cols of latent cells per token)
FPS = 24.0  # decoded video frames per second (Ovi's clips)
SAMPLE_RATE = 16000  # decoded audio samples per second (MMAudio's VAE)
SAMPLES_PER_TOKEN = 512  # audio samples per audio latent frame (= audio token)


def latent_frame_of(pixel_frame: int | np.ndarray, stride: int = PIXEL_FRAME_STRIDE):
    """Latent frame of a decoded pixel frame (1..4 -> 1, 5..8 -> 2, ...)."""
    n = np.asarray(pixel_frame)
    out = np.where(n <= 0, 0, (n + stride - 1) // stride)
    return int(out) if np.ndim(out) == 0 else out


def pixel_frames_of(latent_frame: int, stride: int = PIXEL_FRAME_STRIDE) -> range:
    """The decoded pixel frames a latent frame covers (0 -> [0], f -> 4f-3 .. 4f)."""
    if latent_frame == 0:
        return range(0, 1)
    return range(stride * latent_frame - stride + 1, stride * latent_frame + 1)


def pixel_frame_count(latent_frames: int, stride: int = PIXEL_FRAME_STRIDE) -> int:
    """Decoded frames of a clip with `latent_frames` latent frames: 1 + stride (F - 1)."""
    return 1 + stride * (latent_frames - 1)


def latent_frame_edges(latent_frames: int, fps: float = FPS, stride: int = PIXEL_FRAME_STRIDE) -> np.ndarray:
    """[F + 1] start times in seconds of latent frames 0..F-1, plus the end of the last.

    Latent frame 0 is pixel frame 0 alone: [0, 1/fps); f >= 1 covers pixel frames
    stride f - stride + 1 .. stride f, so it starts at (stride f - stride + 1) / fps."""
    f = np.arange(1, latent_frames + 1)
    return np.concatenate([[0.0], (stride * f - stride + 1) / fps])


def latent_size(pixel_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) pixels -> (rows, cols) of latent cells."""
    return pixel_size[0] // VAE_SCALE, pixel_size[1] // VAE_SCALE


def token_grid(latent_frames: int, pixel_size: tuple[int, int], patch=PATCH) -> tuple[int, int, int]:
    """(F, h, w): the video token grid of a clip of `pixel_size` pixels."""
    rows, cols = latent_size(pixel_size)
    return latent_frames, rows // patch[1], cols // patch[2]


def token_cell_pixels(patch=PATCH) -> tuple[int, int]:
    """(rows, cols) of decoded pixels one video token covers."""
    return VAE_SCALE * patch[1], VAE_SCALE * patch[2]


def audio_token_edges(audio_tokens: int, sample_rate: int = SAMPLE_RATE, samples_per_token: int = SAMPLES_PER_TOKEN) -> np.ndarray:
    """[La + 1] start times in seconds of audio tokens 0..La-1, plus the end of the last."""
    return np.arange(audio_tokens + 1) * (samples_per_token / sample_rate)


def audio_seconds_of_tokens(audio_tokens: int, sample_rate: int = SAMPLE_RATE,
                            samples_per_token: int = SAMPLES_PER_TOKEN) -> float:
    """Seconds of audio that `audio_tokens` audio tokens decode to."""
    return audio_tokens * samples_per_token / sample_rate


def audio_token_of_time(seconds: float, sample_rate: int = SAMPLE_RATE,
                        samples_per_token: int = SAMPLES_PER_TOKEN) -> int:
    """The audio token whose samples hold time `seconds` (0 s -> 0, 32 ms -> 1 at 512 / 16 kHz)."""
    return int(seconds * sample_rate / samples_per_token)


def audio_token_seconds(audio_tokens: int, sample_rate: int = SAMPLE_RATE,
                        samples_per_token: int = SAMPLES_PER_TOKEN) -> np.ndarray:
    """[La] start time in seconds of each audio token (the file's audio_time_seconds)."""
    return np.arange(audio_tokens) * samples_per_token / sample_rate


@dataclass(frozen=True)
class Geometry:
    """One capture's clip geometry, as its file records it."""

    grid: tuple[int, int, int]  # (F latent frames, h, w) of the video token grid
    pixel_frames: int  # decoded frames T
    frame_size: tuple[int, int]  # (H, W) of decoded frames
    fps: float
    stride: int  # pixel frames per latent frame
    audio_tokens: int  # La
    sample_rate: int
    samples_per_token: int
    latent_frame_of_pixel: np.ndarray  # [T] int: latent frame of each decoded frame

    @property
    def latent_frames(self) -> int:
        return self.grid[0]

    @property
    def default_frame(self) -> int:
        """The decoded frame a view draws when none is named: the middle one."""
        return self.pixel_frames // 2

    @property
    def seconds(self) -> float:
        """Length of the clip by its video frames."""
        return self.pixel_frames / self.fps

    def latent_frame(self, pixel_frame: int) -> int:
        return int(self.latent_frame_of_pixel[pixel_frame])

    def pixel_frames_of(self, latent_frame: int) -> list[int]:
        """The decoded frames of a latent frame that the clip holds."""
        return [int(n) for n in np.flatnonzero(self.latent_frame_of_pixel == int(latent_frame))]

    def audio_seconds(self) -> np.ndarray:
        """[La] start time of each audio token."""
        return audio_token_seconds(self.audio_tokens, self.sample_rate, self.samples_per_token)

    def latent_frame_edges(self) -> np.ndarray:
        """[F + 1] seconds where each latent frame starts, then the end of the last."""
        return latent_frame_edges(self.latent_frames, self.fps, self.stride)

    def audio_token_edges(self) -> np.ndarray:
        """[La + 1] seconds where each audio token starts, then the end of the last."""
        return audio_token_edges(self.audio_tokens, self.sample_rate, self.samples_per_token)
