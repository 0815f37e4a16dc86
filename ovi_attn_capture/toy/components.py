"""The bundled toy world models as `Components` (run.model "toy" or "toy_tracking"), and their files.

data/toy/ holds:
    toy.safetensors           FusionModel weights, 1 head (float8_e4m3fn matrices, float16 vectors);
                              metadata: both tower configs and the training facts as JSON
    toy_tracking.safetensors  the same with 4 heads of 32
    text_encoder.safetensors  the frozen umT5 encoder both were trained with (Wan key names, float32)
    tokenizer.json            the word-level tokenizer
A toy's text encoder and tokenizer are the ones beside its weights file. The codecs are fixed
(codec.py), so they have no weights. The model runs in float32 (it is small; float32 is faster
than bfloat16 on CPUs), whatever `dtype:` says.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ovi_attn_render.common.errors import UserError

from ovi_attn_capture.model import registry
from ovi_attn_capture.toy.codec import AudioCodec, VideoCodec

FACTS = registry.get("toy")  # sizes, skip layer: the registry's (native 128 x 128: a token grid 8 x 8, video patch 1)
VIDEO_NEGATIVE_PROMPT = ""  # what text dropout trained as "no caption" (the upstream negatives work too)
AUDIO_NEGATIVE_PROMPT = ""


def toy_files(weights: Path | None = None, model: str = registry.DEFAULT_MODEL) -> dict[str, Path]:
    """A toy's files: its weights, and the text encoder and tokenizer beside them. `weights` may
    name a file, or a folder holding the model's file (toy.safetensors, toy_tracking.safetensors:
    what training writes); None is the bundled one."""
    weights = registry.toy_weights_file(model) if weights is None else Path(weights)
    if weights.is_dir() or not weights.suffix:
        weights = weights / registry.get(model).fusion_file
    folder = weights.parent
    return {"fusion": weights, "text_encoder": folder / "text_encoder.safetensors",
            "tokenizer": folder / "tokenizer.json"}


def load_toy_model(path: Path, device="cpu", compute_dtype=torch.float32):
    """FusionModel at the configs stored in the file's metadata, weights cast to the compute dtype
    once (float8 ones too: 14 MB in float32, and no cast per layer on every forward)."""
    from ovi_attn_capture.model.fusion import load_checkpoint

    video_config, audio_config = registry.configs_in_file(path)
    return load_checkpoint(path, video_config, audio_config, device=device, compute_dtype=compute_dtype,
                           keep_float8=False)


def load_toy_text_encoder(files: dict[str, Path], device="cpu"):
    """The frozen umT5 encoder and tokenizer of `toy_files(...)`."""
    from safetensors.torch import load_file

    from ovi_attn_capture.toy.text import load_text_encoder

    return load_text_encoder(files["tokenizer"], load_file(str(files["text_encoder"])), device)


def toy_tokenizer_only():
    """Just the toy tokenizer as a TextEncoder (for `ovi-attn tokens`): tokenize works, encode does not."""
    from tokenizers import Tokenizer

    from ovi_attn_capture.components.text_encoder import TextEncoder

    return TextEncoder(Tokenizer.from_file(str(toy_files()["tokenizer"])), None)


def load_toy_components(run, device: torch.device, say=print, weights: Path | None = None):
    """A toy model (run.model's file in data/toy/, or `weights`), its text encoder and fixed
    codecs as the capture pipeline's Components."""
    from ovi_attn_capture.components.loading import Components, _pixel_size, _slg, _use_first_frame
    from ovi_attn_capture.components.text_encoder import clean_text

    files = toy_files(weights, run.model)
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"the toy model's file {missing[0]} is missing; train it with "
                        f"`python -m ovi_attn_capture.toy.train --model {run.model}` (data/toy/README.md) "
                        f"or restore data/toy/ from the repository.")
    model = load_toy_model(files["fusion"], device)
    text = load_toy_text_encoder(files, device)
    video, audio = VideoCodec(device), AudioCodec(device)
    H, W = _pixel_size(run, FACTS.area)
    comp = Components(model, text, video, audio, device, clean_text(run.prompt), (H, W), FACTS.video_latent_frames,
                      FACTS.audio_latents, _slg(run, FACTS.default_slg_layer, model.num_layers),
                      files={k: p.name for k, p in files.items()})
    if run.mode == "i2v":
        _use_first_frame(comp, run, FACTS.area)
    heads = model.video_model.num_heads
    say(f"model: {run.model} ({model.num_layers} layers, {heads} head{'s' if heads > 1 else ''}, trained on the "
        f"shapes world, {files['fusion']}) on {device}")
    return comp
