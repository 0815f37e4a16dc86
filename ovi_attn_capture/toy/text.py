"""The toy world's tokenizer and text encoder, on the same code paths as umT5-XXL.

The tokenizer is a umT5-style Unigram model over the world's words (whole words as
'▁word' pieces, Ovi's <AUDCAP> tags, single characters as a fallback so any text
tokenizes), lower-cased, with <pad> = 0 and </s> appended. The encoder is a small umT5
(2 layers, width 64) with seeded random weights in Wan's key names, loaded through
`text_encoder.umt5_from_wan_state` exactly as the real file is; it stays frozen, and the
fusion model's `text_embedding` learns to read it. Its attention looks only at each word's
nearest neighbours (`window`): after two layers "circle" in "a red circle moves" carries
"red" and "red" carries "circle", which is what lets the video tower tell which shape goes
with which colour (cross-attention keys have no position of their own). Every position's
output stays distinct, so repeated words stay separable.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from ovi_attn_capture.components.text_encoder import TextEncoder, umt5_from_wan_state
from ovi_attn_capture.components.tiny import unigram_tokenizer, wan_t5_shapes

from ovi_attn_capture.toy.world import WORDS

T5_SIZE = dict(d_model=64, inner=64, num_heads=2, d_ff=128, num_layers=2, num_buckets=32)
T5_SEED = 0
T5_WINDOW = 1  # each encoder layer mixes a word with the words this far away (0: random mixing)
_FAR = -10.0  # position bias beyond the window: softmax weight ~e-10 of a neighbour's
_CONTENT = 0.05  # q and k scale in a windowed encoder: content logits ~0.05, the window decides
_TAGS = ["<audcap>", "<endaudcap>", "<s>", "<e>"]  # lower case: the normalizer lower-cases first
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?;:'\"-()<>/[]&%+=*#@")


def build_tokenizer() -> Tokenizer:
    """Words score best, then tags and punctuation, then single characters (unknown words spell out)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -4.0) for w in WORDS] + [(w, -4.5) for w in WORDS]
    vocab += [("▁" + t, -4.0) for t in _TAGS] + [(t, -4.5) for t in _TAGS]
    vocab += [(c, -10.0) for c in _CHARS] + [("▁" + c, -10.5) for c in _CHARS]
    return unigram_tokenizer(vocab, lowercase=True)


def window_bias(num_buckets: int, window: int) -> torch.Tensor:
    """[num_buckets] position bias: 0 for keys at most `window` positions away, _FAR beyond.
    T5's bidirectional buckets: half per direction, the first 8 of each exact distances."""
    half = num_buckets // 2
    distance = torch.arange(num_buckets) % half  # exact below half // 2, longer distances above
    return torch.where(distance <= window, 0.0, _FAR)


def t5_state_dict(vocab: int, seed: int = T5_SEED, context: float = 1.0,
                  window: int = T5_WINDOW) -> dict[str, torch.Tensor]:
    """Seeded umT5 weights in Wan's names: unit-scale embeddings, fan-in-scaled projections.

    `context` scales what each block adds to the residual stream (attention and FFN outputs):
    below 1 a position's output stays mostly its own word, with a little of its neighbours.
    `window` > 0 makes attention local (see the module docstring); 0 keeps the random blend
    of the whole caption that the earlier toy weights were trained with."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in wan_t5_shapes(vocab, **T5_SIZE).items():
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            state[key] = torch.ones(shape)
        elif key == "token_embedding.weight":
            state[key] = torch.randn(shape, generator=gen)
        elif "pos_embedding" in key:  # relative position bias: enough to tell neighbours apart
            state[key] = torch.randn(shape, generator=gen)
            if window > 0:
                state[key] = window_bias(shape[0], window)[:, None].expand(shape).clone()
        else:
            state[key] = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
            if key.endswith("attn.o.weight") or key.endswith("ffn.fc2.weight"):
                state[key] *= context
            if window > 0 and (key.endswith("attn.q.weight") or key.endswith("attn.k.weight")):
                state[key] *= _CONTENT
    return state


def load_text_encoder(tokenizer_path, state: dict[str, torch.Tensor], device="cpu") -> TextEncoder:
    """The bundled tokenizer.json and encoder weights as the project's TextEncoder (float32)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    return TextEncoder(tokenizer, umt5_from_wan_state(state, device, torch.float32))


def fresh_text_encoder(device="cpu", context: float = 1.0, window: int = T5_WINDOW) -> TextEncoder:
    """The same encoder built in memory (training writes it to data/toy/)."""
    tokenizer = build_tokenizer()
    state = t5_state_dict(tokenizer.get_vocab_size(), context=context, window=window)
    return TextEncoder(tokenizer, umt5_from_wan_state(state, device, torch.float32))
