"""Everything a generation needs besides the sampler: fusion model, text encoder, decoders.

Two sources, one interface: `tiny` (the embedded default: every component of the real
kind at toy width with seeded weights, so tests and the demo run the same code path as a
real run, on a CPU, in seconds) and the released checkpoints in the official folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ovi_attn_render.errors import UserError

from .generate import Texts
from .model import FusionModel, build_random, load_checkpoint, released_configs, tiny_configs


@dataclass(frozen=True)
class SizeSpec:
    """Latent lengths and pixel area of a model (the released ones come from checkpoints.MODELS)."""

    video_latent_frames: int
    audio_latents: int
    area: int
    default_slg_layer: int


TINY = SizeSpec(video_latent_frames=5, audio_latents=22, area=256 * 256, default_slg_layer=1)
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
        return self.pixel_size[0] // 16, self.pixel_size[1] // 16

    @property
    def video_grid(self) -> tuple[int, int, int]:
        h, w = self.latent_size
        p = self.model.video_model.patch_size if self.model.video_model is not None else (1, 2, 2)
        return self.video_latent_frames, h // p[1], w // p[2]

    @property
    def video_latent_shape(self) -> tuple[int, int, int, int]:
        return (48, self.video_latent_frames, *self.latent_size)

    @property
    def audio_latent_shape(self) -> tuple[int, int]:
        return (self.audio_tokens, self.audio.latent_dim)

    @property
    def pixel_frames(self) -> int:
        return 1 + 4 * (self.video_latent_frames - 1)

    def clean(self, text: str) -> str:
        from .text_encoder import clean_text

        return clean_text(text)

    @torch.no_grad()
    def encode_texts(self, texts: dict) -> Texts:
        """Encode positive and negative prompts in one batch; free the encoder afterwards if offloading."""
        if self.offload:
            self.text.to(self.device)
        pos, vneg, aneg = self.text.encode([texts["positive"], texts["video_negative"], texts["audio_negative"]])
        if self.offload:
            self.text.to("cpu")
            _empty_cache(self.device)
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


def _empty_cache(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _image_latent(video_vae, image_path: Path, pixel_size, device) -> torch.Tensor:
    """Read, resize (area-preserving, snapped as upstream) and encode the i2v first frame."""
    import cv2

    img = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"could not read the image {image_path}; give a PNG or JPEG path in `image:`.")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    H, W = pixel_size
    img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1).to(device)
    return video_vae.encode(x)


def _pixel_size(run, area: int) -> tuple[int, int]:
    from .checkpoints import snap_size

    side = int(round(area**0.5))
    h = run.height or side
    w = run.width or side
    H, W, moved = snap_size(h, w, area)
    if moved and (run.height or run.width):
        import warnings

        warnings.warn(f"height x width {h}x{w} was rescaled to the model's area and snapped to {H}x{W}")
    return H, W


def load_components(run, device: torch.device, say=print) -> Components:
    if run.model == "tiny":
        return _load_tiny(run, device, say)
    return _load_released(run, device, say)


def _load_tiny(run, device, say) -> Components:
    from .audio_vae import AudioDecoder
    from .text_encoder import TextEncoder, clean_text
    from .video_vae import VideoVAE

    dtype = torch.float32 if run.dtype == "float32" else torch.bfloat16
    model = build_random(*tiny_configs(), seed=TINY_SEED, compute_dtype=dtype, device=device)
    text = TextEncoder.tiny(seed=TINY_SEED, device=device)
    vae = VideoVAE.tiny(seed=TINY_SEED, device=device)
    audio = AudioDecoder.tiny(seed=TINY_SEED, device=device)
    H, W = _pixel_size(run, TINY.area)
    comp = Components(model, text, vae, audio, device, clean_text(run.prompt), (H, W), TINY.video_latent_frames,
                      TINY.audio_latents, _slg(run, TINY.default_slg_layer, model.num_layers),
                      files={"fusion": f"tiny (seed {TINY_SEED})"})
    if run.mode == "i2v":
        comp.first_frame = _image_latent(vae, Path(run.image), (H, W), device)
    say(f"model: tiny ({model.num_layers} layers, random weights, seed {TINY_SEED}) on {device}")
    return comp


def _slg(run, default: int, num_layers: int) -> int:
    slg = default if run.slg_layer is None else int(run.slg_layer)
    if slg >= num_layers:
        raise UserError(f"slg_layer {slg} is out of range: the model has layers 0..{num_layers - 1} (-1 disables it).")
    return slg


def _load_released(run, device, say) -> Components:
    from .audio_vae import AudioDecoder
    from .checkpoints import MODELS, resolve_checkpoint_dir, set_offline
    from .text_encoder import TextEncoder, clean_text
    from .video_vae import VideoVAE

    if not run.ckpt_dir:
        raise UserError(f"model {run.model} needs `ckpt_dir:` (the official checkpoint folder); set it in the "
                        f"prompt file or pass --ckpt-dir.")
    set_offline()
    spec = MODELS[run.model]
    paths = resolve_checkpoint_dir(run.ckpt_dir, run.model, fp8=run.fp8)
    offload = bool(run.cpu_offload)
    home = torch.device("cpu") if offload else device
    say(f"loading {paths.fusion.name} ...")
    model = load_checkpoint(paths.fusion, *released_configs(), device=home)
    say("loading umT5-XXL text encoder ...")
    text = TextEncoder.from_checkpoint_dir(run.ckpt_dir, device=home)
    say("loading Wan2.2 VAE and MMAudio decoder (MMAudio weights are CC-BY-NC 4.0) ...")
    vae = VideoVAE.from_file(paths.video_vae, device=home)
    audio = AudioDecoder.from_files(paths.audio_vae, paths.vocoder, device=home)
    H, W = _pixel_size(run, spec.area)
    files = {k: str(getattr(paths, k).name) for k in ("fusion", "t5", "video_vae", "audio_vae", "vocoder")}
    comp = Components(model, text, vae, audio, device, clean_text(spec.format_prompt(run.prompt)), (H, W),
                      spec.video_latent_frames, spec.audio_latents, _slg(run, 11, model.num_layers), files,
                      offload=offload)
    if run.mode == "i2v":
        if offload:
            vae.to(device)
        comp.first_frame = _image_latent(vae, Path(run.image), (H, W), device)
        if offload:
            vae.to("cpu")
    if offload:
        model.to(device)  # the model lives on the GPU during sampling; the rest waits on the CPU
    return comp


def describe(comp: Components) -> str:
    F, h, w = comp.video_grid
    return (f"{comp.pixel_frames} frames of {comp.pixel_size[0]}x{comp.pixel_size[1]}, token grid {F}x{h}x{w}, "
            f"{comp.audio_tokens} audio tokens ({comp.audio_tokens * 512 / 16000:.2f} s)")

