"""The six models ovi-attn runs, and every fact the tool needs about them, in one place.

    toy          bundled weights trained on the shapes world (data/toy/), runs anywhere: the default
    toy_tracking the same world and size with 4 heads of 32: its self-attention follows objects
    tiny         every component of the real kind at toy width, seeded random weights (tests, demo)
    720x720_5s   released Ovi checkpoint, 5 s clips; the only one with an fp8 build
    960x960_5s   released, 960 x 960
    960x960_10s  released, 10 s clips

Torch-free (the prompt-file validator reads it before anything loads). The loaders
themselves live in components/loading.py, keyed by `Model.source`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ovi_attn_render.common.errors import UserError

SOURCES = ("toy", "tiny", "released")  # where the weights come from: bundled, seeded, Ovi's checkpoint folder
CAPTIONS = ("as_written", "audcap", "audio_colon")  # where a model expects its audio caption
# The samplers every model runs with (sampling/solvers.py builds them); named here, torch-free,
# so prompt files are checked without importing torch.
SOLVERS = ("unipc", "euler", "dpm++")
FP8_URL = "https://huggingface.co/rkfg/Ovi-fp8_quantized/resolve/main/model_fp8_e4m3fn.safetensors"


@dataclass(frozen=True)
class Model:
    name: str
    source: str  # one of SOURCES
    native_size: tuple[int, int]  # (height, width) in pixels the model was trained around
    video_latent_frames: int  # F = 1 + (pixel frames - 1) / 4
    audio_latents: int  # La, 512 samples at 16 kHz each
    default_slg_layer: int  # block the negative pass skips (-1: none)
    caption: str  # one of CAPTIONS
    fusion_file: str | None = None  # released: the file under <ckpt_dir>/Ovi/; toy: the file in data/toy/
    fp8_file: str | None = None  # released: a float8_e4m3fn build of the same keys, if one exists

    @property
    def area(self) -> int:
        """Target H * W in pixels (other sizes are rescaled to it)."""
        return self.native_size[0] * self.native_size[1]

    @property
    def released(self) -> bool:
        return self.source == "released"

    @property
    def has_fp8(self) -> bool:
        return self.fp8_file is not None

    def format_prompt(self, text: str) -> str:
        """The prompt with its audio caption in this model's convention."""
        if self.caption == "audcap":  # 'Audio: ...' -> <AUDCAP>...<ENDAUDCAP>
            return re.sub(r"Audio:\s*(.*)", r"<AUDCAP>\1<ENDAUDCAP>", text, flags=re.S)
        if self.caption == "audio_colon":  # <AUDCAP>...<ENDAUDCAP> -> 'Audio: ...'
            return re.sub(r"<AUDCAP>(.*?)<ENDAUDCAP>", r"Audio: \1", text, flags=re.S)
        return text


MODELS: dict[str, Model] = {m.name: m for m in (
    # The toys were trained without layer skipping. One head of 128 (Ovi's head width) points
    # words at their objects; four of 32 track objects in self-attention (data/toy/README.md).
    Model("toy", "toy", (128, 128), 5, 22, -1, "as_written", "toy.safetensors"),
    Model("toy_tracking", "toy", (128, 128), 5, 22, -1, "as_written", "toy_tracking.safetensors"),
    Model("tiny", "tiny", (256, 256), 5, 22, 1, "as_written"),
    Model("720x720_5s", "released", (720, 720), 31, 157, 11, "audcap", "model.safetensors",
          "model_fp8_e4m3fn.safetensors"),
    Model("960x960_5s", "released", (960, 960), 31, 157, 11, "audio_colon", "model_960x960.safetensors"),
    Model("960x960_10s", "released", (960, 960), 61, 314, 11, "audio_colon", "model_960x960_10s.safetensors"),
)}
DEFAULT_MODEL = "toy"


def get(name: str) -> Model:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    return MODELS[name]


def toy_models() -> tuple[str, ...]:
    return tuple(n for n, m in MODELS.items() if m.source == "toy")


def fp8_models() -> tuple[str, ...]:
    return tuple(n for n, m in MODELS.items() if m.has_fp8)


# ----------------------------------------------------------------------------- tower configs


def load_config(name: str) -> dict:
    """A packaged tower config: 'video_released', 'audio_released', 'video_tiny', 'audio_tiny'."""
    text = resources.files("ovi_attn_capture.model.configs").joinpath(f"{name}.json").read_text()
    return json.loads(text)


def toy_weights_file(name: str = DEFAULT_MODEL) -> Path:
    """Where a toy model's weights are: its file in data/toy/ (or the wheel's bundled copy)."""
    from ovi_attn_capture.toy import TOY_DIR

    if get(name).source != "toy":
        raise UserError(f"{name} is not a toy model; the bundled toys are {', '.join(toy_models())}.")
    return TOY_DIR / get(name).fusion_file


def configs_in_file(path: Path) -> tuple[dict, dict]:
    """(video, audio) tower configs from a toy weights file's metadata; only the header is read.

    A safetensors file starts with the header's length (little-endian u64), then the header
    as JSON, whose "__metadata__" holds the configs as JSON strings."""
    retrain = "train it with `python -m ovi_attn_capture.toy.train` or restore data/toy/ from the repository"
    if not path.is_file():
        raise UserError(f"the toy model's file {path} is missing; {retrain}.")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n)).get("__metadata__") or {}
    if "video_config" not in meta or "audio_config" not in meta:
        raise UserError(f"{path} has no tower configs in its metadata; {retrain}.")
    return json.loads(meta["video_config"]), json.loads(meta["audio_config"])


def tower_configs(name: str) -> tuple[dict, dict]:
    """(video, audio) tower configs of a model, without reading any weights."""
    source = get(name).source
    if source == "toy":
        return configs_in_file(toy_weights_file(name))
    return load_config(f"video_{source}"), load_config(f"audio_{source}")


def num_layers(name: str) -> int:
    return tower_configs(name)[0]["num_layers"]


def num_heads(name: str) -> int:
    return tower_configs(name)[0]["num_heads"]


def default_facts(name: str) -> dict:
    """What prompt_file.resolve_model_defaults needs: num_layers, native_size, default_slg_layer."""
    m = get(name)
    return {"num_layers": num_layers(name), "native_size": m.native_size, "default_slg_layer": m.default_slg_layer}
