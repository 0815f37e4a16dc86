"""Everything a generation needs besides the sampler: fusion model, text encoder, decoders.

Three sources (model/registry.py's `source`), one interface (`LOADERS`): `toy` (the
default: the bundled toy world model, toy/components.py), `tiny` (every component of the
real kind at toy width with seeded weights, so tests run the same code path as a real run,
on a CPU, in seconds) and the released checkpoints in the official folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import PATCH, audio_seconds_of_tokens, latent_size, pixel_frame_count, token_grid

from ovi_attn_capture.sampling.generate import Texts
from ovi_attn_capture.model import registry
from ovi_attn_capture.model.fusion import FusionModel, build_random, load_checkpoint, tiny_configs


TINY_SEED = 0


@dataclass
class Components:
    model: FusionModel
    text: object  # text_encoder.TextEncoder
    video_vae: object  # video_vae.VideoVAE
    audio: object  # audio_vae.AudioDecoder
    device: torch.device
    prompt_text: str  # the positive prompt, cleaned and in the model's caption convention
    pixel_size: tuple[int, int]  # (H, W)
    video_latent_frames: int
    audio_tokens: int
    slg_layer: int
    files: dict = field(default_factory=dict)  # role -> file name (for the record)
    first_frame: torch.Tensor | None = None  # i2v image latent [48, 1, h, w]
    offload: bool = False

    @property
    def latent_size(self) -> tuple[int, int]:
        return latent_size(self.pixel_size)

    @property
    def video_grid(self) -> tuple[int, int, int]:
        p = self.model.video_model.patch_size if self.model.video_model is not None else PATCH
        return token_grid(self.video_latent_frames, self.pixel_size, p)

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int]:
        return (48, self.video_latent_frames, *self.latent_size)

    @property
    def audio_latent_shape(self) -> tuple[int, int]:
        return (self.audio_tokens, self.audio.latent_dim)

    @property
    def pixel_frames(self) -> int:
        return pixel_frame_count(self.video_latent_frames)

    def clean(self, text: str) -> str:
        from ovi_attn_capture.components.text_encoder import clean_text

        return clean_text(text)

    @torch.no_grad()
    def encode_texts(self, texts: dict) -> Texts:
        """Encode positive and negative prompts in one batch; free the encoder afterwards if offloading."""
        if self.offload:
            self.text.to(self.device)
        pos, vneg, aneg = self.text.encode([texts["positive"], texts["video_negative"], texts["audio_negative"]])
        if self.device.type == "cuda":  # not needed again during sampling: off the GPU
            self.text.to("cpu")
            _empty_cache(self.device)
        if self.offload:  # only now does the fusion model come onto the GPU
            self.model.to(self.device)
        dt = self.model.compute_dtype
        return Texts(pos.to(self.device, dt), vneg.to(self.device, dt), aneg.to(self.device, dt))

    @torch.no_grad()
    def decode(self, video_latent: torch.Tensor, audio_latent: torch.Tensor):
        """Latents -> (uint8 frames [T, H, W, 3], float32 waveform [La * 512])."""
        if self.offload:
            self.model.to("cpu")
            _empty_cache(self.device)
            self.video_vae.to(self.device)
            self.audio.to(self.device)
        video = self.video_vae.decode(video_latent)  # [3, T, H, W] in [-1, 1]
        frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames = frames.permute(1, 2, 3, 0).cpu().numpy()
        waveform = self.audio.decode(audio_latent).float().clamp(-1, 1).cpu().numpy()
        return frames, waveform


def _module_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


def memory_plan(comp: "Components") -> str:
    """Where each component's weights live while sampling, and the activations to expect."""
    F, h, w = comp.video_grid
    gb = 1e9
    parts = [
        ("fusion model", _module_bytes(comp.model), str(comp.device)),
        ("text encoder", _module_bytes(getattr(comp.text, "model", None)),
         "cpu after encoding" if comp.device.type == "cuda" else "cpu"),
        ("video VAE", _module_bytes(getattr(comp.video_vae, "vae", None)),
         "cpu until decoding" if comp.offload else str(comp.device)),
        ("audio decoder", _module_bytes(getattr(comp.audio, "vae", None), getattr(comp.audio, "vocoder", None)),
         "cpu until decoding" if comp.offload else str(comp.device)),
    ]
    # Largest live activations: the per-token FFN of the video tower (bf16), a few copies.
    dim = comp.model.video_model.dim if comp.model.video_model is not None else 0
    ffn = comp.model.video_model.blocks[0].ffn[0].out_features if comp.model.video_model is not None else 0
    act = F * h * w * (ffn + 8 * dim) * 2
    lines = [f"  {name:<14} {size / gb:7.2f} GB  on {where}" for name, size, where in parts]
    lines.append(f"  {'activations':<14} {act / gb:7.2f} GB  (~{F * h * w:,} video tokens)")
    return "memory plan:\n" + "\n".join(lines)


