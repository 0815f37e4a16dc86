"""Audio decoding: MMAudio's 16 kHz mel VAE decoder, then the BigVGAN vocoder.

Ovi's audio latents [La, 20] are raw MMAudio VAE latents. The VAE decoder turns them into a
normalised 80-bin log-mel spectrogram [80, 2 La], un-normalises it with the per-bin mean/std
stored in the VAE file, and BigVGAN turns the mel (hop 256) into 512 La samples at 16 kHz.

Licence: MMAudio's checkpoints (v1-16.pth, best_netG.pt) are CC-BY-NC 4.0, non-commercial
use only. This code reads them from the user's own download; never redistribute them.

Written from the architecture of hkchengrex/MMAudio as vendored in Ovi (ext/autoencoder,
ext/bigvgan); module and parameter names match upstream so the official files load strictly.
Only the VAE's decoder half is built: the file's `encoder.*` keys are ignored on load.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ovi_attn_capture.components.checkpoints import load_pth
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import SAMPLE_RATE, SAMPLES_PER_TOKEN


# ============================================================================ MMAudio mel VAE decoder
# Magnitude-preserving layers (EDM2): weights are normalised per output channel once at load,
# activations are rescaled so their magnitude stays ~1.

def mp_normalize(x: torch.Tensor, dim, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + rms over `dim`), the rms taken in float32 (EDM2 `normalize`)."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / 0.596  # 0.596 = std of silu(N(0,1)): keeps unit magnitude


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def fold_mp_weight(weight: torch.Tensor) -> torch.Tensor:
    """MMAudio's remove_weight_norm: each output row to unit rms (in float32), then / sqrt(fan_in),
    i.e. unit-norm rows, so a unit-magnitude input gives a unit-magnitude output."""
    w = mp_normalize(weight.to(torch.float32), dim=list(range(1, weight.ndim)))
    return (w / math.sqrt(w[0].numel())).to(weight.dtype)


class MPConv1D(nn.Module):
    """Bias-free 'same' Conv1d whose stored weight is already folded (see fold_mp_weight)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))

    def forward(self, x: torch.Tensor, gain=1) -> torch.Tensor:
        w = self.weight * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)


