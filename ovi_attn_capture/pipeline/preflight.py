"""What a capture will be, known before any weights load: the tokenizer and the config suffice.

The file's layout (and so its size), every token selection and the prompt's length against
the text limit depend only on the tokenizer, the model's config (patch, heads, layers,
latent lengths) and the frame size. Capture resolves all of them here, refuses what is
wrong, and only then reads the tens of GB of weights. After loading, `shapes_of(comp)`
gives the same facts from the loaded components, and capture checks size and selections
again from those (in memory, milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import pixel_frame_count, token_grid


@dataclass
class Shapes:
    """The facts of a run that decide its capture layout."""

    text: object  # a TextEncoder (tokenize, text_len); tokenizer-only before loading
    prompt_text: str  # the positive prompt, cleaned, in the model's caption convention
    video_grid: tuple[int, int, int]  # (F, h, w) video tokens
    audio_tokens: int
    num_heads: int
    num_layers: int
    pixel_frames: int
    pixel_size: tuple[int, int]
    samples_per_latent: int
    sample_rate: int


def formatted_prompt(run) -> str:
    """The prompt in the model's caption convention, cleaned as the text encoder sees it."""
    from ovi_attn_capture.components.text_encoder import clean_text

    if run.model in ("tiny", "toy"):
        return clean_text(run.prompt)
    from ovi_attn_capture.components.checkpoints import MODELS

    return clean_text(MODELS[run.model].format_prompt(run.prompt))


def tokenizer_for(run):
    """The run's tokenizer alone, as a TextEncoder whose `tokenize` works and `encode` does not."""
    from ovi_attn_capture.components.text_encoder import TextEncoder

    if run.model == "tiny":
        from ovi_attn_capture.components.tiny import build_tiny_tokenizer

        return TextEncoder(build_tiny_tokenizer(), None)
    if run.model == "toy":
        from ovi_attn_capture.toy.components import toy_tokenizer_only

        return toy_tokenizer_only()
    if not run.ckpt_dir:
        raise UserError(f"model {run.model} needs `ckpt_dir:` to find its tokenizer; set it or pass --ckpt-dir.")
    return TextEncoder.tokenizer_only(run.ckpt_dir)


def _image_size(run, area: int) -> tuple[int, int]:
    """i2v: the frame size the first frame's image decides (its header is enough)."""
    import cv2

    from ovi_attn_capture.components.loading import image_size_for_area

    img = cv2.imread(str(run.image), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"could not read the image {run.image}; give a PNG or JPEG path in `image:`.")
    return image_size_for_area(img.shape[0], img.shape[1], area)


def preflight_shapes(run, text=None) -> Shapes:
    """Shapes of `run` from its config and tokenizer only (no weights read)."""
    from ovi_attn_capture.components.loading import TINY, _pixel_size

    if run.model == "tiny":
        from ovi_attn_capture.components.audio_vae import AudioDecoder
        from ovi_attn_capture.model.fusion import tiny_configs

        video_config, _ = tiny_configs()
        frames, audio_tokens, area, audio = TINY.video_latent_frames, TINY.audio_latents, TINY.area, AudioDecoder
    elif run.model == "toy":
        from ovi_attn_capture.toy.codec import AudioCodec
        from ovi_attn_capture.toy.components import AUDIO_LATENTS, LATENT_FRAMES, NATIVE_SIZE, toy_configs

        video_config, _ = toy_configs()
        frames, audio_tokens, area, audio = LATENT_FRAMES, AUDIO_LATENTS, NATIVE_SIZE[0] * NATIVE_SIZE[1], AudioCodec
    else:
        from ovi_attn_capture.components.audio_vae import AudioDecoder
        from ovi_attn_capture.components.checkpoints import MODELS
        from ovi_attn_capture.model.fusion import load_config

        spec = MODELS[run.model]
        video_config = load_config("video_released")
        frames, audio_tokens, area, audio = spec.video_latent_frames, spec.audio_latents, spec.area, AudioDecoder
    H, W = _image_size(run, area) if run.mode == "i2v" else _pixel_size(run, area)
    p = video_config["patch_size"]
    grid = token_grid(frames, (H, W), p)
    return Shapes(text if text is not None else tokenizer_for(run), formatted_prompt(run), grid, audio_tokens,
                  video_config["num_heads"], video_config["num_layers"], pixel_frame_count(frames), (H, W),
                  audio.samples_per_latent, audio.sample_rate)


def shapes_of(comp) -> Shapes:
    """The same facts from loaded components."""
    tower = comp.model.video_model or comp.model.audio_model
    return Shapes(comp.text, comp.prompt_text, tuple(comp.video_grid), comp.audio_tokens, tower.num_heads,
                  comp.model.num_layers, comp.pixel_frames, tuple(comp.pixel_size), comp.audio.samples_per_latent,
                  comp.audio.sample_rate)


def tokens_cut(text_encoder, text: str) -> int:
    """How many tokens of `text` fall past the encoder's text limit (the encoder drops them)."""
    tok = text_encoder.tokenizer
    tok.no_truncation()
    try:
        n = len(tok.encode(text).ids)
    finally:
        tok.enable_truncation(max_length=text_encoder.text_len)
    return max(0, n - text_encoder.text_len)