def _empty_cache(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def image_size_for_area(h: int, w: int, area: int, multiple: int = 32) -> tuple[int, int]:
    """Upstream's choice of the i2v frame size: multiples of 32 whose area is closest to the
    model's, ties broken by the closest aspect ratio, among a few candidates around the
    image's own ratio."""
    ratio = w / float(h)
    units = max(1, area // (multiple * multiple))
    p0 = max(1, int(round((units / max(ratio, 1e-8)) ** 0.5)))
    candidates = []
    for dp in range(-3, 4):
        p = max(1, p0 + dp)
        q = max(1, int(round(p * ratio)))
        candidates.append((p * multiple, q * multiple))
    scale = (area / (h * float(w))) ** 0.5
    candidates.append((max(multiple, int(round(h * scale / multiple)) * multiple),
                       max(multiple, int(round(w * scale / multiple)) * multiple)))
    best = min(candidates, key=lambda hw: (abs(hw[0] * hw[1] - area), abs(hw[1] / max(hw[0], 1e-8) - ratio)))
    return max(multiple, best[0]), max(multiple, best[1])


def load_first_frame(image_path: Path, area: int, device, dtype=torch.bfloat16) -> torch.Tensor:
    """The i2v image as upstream prepares it: RGB in [-1, 1], resized bicubically (in the
    model dtype) to the size `image_size_for_area` picks. Returns [3, H, W]."""
    import cv2

    img = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"could not read the image {image_path}; give a PNG or JPEG path in `image:`.")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0).to(device, dtype).unsqueeze(0) * 2.0 - 1.0
    h, w = x.shape[-2:]
    H, W = image_size_for_area(h, w, area)
    if (H, W) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(H, W), mode="bicubic", align_corners=False)
    return x[0]


def _use_first_frame(comp: "Components", run, area: int) -> None:
    """i2v: the image decides the frame size; its latent replaces latent frame 0."""
    image = load_first_frame(Path(run.image), area, comp.device, comp.model.compute_dtype)
    comp.pixel_size = tuple(image.shape[-2:])
    comp.first_frame = comp.video_vae.encode(image.float()).to(comp.model.compute_dtype)


def _pixel_size(run, area: int) -> tuple[int, int]:
    from ovi_attn_capture.components.checkpoints import snap_size

    side = int(round(area**0.5))
    h = run.height or side
    w = run.width or side
    H, W, _ = snap_size(h, w, area)
    return H, W


def model_facts(model: str) -> dict:
    """What prompt_file.resolve_model_defaults needs (model/registry.py)."""
    return registry.default_facts(model)


def load_components(run, device: torch.device, say=print) -> Components:
    """The run's model and components, from where its registry entry says they come from."""
    return loader(run.model).components(run, device, say)


@dataclass(frozen=True)
class Loader:
    """How the models of one source (registry.Model.source) load: the whole bundle, its
    tokenizer alone (cheap, for checks before the weights), its audio decoder's class."""

    components: Callable  # (run, device, say) -> Components
    tokenizer: Callable  # (run) -> a TextEncoder whose `tokenize` works and `encode` does not
    audio_decoder: Callable  # () -> the class (its sample_rate and samples_per_latent)


def loader(model: str) -> Loader:
    """The one place that tells toy, tiny and the released models apart."""
    return LOADERS[registry.get(model).source]


def _load_toy(run, device, say) -> Components:
    from ovi_attn_capture.toy.components import load_toy_components

    return load_toy_components(run, device, say)


def _toy_tokenizer(run):
    from ovi_attn_capture.toy.components import toy_tokenizer_only

    return toy_tokenizer_only()


def _tiny_tokenizer(run):
    from ovi_attn_capture.components.text_encoder import TextEncoder
    from ovi_attn_capture.components.tiny import build_tiny_tokenizer

    return TextEncoder(build_tiny_tokenizer(), None)


def _released_tokenizer(run):
    from ovi_attn_capture.components.text_encoder import TextEncoder

    if not run.ckpt_dir:
        raise UserError(f"model {run.model} needs `ckpt_dir:` to find its tokenizer; set it or pass --ckpt-dir.")
    return TextEncoder.tokenizer_only(run.ckpt_dir)


def _toy_codec():
    from ovi_attn_capture.toy.codec import AudioCodec

    return AudioCodec


def _mmaudio_decoder():
    from ovi_attn_capture.components.audio_vae import AudioDecoder

    return AudioDecoder


def _load_tiny(run, device, say) -> Components:
    from ovi_attn_capture.components.audio_vae import AudioDecoder
    from ovi_attn_capture.components.text_encoder import TextEncoder, clean_text
    from ovi_attn_capture.components.video_vae import VideoVAE

    dtype = torch.float32 if run.dtype == "float32" else torch.bfloat16
    model = build_random(*tiny_configs(), seed=TINY_SEED, compute_dtype=dtype, device=device)
    text = TextEncoder.tiny(seed=TINY_SEED, device=device)
    vae = VideoVAE.tiny(seed=TINY_SEED, device=device)
    audio = AudioDecoder.tiny(seed=TINY_SEED, device=device)
    facts = registry.get("tiny")
    H, W = _pixel_size(run, facts.area)
    comp = Components(model, text, vae, audio, device, clean_text(run.prompt), (H, W), facts.video_latent_frames,
                      facts.audio_latents, _slg(run, facts.default_slg_layer, model.num_layers),
                      files={"fusion": f"tiny (seed {TINY_SEED})"})
    if run.mode == "i2v":
        _use_first_frame(comp, run, facts.area)
    say(f"model: tiny ({model.num_layers} layers, random weights, seed {TINY_SEED}) on {device}")
    return comp


