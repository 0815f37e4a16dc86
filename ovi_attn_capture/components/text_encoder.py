"""The umT5 text encoder Ovi conditions on, with a token table for labelling attention maps.

Upstream (Wan's t5.py) ships its own T5 module; we run the same network as transformers'
`UMT5EncoderModel` and load Wan's state dict into it through a key mapping. The tokenizer
is the folder's tokenizer.json read with the `tokenizers` library directly (transformers 5's
T5 tokenizer rebuilds the vocabulary and maps unknown pieces to a different id).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import UMT5Config, UMT5EncoderModel

from ovi_attn_capture.components.checkpoints import load_pth
from ovi_attn_render.common.errors import UserError
# clean_text is upstream's 'whitespace' cleaning (ftfy, HTML-unescape twice, collapse whitespace,
# strip); it lives in the contract, so capture's token spans and render's resolver read one text.
# TEXT_LEN: upstream pads and truncates every prompt to 512 tokens.
from ovi_attn_render.contract.token_groups import TEXT_LEN, Token
from ovi_attn_render.contract.token_groups import clean_prompt_text as clean_text


# ----------------------------------------------------------------------------- Wan -> HF keys

def wan_t5_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan's umT5 encoder keys (t5.py: T5Encoder) to transformers' UMT5EncoderModel keys.

    Every key must be consumed; an unknown key is an error (a different file, not a umT5 encoder).
    """
    layer_rules = [  # Wan block suffix -> HF block suffix
        ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
        ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
        ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
        ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
        ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
        ("norm1.weight", "layer.0.layer_norm.weight"),
        ("norm2.weight", "layer.1.layer_norm.weight"),
        ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),  # the GELU branch
        ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),     # the linear branch
        ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value  # tied to `shared` in HF
            continue
        if key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
            continue
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        renamed = None
        if match:
            for wan_suffix, hf_suffix in layer_rules:
                if match.group(2) == wan_suffix:
                    renamed = f"encoder.block.{match.group(1)}.{hf_suffix}"
        if renamed is None:
            raise UserError(f"Unexpected key {key!r} in the umT5 file; point the checkpoint folder at "
                            f"the official models_t5_umt5-xxl-enc-bf16.pth.")
        out[renamed] = value
    return out


def umt5_config_from_state(state: dict[str, torch.Tensor]) -> UMT5Config:
    """Read every size off the Wan-named tensors, so the same code loads XXL and the tiny test file."""
    vocab, d_model = state["token_embedding.weight"].shape
    inner = state["blocks.0.attn.q.weight"].shape[0]
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
    num_layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // num_heads, d_ff=d_ff, num_layers=num_layers,
        num_heads=num_heads, relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128, feed_forward_proj="gated-gelu",  # gelu_new = upstream's tanh GELU
        layer_norm_epsilon=1e-6, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
        tie_word_embeddings=True,
    )


def umt5_from_wan_state(state: dict[str, torch.Tensor], device="cpu", dtype=torch.bfloat16) -> UMT5EncoderModel:
    """Build the HF encoder on the meta device and adopt the tensors (no second copy in memory)."""
    config = umt5_config_from_state(state)
    config._attn_implementation = "eager"  # plain softmax(QK^T + bias) V, as upstream
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model.load_state_dict(wan_t5_to_hf(state), strict=True, assign=True)
    model.encoder.embed_tokens.weight = model.shared.weight  # one tensor, moved once
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- the encoder

