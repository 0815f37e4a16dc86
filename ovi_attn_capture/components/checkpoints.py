"""The official Ovi checkpoint folder: which file lives where, and the per-model sizes.

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
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ovi_attn_render.common.errors import UserError


# ----------------------------------------------------------------------------- model specs

def _to_audcap(text: str) -> str:
    """720x720_5s expects the audio caption as <AUDCAP>...<ENDAUDCAP>; rewrite 'Audio: ...'."""
    return re.sub(r"Audio:\s*(.*)", r"<AUDCAP>\1<ENDAUDCAP>", text, flags=re.S)


def _to_audio_colon(text: str) -> str:
    """The 960 models expect 'Audio: ...'; rewrite <AUDCAP>...<ENDAUDCAP>."""
    return re.sub(r"<AUDCAP>(.*?)<ENDAUDCAP>", r"Audio: \1", text, flags=re.S)


@dataclass(frozen=True)
class ModelSpec:
    """What differs between the three released fusion checkpoints (upstream NAME_TO_MODEL_SPECS_MAP)."""

    name: str
    fusion_file: str                      # file name under <ckpt_dir>/Ovi/
    video_latent_frames: int              # F: 1 + (frames - 1) / 4
    audio_latents: int                    # La: 512 samples at 16 kHz each
    area: int                             # target H*W in pixels
    format_prompt: Callable[[str], str]   # moves the audio caption into this model's convention


MODELS: dict[str, ModelSpec] = {
    "720x720_5s": ModelSpec("720x720_5s", "model.safetensors", 31, 157, 720 * 720, _to_audcap),
    "960x960_5s": ModelSpec("960x960_5s", "model_960x960.safetensors", 31, 157, 960 * 960, _to_audio_colon),
    "960x960_10s": ModelSpec("960x960_10s", "model_960x960_10s.safetensors", 61, 314, 960 * 960,
                             _to_audio_colon),
}

FP8_FUSION_FILE = "model_fp8_e4m3fn.safetensors"   # community fp8 build of the 720 model, same keys
FP8_URL = "https://huggingface.co/rkfg/Ovi-fp8_quantized/resolve/main/model_fp8_e4m3fn.safetensors"


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
    fusion_name = FP8_FUSION_FILE if fp8 else MODELS[model].fusion_file
    return CheckpointPaths(
        fusion=root / "Ovi" / fusion_name,
        t5=wan / "models_t5_umt5-xxl-enc-bf16.pth",
        tokenizer_dir=wan / "google" / "umt5-xxl",
        video_vae=wan / "Wan2.2_VAE.pth",
        audio_vae=mmaudio / "v1-16.pth",
        vocoder=mmaudio / "best_netG.pt",
    )


def resolve_checkpoint_dir(ckpt_dir: str | os.PathLike, model: str, fp8: bool = False) -> CheckpointPaths:
    """Check the official layout and return the paths; one UserError lists everything missing."""
    if model not in MODELS:
        raise UserError(f"Unknown model {model!r}; choose one of {', '.join(MODELS)}.")
    if fp8 and model != "720x720_5s":
        raise UserError(f"fp8 weights exist only for 720x720_5s, not {model}; drop fp8 or pick 720x720_5s.")
    paths = checkpoint_paths(ckpt_dir, model, fp8)
    needed = [paths.fusion, paths.t5, paths.tokenizer_dir / "tokenizer.json", paths.video_vae,
              paths.audio_vae, paths.vocoder]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        fix = f"python3 download_weights.py --output-dir {ckpt_dir} --models {model}"
        if fp8 and not paths.fusion.is_file():
            fix += f" and wget -O {paths.fusion} {FP8_URL}"
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