def _slg(run, default: int, num_layers: int) -> int:
    slg = default if run.slg_layer is None else int(run.slg_layer)
    if slg >= num_layers:
        raise UserError(f"slg_layer {slg} is out of range: the model has layers 0..{num_layers - 1} (-1 disables it).")
    return slg


def _load_released(run, device, say) -> Components:
    from ovi_attn_capture.components.audio_vae import AudioDecoder
    from ovi_attn_capture.components.checkpoints import resolve_checkpoint_dir, set_offline
    from ovi_attn_capture.components.text_encoder import TextEncoder, clean_text
    from ovi_attn_capture.components.video_vae import VideoVAE

    if not run.ckpt_dir:
        raise UserError(f"model {run.model} needs `ckpt_dir:` (the official checkpoint folder); set it in the "
                        f"prompt file or pass --ckpt-dir.")
    set_offline()
    spec = registry.get(run.model)
    paths = resolve_checkpoint_dir(run.ckpt_dir, run.model, fp8=run.fp8)
    offload = bool(run.cpu_offload)
    home = torch.device("cpu") if offload else device
    say(f"loading {paths.fusion.name} ...")
    model = load_checkpoint(paths.fusion, device=home)  # configs from the file's shapes
    say("loading umT5-XXL text encoder ...")
    text = TextEncoder.from_checkpoint_dir(run.ckpt_dir, device=home)
    say("loading Wan2.2 VAE and MMAudio decoder (MMAudio weights are CC-BY-NC 4.0) ...")
    vae = VideoVAE.from_file(paths.video_vae, device=home)
    audio = AudioDecoder.from_files(paths.audio_vae, paths.vocoder, device=home)
    H, W = _pixel_size(run, spec.area)
    files = {k: str(getattr(paths, k).name) for k in ("fusion", "t5", "video_vae", "audio_vae", "vocoder")}
    comp = Components(model, text, vae, audio, device, clean_text(spec.format_prompt(run.prompt)), (H, W),
                      spec.video_latent_frames, spec.audio_latents, _slg(run, spec.default_slg_layer, model.num_layers), files,
                      offload=offload)
    if run.mode == "i2v":
        if offload:
            vae.to(device)
        _use_first_frame(comp, run, spec.area)
        if offload:
            vae.to("cpu")
    return comp  # with offload the model waits on the CPU until the texts are encoded


LOADERS = {
    "toy": Loader(_load_toy, _toy_tokenizer, _toy_codec),
    "tiny": Loader(_load_tiny, _tiny_tokenizer, _mmaudio_decoder),
    "released": Loader(_load_released, _released_tokenizer, _mmaudio_decoder),
}


def describe(comp: Components) -> str:
    F, h, w = comp.video_grid
    return (f"{comp.pixel_frames} frames of {comp.pixel_size[0]}x{comp.pixel_size[1]}, token grid {F}x{h}x{w}, "
            f"{comp.audio_tokens} audio tokens ({audio_seconds_of_tokens(comp.audio_tokens):.2f} s)")



# ----------------------------------------------------------------------------- batches
# A batch loads the weights once and runs many prompts on them: what differs from prompt
# to prompt (caption, frame size, i2v first frame, skip layer) is re-derived per run.

LOAD_KEYS = ("model", "ckpt_dir", "dtype", "device", "fp8", "cpu_offload")  # runs that agree on these share weights


def load_key(run) -> tuple:
    return tuple(str(getattr(run, k)) for k in LOAD_KEYS)


def bind_run(comp: Components, run) -> Components:
    """The loaded components set up for another run of the same load_key: same weights,
    this run's caption, frame size, slg layer and i2v first frame (as the loaders set them)."""
    from dataclasses import replace

    from ovi_attn_capture.components.text_encoder import clean_text

    facts = registry.get(run.model)
    area = facts.area
    out = replace(comp, prompt_text=clean_text(facts.format_prompt(run.prompt)), pixel_size=_pixel_size(run, area),
                  first_frame=None, slg_layer=_slg(run, facts.default_slg_layer, comp.model.num_layers))
    if comp.device.type == "cuda" and not comp.offload:
        out.text.to(comp.device)  # the previous run parked the text encoder on the CPU after encoding
    if run.mode == "i2v":
        if comp.offload:
            out.video_vae.to(comp.device)
        _use_first_frame(out, run, area)
        if comp.offload:
            out.video_vae.to("cpu")
    return out