class TextEncoder:
    """Tokenizer + umT5 encoder. `encode` returns the trimmed outputs upstream feeds the towers."""

    def __init__(self, tokenizer: Tokenizer, model: UMT5EncoderModel | None, text_len: int = TEXT_LEN):
        self.tokenizer = tokenizer
        self.model = model  # None for a tokenizer-only instance (token tables without the 11 GB model)
        self.text_len = text_len
        self.text_dim = model.config.d_model if model is not None else None
        self.pad_id = tokenizer.token_to_id("<pad>")
        if self.pad_id is None:
            raise UserError("The tokenizer has no <pad> token; use the official google/umt5-xxl tokenizer.json.")
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=text_len)  # keeps room for the EOS the template appends
        self.eos_id = tokenizer.token_to_id("</s>")
        if self.eos_id is None or tokenizer.encode("a").ids[-1] != self.eos_id:
            raise UserError("The tokenizer does not append </s>; use the official google/umt5-xxl tokenizer.json.")

    @classmethod
    def from_checkpoint_dir(cls, ckpt_dir: str | os.PathLike, device="cpu", dtype=torch.bfloat16) -> "TextEncoder":
        wan = Path(ckpt_dir) / "Wan2.2-TI2V-5B"
        tokenizer = Tokenizer.from_file(str(wan / "google" / "umt5-xxl" / "tokenizer.json"))
        state = load_pth(wan / "models_t5_umt5-xxl-enc-bf16.pth")
        return cls(tokenizer, umt5_from_wan_state(state, device, dtype))

    @classmethod
    def tokenizer_only(cls, ckpt_dir: str | os.PathLike) -> "TextEncoder":
        """Just the folder's tokenizer: `tokenize` works, `encode` does not (text_dim is None)."""
        path = Path(ckpt_dir) / "Wan2.2-TI2V-5B" / "google" / "umt5-xxl" / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"No tokenizer at {path}; download the checkpoints with "
                            f"`python3 download_weights.py --output-dir {ckpt_dir}` from the Ovi repo.")
        return cls(Tokenizer.from_file(str(path)), None)

    @classmethod
    def tiny(cls, seed: int = 0, device="cpu") -> "TextEncoder":
        """A 2-layer, 64-wide umT5 with seeded random weights and a small locally built tokenizer."""
        from ovi_attn_capture.components.tiny import build_tiny_tokenizer, tiny_t5_state_dict

        tokenizer = build_tiny_tokenizer()
        state = tiny_t5_state_dict(tokenizer.get_vocab_size(), seed)
        return cls(tokenizer, umt5_from_wan_state(state, device, torch.float32))

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def to(self, device) -> "TextEncoder":
        self.model.to(device)
        return self

    def tokenize(self, text: str) -> list[Token]:
        """The real tokens of clean_text(text), EOS last (its span is empty, at the end of the text)."""
        cleaned = clean_text(text)
        encoding = self.tokenizer.encode(cleaned)
        tokens = [Token(index=i, id=token_id, piece=piece, start=start, end=end)
                  for i, (token_id, piece, (start, end)) in enumerate(zip(encoding.ids, encoding.tokens,
                                                                          encoding.offsets))]
        tokens[-1].start = tokens[-1].end = len(cleaned)  # the appended </s> has no characters: place it after
        return tokens

    def _ids_and_mask(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, text_len] ids padded with <pad>, and the mask of real tokens (as upstream's tokenizer call)."""
        ids = torch.full((len(texts), self.text_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), self.text_len), dtype=torch.long)
        for row, text in enumerate(texts):
            real = self.tokenizer.encode(clean_text(text)).ids
            ids[row, : len(real)] = torch.tensor(real)
            mask[row, : len(real)] = 1
        return ids, mask

    @torch.no_grad()
    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text -> [n_i, text_dim] in the model's dtype, n_i real tokens including EOS."""
        if self.model is None:
            raise RuntimeError("this TextEncoder was loaded with tokenizer_only(); load the model to encode")
        ids, mask = self._ids_and_mask(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        # upstream encodes before the sampler's bf16 autocast: plain weight-dtype compute
        with torch.autocast(device_type=self.device.type, enabled=False):
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, text_len, D]
        lengths = mask.sum(dim=1).tolist()
        return [h[:n] for h, n in zip(hidden, lengths)]