class ResnetBlock1D(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = MPConv1D(in_dim, out_dim, 3)
        self.conv2 = MPConv1D(out_dim, out_dim, 3)
        self.nin_shortcut = MPConv1D(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        x = mp_normalize(x, dim=1)  # pixel norm over channels
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, t=0.3)


class AttnBlock1D(nn.Module):
    """Single-head self-attention over time with cosine-normalised q, k, v."""

    def __init__(self, channels: int):
        super().__init__()
        self.qkv = MPConv1D(channels, channels * 3, 1)
        self.proj_out = MPConv1D(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        y = self.qkv(x)
        y = y.reshape(y.shape[0], 1, -1, 3, y.shape[-1])  # [B, 1, C, 3, T]: q, k, v interleaved per channel
        q, k, v = mp_normalize(y, dim=2).unbind(3)        # each [B, 1, C, T]
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(x.shape)          # [B, C, T]
        return mp_sum(x, self.proj_out(h), t=0.3)


class Upsample1D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = MPConv1D(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock1D(channels, channels)
        self.attn_1 = AttnBlock1D(channels)
        self.block_2 = ResnetBlock1D(channels, channels)


class UpLevel(nn.Module):
    """One resolution level: num_res_blocks + 1 resnets, then (optionally) 2x upsampling in time."""

    def __init__(self, in_dim: int, out_dim: int, num_blocks: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock1D(in_dim if i == 0 else out_dim, out_dim) for i in range(num_blocks)])
        if upsample:
            self.upsample = Upsample1D(out_dim)


class MelDecoder1D(nn.Module):
    """MMAudio Decoder1D with ch_mult (1, 2, 4), 2 res blocks, attention only in the middle,
    one 2x upsampling (level 1): latent [B, 20, La] -> normalised mel [B, 80, 2 La]."""

    CH_MULT = (1, 2, 4)
    NUM_RES_BLOCKS = 2
    UPSAMPLE_LEVELS = (1,)
    CLIP_ACT = 256.0

    def __init__(self, hidden_dim: int, latent_dim: int, mel_bins: int):
        super().__init__()
        top = hidden_dim * self.CH_MULT[-1]
        self.conv_in = MPConv1D(latent_dim, top, 3)
        self.mid = MidBlock(top)
        levels, in_dim = {}, top
        for level in reversed(range(len(self.CH_MULT))):  # built deepest first, stored by level index
            out_dim = hidden_dim * self.CH_MULT[level]
            levels[level] = UpLevel(in_dim, out_dim, self.NUM_RES_BLOCKS + 1, level in self.UPSAMPLE_LEVELS)
            in_dim = out_dim
        self.up = nn.ModuleList([levels[i] for i in range(len(self.CH_MULT))])
        self.conv_out = MPConv1D(in_dim, mel_bins, 3)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = h.clamp(-self.CLIP_ACT, self.CLIP_ACT)
        for level in reversed(range(len(self.up))):
            for block in self.up[level].block:
                h = block(h).clamp(-self.CLIP_ACT, self.CLIP_ACT)
            if level in self.UPSAMPLE_LEVELS:
                h = self.up[level].upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class MelVAEDecoder(nn.Module):
    """The decoder half of MMAudio's VAE plus the mel statistics it un-normalises with."""

    def __init__(self, hidden_dim: int = 384, latent_dim: int = 20, mel_bins: int = 80):
        super().__init__()
        self.decoder = MelDecoder1D(hidden_dim, latent_dim, mel_bins)
        self.register_buffer("data_mean", torch.zeros(1, mel_bins, 1))
        self.register_buffer("data_std", torch.ones(1, mel_bins, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, 20, La] -> log10-mel [B, 80, 2 La]
        return self.decoder(z) * self.data_std + self.data_mean


# ============================================================================ BigVGAN (v1) vocoder

@dataclass(frozen=True)
class BigVGANConfig:
    """MMAudio's bigvgan_vocoder.yml (resblock '1', snakebeta with log-scale parameters)."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)          # product 256 = the mel hop
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[int, ...] = (1, 3, 5)              # the same for every kernel size


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass, normalised to unit DC gain -> [1, 1, kernel_size]."""
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    if kernel_size % 2 == 0:
        time = torch.arange(-half, half) + 0.5
    else:
        time = torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    """2x band-limited upsampling (transposed conv with the low-pass filter), kernel 12."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, C, 2T]
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio,
                                            groups=channels)
        return x[..., self.crop_left : -self.crop_right]


class LowPassFilter1d(nn.Module):
    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int = 12):
        super().__init__()
        even = kernel_size % 2 == 0
        self.pad_left, self.pad_right = kernel_size // 2 - int(even), kernel_size // 2
        self.stride = stride
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, stride=ratio, kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin^2(alpha x) / beta, per channel, alpha and beta stored as logs."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        # exp and pow run in float32 under CUDA autocast, as upstream's do: keep the same ops
        alpha = torch.exp(self.alpha.unsqueeze(0).unsqueeze(-1))
        beta = torch.exp(self.beta.unsqueeze(0).unsqueeze(-1))
        return x + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample 2x, SnakeBeta, low-pass and downsample 2x."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d(2, 12)
        self.downsample = DownSample1d(2, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """Three (activation, dilated conv, activation, conv) residual units."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList([
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        ])
        self.convs2 = nn.ModuleList([
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1)) for _ in dilations
        ])
        self.activations = nn.ModuleList([Activation1d(channels) for _ in range(2 * len(dilations))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            h = conv1(self.activations[2 * i](x))
            h = conv2(self.activations[2 * i + 1](h))
            x = h + x
        return x


class BigVGANGenerator(nn.Module):
    """mel [B, 80, T] -> waveform [B, 1, 256 T] in [-1, 1]. Weight norm is folded into `weight`."""

    def __init__(self, cfg: BigVGANConfig = BigVGANConfig()):
        super().__init__()
        self.cfg = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.num_mels, ch, 7, padding=3)
        # upstream wraps each transposed conv in its own ModuleList: keys are ups.<i>.0.*
        self.ups = nn.ModuleList([
            nn.ModuleList([nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)])
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        ])
        self.resblocks = nn.ModuleList([
            AMPBlock1(ch // 2 ** (i + 1), k, cfg.resblock_dilations)
            for i in range(len(self.ups)) for k in cfg.resblock_kernel_sizes
        ])
        last = ch // 2 ** len(self.ups)
        self.activation_post = Activation1d(last)
        self.conv_post = nn.Conv1d(last, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n_kernels = len(self.cfg.resblock_kernel_sizes)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            # multi-receptive-field fusion: average the parallel residual stacks
            xs = self.resblocks[i * n_kernels](x)
            for j in range(1, n_kernels):
                xs += self.resblocks[i * n_kernels + j](x)
            x = xs / n_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x)


# ============================================================================ loading

def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs (g, v) by the plain weight g * v / ||v|| (norm over all dims but 0).

    Accepts the old `weight_g`/`weight_v` names, the parametrization names
    (`parametrizations.weight.original0/1`) and already folded `weight`s. Folds in float32,
    as upstream's remove_parametrizations does before the model is cast.
    """
    pairs = {".weight_g": ".weight_v", ".parametrizations.weight.original0": ".parametrizations.weight.original1"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(g_suffix):
                prefix = key[: -len(g_suffix)]
                g, v = value.float(), state[prefix + v_suffix].float()
                out[prefix + ".weight"] = torch._weight_norm(v, g, 0).to(v.dtype)
                break
            if key.endswith(v_suffix):
                break
        else:
            out[key] = value
    return out


def bigvgan_config_from_state(state: dict[str, torch.Tensor]) -> BigVGANConfig:
    """Sizes from a folded generator state dict (upsample rate = kernel // 2, as in every MMAudio config)."""
    n_ups = len({k.split(".")[1] for k in state if k.startswith("ups.")})
    n_res = len({k.split(".")[1] for k in state if k.startswith("resblocks.")})
    if n_ups == 0 or n_res % n_ups or "resblocks.0.convs1.0.weight" not in state:
        raise UserError("The vocoder file is not a BigVGAN (v1, resblock 1) generator; use MMAudio's best_netG.pt.")
    kernels = tuple(state[f"ups.{i}.0.weight"].shape[-1] for i in range(n_ups))
    return BigVGANConfig(
        num_mels=state["conv_pre.weight"].shape[1],
        upsample_rates=tuple(k // 2 for k in kernels),
        upsample_kernel_sizes=kernels,
        upsample_initial_channel=state["conv_pre.weight"].shape[0],
        resblock_kernel_sizes=tuple(state[f"resblocks.{j}.convs1.0.weight"].shape[-1] for j in range(n_res // n_ups)),
    )


def mel_vae_from_state(state: dict[str, torch.Tensor]) -> MelVAEDecoder:
    """Strictly load the decoder half; MMAudio's encoder.* keys are deliberately skipped."""
    state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    if "decoder.conv_in.weight" not in state:
        raise UserError("The audio VAE file has no decoder.conv_in.weight; use MMAudio's ext_weights/v1-16.pth.")
    top, latent_dim, _ = state["decoder.conv_in.weight"].shape
    mel_bins = state["decoder.conv_out.weight"].shape[0]
    vae = MelVAEDecoder(top // MelDecoder1D.CH_MULT[-1], latent_dim, mel_bins)
    folded = {k: fold_mp_weight(v) if k.endswith(".weight") else v for k, v in state.items()}
    vae.load_state_dict({k: v.reshape(vae.state_dict()[k].shape) if k.startswith("data_") else v
                         for k, v in folded.items()}, strict=True)
    return vae.eval().requires_grad_(False)


def vocoder_from_state(state: dict[str, torch.Tensor]) -> BigVGANGenerator:
    state = state.get("generator", state)  # best_netG.pt keeps the generator under 'generator'
    state = fold_weight_norm(state)
    vocoder = BigVGANGenerator(bigvgan_config_from_state(state))
    vocoder.load_state_dict(state, strict=True)
    return vocoder.eval().requires_grad_(False)


class AudioDecoder:
    """Raw audio latents [La, 20] -> 16 kHz waveform [512 La] (MMAudio VAE decoder + BigVGAN).

    MMAudio's weights are CC-BY-NC 4.0 (non-commercial); they are read from the user's folder.
    Upstream runs both networks with bf16 weights under bf16 autocast; `dtype` picks that
    (default for real files) or float32.
    """

    sample_rate = SAMPLE_RATE
    samples_per_latent = SAMPLES_PER_TOKEN
    latent_dim = 20

    def __init__(self, vae: MelVAEDecoder, vocoder: BigVGANGenerator, device="cpu", dtype=torch.bfloat16):
        self.vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.vocoder = vocoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.dtype = dtype
        self.latent_dim = vae.decoder.conv_in.weight.shape[1]

    @classmethod
    def from_files(cls, vae_path: str | os.PathLike, vocoder_path: str | os.PathLike, device="cpu",
                   dtype=torch.bfloat16) -> "AudioDecoder":
        vae = mel_vae_from_state(load_pth(vae_path))
        vocoder = vocoder_from_state(load_pth(vocoder_path))
        return cls(vae, vocoder, device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0, device="cpu", dtype=torch.float32) -> "AudioDecoder":
        from ovi_attn_capture.components.tiny import tiny_bigvgan_state_dict, tiny_mel_vae_state_dict

        vae = mel_vae_from_state(tiny_mel_vae_state_dict(seed))
        vocoder = vocoder_from_state({"generator": tiny_bigvgan_state_dict(seed)})
        return cls(vae, vocoder, device, dtype)

    @property
    def device(self) -> torch.device:
        return self.vocoder.conv_pre.weight.device

    def to(self, device) -> "AudioDecoder":
        self.vae.to(device)
        self.vocoder.to(device)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[La, 20] -> float32 [La * 512] in [-1, 1]."""
        if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
            raise ValueError(f"audio latents must be [La, {self.latent_dim}], got {tuple(latents.shape)}")
        z = latents.to(self.device, self.dtype).T.unsqueeze(0)  # [1, 20, La]
        low_precision = self.dtype != torch.float32
        with torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=low_precision):
            mel = self.vae(z)            # [1, 80, 2 La]
            wave = self.vocoder(mel)     # [1, 1, 512 La]
        return wave[0, 0].float()
