"""The Wan2.2 video VAE (z 48, 16x spatial, 4x temporal) as diffusers' AutoencoderKLWan.

The official Wan2.2_VAE.pth uses Wan's module names (vae2_2.py: WanVAE_); `wan_vae_to_diffusers`
renames them. Upstream keeps the weights in bf16 but decodes under float32 autocast, i.e.
float32 compute with bf16-rounded weights; we store exactly those rounded values in float32.
"""

from __future__ import annotations

import os
import re

import torch
from diffusers import AutoencoderKLWan

from ovi_attn_capture.components.checkpoints import load_pth
from ovi_attn_render.common.errors import UserError

# Per-channel statistics of Wan2.2's latent space (vae2_2.py, Wan2_2_VAE): z_norm = (z - mean) / std.
LATENT_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
LATENT_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]


# ----------------------------------------------------------------------------- Wan -> diffusers keys

# Inside a Wan ResidualBlock: Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d)
_RESBLOCK_PARTS = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
                   "shortcut": "conv_shortcut"}
_MIDDLE_PARTS = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}
_HEAD_PARTS = {"0": "norm_out", "2": "conv_out"}  # head = Sequential(RMS_norm, SiLU, CausalConv3d)


def _rename_resblock(rest: str) -> str:
    """'residual.2.weight' -> 'conv1.weight' (the part after a ResidualBlock's prefix)."""
    for wan, ours in _RESBLOCK_PARTS.items():
        if rest.startswith(wan + "."):
            return ours + rest[len(wan):]
    raise KeyError(rest)


def _rename_vae_key(key: str) -> str:
    """One Wan2.2 VAE key -> its AutoencoderKLWan (is_residual=True) key."""
    if m := re.fullmatch(r"conv([12])\.(.+)", key):  # the 1x1x1 convs around the latent
        return ("quant_conv." if m.group(1) == "1" else "post_quant_conv.") + m.group(2)
    if m := re.fullmatch(r"(encoder|decoder)\.conv1\.(.+)", key):
        return f"{m.group(1)}.conv_in.{m.group(2)}"
    if m := re.fullmatch(r"(encoder|decoder)\.head\.(\d+)\.(.+)", key):
        return f"{m.group(1)}.{_HEAD_PARTS[m.group(2)]}.{m.group(3)}"
    if m := re.fullmatch(r"(encoder|decoder)\.middle\.(\d)\.(.+)", key):
        inner = m.group(3) if m.group(2) == "1" else _rename_resblock(m.group(3))  # 1 = AttentionBlock
        return f"{m.group(1)}.{_MIDDLE_PARTS[m.group(2)]}.{inner}"
    # Down_ResidualBlock.downsamples / Up_ResidualBlock.upsamples = [ResidualBlock..., Resample]
    if m := re.fullmatch(r"(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.\w+\.(\d+)\.(.+)", key):
        side, level, index, rest = m.groups()
        blocks = "encoder.down_blocks" if side.startswith("encoder") else "decoder.up_blocks"
        if rest.startswith(("resample.", "time_conv.")):
            sampler = "downsampler" if side.startswith("encoder") else "upsampler"
            return f"{blocks}.{level}.{sampler}.{rest}"
        return f"{blocks}.{level}.resnets.{index}.{_rename_resblock(rest)}"
    raise KeyError(key)


def wan_vae_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        try:
            out[_rename_vae_key(key)] = value
        except KeyError:
            raise UserError(f"Unexpected key {key!r} in the video VAE file; use the official "
                            f"Wan2.2-TI2V-5B/Wan2.2_VAE.pth.") from None
    return out


def wan_vae_config_from_state(state: dict[str, torch.Tensor]) -> dict:
    """AutoencoderKLWan arguments for a Wan2.2-layout state dict, widths read off the tensors."""
    if "decoder.upsamples.0.upsamples.0.residual.0.gamma" not in state:
        raise UserError("The video VAE file is not a Wan2.2 (z 48, residual) VAE; use Wan2.2-TI2V-5B/Wan2.2_VAE.pth.")
    res_blocks = {k.split(".")[4] for k in state if k.startswith("encoder.downsamples.0.downsamples.")
                  and ".residual." in k}
    return dict(
        base_dim=state["encoder.conv1.weight"].shape[0],
        decoder_base_dim=state["decoder.head.2.weight"].shape[1],
        z_dim=state["conv2.weight"].shape[0],
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=len(res_blocks),
        attn_scales=[],
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,  # 3 colours x 2x2 patch
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
        latents_mean=LATENT_MEAN,
        latents_std=LATENT_STD,
    )


def vae_from_wan_state(state: dict[str, torch.Tensor], device="cpu", dtype=torch.bfloat16) -> AutoencoderKLWan:
    """Build on the meta device, adopt the tensors strictly, round to `dtype`, compute in float32."""
    with torch.device("meta"):
        vae = AutoencoderKLWan(**wan_vae_config_from_state(state))
    rounded = {k: v.to(dtype).to(torch.float32) for k, v in wan_vae_to_diffusers(state).items()}
    vae.load_state_dict(rounded, strict=True, assign=True)
    return vae.to(device).eval().requires_grad_(False)


class VideoVAE:
    z_dim = 48

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae
        device = next(vae.parameters()).device
        self.mean = torch.tensor(LATENT_MEAN, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
        # upstream divides by 1/std rather than multiplying by std; keep the same rounding
        self.inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=torch.float32, device=device).view(-1, 1, 1, 1)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device="cpu", dtype=torch.bfloat16) -> "VideoVAE":
        return cls(vae_from_wan_state(load_pth(path), device, dtype))

    @classmethod
    def tiny(cls, seed: int = 0, device="cpu") -> "VideoVAE":
        """AutoencoderKLWan at width 8 with seeded random weights; still z 48, 16x / 4x."""
        from ovi_attn_capture.components.tiny import tiny_video_vae_state_dict

        return cls(vae_from_wan_state(tiny_video_vae_state_dict(seed), device, torch.float32))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def to(self, device) -> "VideoVAE":
        self.vae.to(device)
        self.mean, self.inv_std = self.mean.to(device), self.inv_std.to(device)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [48, F, h, w] -> float32 video [3, 1 + 4(F-1), 16h, 16w] in [-1, 1]."""
        if latents.ndim != 4 or latents.shape[0] != self.z_dim:
            raise ValueError(f"video latents must be [{self.z_dim}, F, h, w], got {tuple(latents.shape)}")
        z = latents.to(self.device).float() / self.inv_std + self.mean
        with torch.autocast(device_type=self.device.type, enabled=False):  # float32 even inside a bf16 loop
            video = self.vae.decode(z.unsqueeze(0)).sample  # clamped to [-1, 1] by diffusers
        return video[0].float()

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image [3, H, W] in [-1, 1] (H, W multiples of 16) -> normalised latent [48, 1, H/16, W/16]."""
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] % 16 or image.shape[2] % 16:
            raise ValueError(f"image must be [3, H, W] with H, W multiples of 16, got {tuple(image.shape)}")
        x = image.to(self.device).float()[None, :, None]  # [1, 3, 1, H, W]
        with torch.autocast(device_type=self.device.type, enabled=False):
            mu = self.vae.encode(x).latent_dist.mean  # posterior mean, as upstream's encode
        return ((mu - self.mean) * self.inv_std)[0].float()
