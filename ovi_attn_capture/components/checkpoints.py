"""The official Ovi checkpoint folder: which file lives where (the per-model facts: model/registry.py).

`download_weights.py` from the Ovi repo makes this layout:

    <ckpt_dir>/
      Wan2.2-TI2V-5B/google/umt5-xxl/tokenizer.json     umT5 tokenizer (HF format)
      Wan2.2-TI2V-5B/models_t5_umt5-xxl-enc-bf16.pth     umT5-XXL encoder (Wan naming)
      Wan2.2-TI2V-5B/Wan2.2_VAE.pth                      video VAE (Wan naming)
      MMAudio/ext_weights/v1-16.pth                      16 kHz mel VAE   (CC-BY-NC 4.0)
      MMAudio/ext_weights/best_netG.pt                   BigVGAN vocoder  (CC-BY-NC 4.0)
      Ovi/model.safetensors | model_960x960.safetensors | model_960x960_10s.safetensors

We read these files as they are; nothing is converted on disk.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ovi_attn_render.common.errors import UserError

from ovi_attn_capture.model import registry


# ----------------------------------------------------------------------------- paths

@dataclass
class CheckpointPaths:
    fusion: Path
    t5: Path
    tokenizer_dir: Path
    video_vae: Path
    audio_vae: Path
    vocoder: Path


def checkpoint_paths(ckpt_dir: str | os.PathLike, model: str, fp8: bool = False) -> CheckpointPaths:
    """Where each file should be, without checking that it is there."""
    root = Path(ckpt_dir)
    wan = root / "Wan2.2-TI2V-5B"
    mmaudio = root / "MMAudio" / "ext_weights"
    spec = registry.get(model)
    if fp8 and not spec.has_fp8:  # prompt_file._check_model tells the user; reaching here is a bug
        raise ValueError(f"{model} has no fp8 build")
    fusion_name = spec.fp8_file if fp8 else spec.fusion_file
    return CheckpointPaths(
        fusion=root / "Ovi" / fusion_name,
        t5=wan / "models_t5_umt5-xxl-enc-bf16.pth",
        tokenizer_dir=wan / "google" / "umt5-xxl",
        video_vae=wan / "Wan2.2_VAE.pth",
        audio_vae=mmaudio / "v1-16.pth",
        vocoder=mmaudio / "best_netG.pt",
    )


def resolve_checkpoint_dir(ckpt_dir: str | os.PathLike, model: str, fp8: bool = False) -> CheckpointPaths:
    """Check the official layout and return the paths; one UserError lists everything missing.

    `fp8` was checked against the model by the prompt file (prompt_file._check_model)."""
    paths = checkpoint_paths(ckpt_dir, model, fp8)
    needed = [paths.fusion, paths.t5, paths.tokenizer_dir / "tokenizer.json", paths.video_vae,
              paths.audio_vae, paths.vocoder]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        fix = f"python3 download_weights.py --output-dir {ckpt_dir} --models {model}"
        if fp8 and not paths.fusion.is_file():
            fix += f" and wget -O {paths.fusion} {registry.FP8_URL}"
        raise UserError(
            f"The checkpoint folder {ckpt_dir} is missing {len(missing)} file(s): {', '.join(missing)}; "
            f"download them with `{fix}` (download_weights.py is in the Ovi repo, "
            f"https://github.com/character-ai/Ovi)."
        )
    return paths


# ----------------------------------------------------------------------------- loading

def load_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A .pth state dict without running pickled code, memory-mapped when the file allows it.

    mmap keeps the 11 GB umT5 file on disk until each tensor is used; old-format
    (non-zip) files cannot be mapped and are read whole.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def set_offline() -> None:
    """Make every Hugging Face library refuse the network: we only read local files."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; if it is already imported, tell it too.
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True


# ----------------------------------------------------------------------------- sizes

def snap_size(height: int, width: int, area: int) -> tuple[int, int, bool]:
    """Rescale (height, width) to `area` keeping the aspect, then round each to a multiple of 32.

    Mirrors upstream snap_hw_to_multiple_of_32: round(x * scale), then max(32, round(x / 32) * 32).
    The flag says whether the result differs from the request.
    """
    if height <= 0 or width <= 0:
        raise UserError(f"Video size {height}x{width} must be positive; give a height and width above 0.")
    scale = math.sqrt(area / float(height * width))
    scaled_h, scaled_w = int(round(height * scale)), int(round(width * scale))

    def to_32(x: int) -> int:
        return max(32, int(round(x / 32)) * 32)

    new_h, new_w = to_32(scaled_h), to_32(scaled_w)
    return new_h, new_w, (new_h, new_w) != (height, width)
