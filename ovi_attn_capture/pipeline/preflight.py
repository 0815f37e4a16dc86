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

from ovi_attn_capture.model import registry


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

    return clean_text(registry.get(run.model).format_prompt(run.prompt))


def tokenizer_for(run):
    """The run's tokenizer alone, as a TextEncoder whose `tokenize` works and `encode` does not."""
    from ovi_attn_capture.components.loading import loader

    return loader(run.model).tokenizer(run)


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
    from ovi_attn_capture.components.loading import _pixel_size, loader

    facts = registry.get(run.model)
    audio = loader(run.model).audio_decoder()
    video_config, _ = registry.tower_configs(run.model)
    frames, audio_tokens, area = facts.video_latent_frames, facts.audio_latents, facts.area
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

