"""A toy world model: the real Ovi architecture at toy size, trained on a procedural world.

Shapes of known colours move and beep in 17-frame, 0.7 s clips; every clip comes with its
caption, per-frame object masks and sound-event times, so attention maps can be scored
against ground truth. Pieces:

    world.py       the world: scenes, captions, pixel frames, masks, sound events
    codec.py       fixed latent codecs (space-to-depth video, sine-bank audio)
    text.py        word-level umT5-style tokenizer and a small seeded umT5 encoder
    components.py  the bundled weights as `Components` (model: toy, model: toy_tracking)
    train.py       `python -m ovi_attn_capture.toy.train`: flow matching with text dropout
    evaluate.py    pointing game / IoU / audio alignment through the real capture path
    commands.py    the `ovi-attn eval` command
"""

from pathlib import Path

# The weights, card, eval prompts and tokenizer: data/toy/ of a checkout (editable installs),
# else the copy a wheel carries as ovi_attn_capture/toy/bundled/ (pyproject.toml's package-dir).
_CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "data" / "toy"
TOY_DIR = _CHECKOUT_DIR if (_CHECKOUT_DIR / "toy.safetensors").is_file() else Path(__file__).resolve().parent / "bundled"
