"""Ovi's fusion diffusion transformer, written to be read top to bottom.

Two Wan2.2-style towers (video, audio) of the same depth exchange information in every
block: each tower's cross-attention attends to the text AND to the other tower. Module
names reproduce the released checkpoint's 2073 keys exactly, so it loads unchanged.

Numerics follow upstream (which runs under bf16 autocast): weights and activations in
the compute dtype (bf16), norms computed in float32 on bf16 inputs and rounded back,
sinusoidal t-embedding and RoPE in float64 then rounded. Build with compute dtype
float32 for exactness tests.

Every attention module computes its q, k, v and hands them to its processor
(processors.py; `FusionModel.set_processor`): plain generation runs the fast kernel
(`attention.attention`), the capture probe runs the same kernel and also turns q, k and
its log-sum-exp into maps, without touching the computation.

The forward takes one sample (video [48, F, H, W], audio [La, 20]) or a batch (a leading
B; contexts then a list of B text embeddings); the block loop is the same for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ovi_attn_render.common.errors import UserError

from ovi_attn_capture.model.processors import PLAIN, AttnProcessor
from ovi_attn_capture.model.registry import load_config

# ----------------------------------------------------------------------------- configs


def released_configs() -> tuple[dict, dict]:
    return load_config("video_released"), load_config("audio_released")


def tiny_configs() -> tuple[dict, dict]:
    return load_config("video_tiny"), load_config("audio_tiny")


# ----------------------------------------------------------------------------- layers
# Linear and convolutions cast weights to the input's dtype, as autocast does upstream;
# this is what lets float8 checkpoints run (weights stay fp8 in memory).


class Linear(nn.Linear):
    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), b)


class Conv3d(nn.Conv3d):
    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), b)


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d over [B, L, C] (channel-last) sequences."""

    def forward(self, x):  # [B, L, Cin] -> [B, L, Cout]
        b = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x.transpose(1, 2), self.weight.to(x.dtype), b).transpose(1, 2)


class ConvMLP(nn.Module):
    """SwiGLU made of three bias-free k=7 convolutions (audio patch embedding)."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 7, padding: int = 3, multiple_of: int = 256):
        super().__init__()
        hidden = int(2 * hidden / 3)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.w1 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(hidden, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RMSNorm(nn.Module):
    """RMS norm over the full width, in float32 on compute-dtype inputs (upstream under autocast)."""

    def __init__(self, dim: int, eps: float = 1e-6, compute_dtype=torch.bfloat16):
        super().__init__()
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xc = x.to(self.compute_dtype).float()
        normed = xc * torch.rsqrt(xc.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(self.compute_dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm in float32 on compute-dtype inputs, result in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False, compute_dtype=torch.bfloat16):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)
        self.compute_dtype = compute_dtype

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        y = F.layer_norm(x.to(self.compute_dtype).float(), self.normalized_shape, w, b, self.eps)
        return y.to(x.dtype)


class Modulation(nn.Module):
    """Holds the learnt [1, 6, dim] table added to the per-token time projection."""

    def __init__(self, dim: int, num: int = 6):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, num, dim) / dim**0.5)

    def forward(self, e0):  # [B, L, 6, C] -> 6 x [B, L, C]
        dt = e0.dtype
        return (self.modulation.to(dt) + e0).unbind(dim=2)


# ----------------------------------------------------------------------------- RoPE


def rope_table(max_pos: int, dim: int, theta: float = 10000.0, scaling: float = 1.0) -> torch.Tensor:
    """Complex128 [max_pos, dim/2]: e^{i * pos * scaling * theta^(-2j/dim)}."""
    freqs = scaling / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float64), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def rope_3d(x, grid, table):
    """Rotate q or k [B, L, H, D] of a video tower by (frame, y, x) positions, in float64."""
    B, L, H, D = x.shape
    c = D // 2
    ft, fh, fw = table.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    n = f * h * w
    angles = torch.cat([
        ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(n, 1, -1)  # [n, 1, c]
    xc = torch.view_as_complex(x[:, :n].to(torch.float64).reshape(B, n, H, -1, 2))
    rotated = torch.view_as_real(xc * angles).flatten(3)
    return torch.cat([rotated, x[:, n:].to(torch.float64)], dim=1).to(x.dtype)


def rope_1d(x, length: int, table):
    """Rotate the first table-width complex pairs of audio q/k [B, L, H, D]; the rest pass."""
    B, L, H, D = x.shape
    c_rot = table.shape[1]
    xc = torch.view_as_complex(x[:, :length].to(torch.float64).reshape(B, length, H, -1, 2))
    rotated = torch.cat([xc[..., :c_rot] * table[:length, None, :], xc[..., c_rot:]], dim=-1)
    rotated = torch.view_as_real(rotated).flatten(3)
    return torch.cat([rotated, x[:, length:].to(torch.float64)], dim=1).to(x.dtype)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[N] timesteps -> [N, dim] float64 (cos | sin), as Wan computes it."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    s = torch.outer(pos, freqs)
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1)


# ----------------------------------------------------------------------------- attention modules


@dataclass
class TextKeys:
    """One tower's embedded text, the keys of its text attention.

    Upstream's form: every prompt zero-padded to 512 rows, no bias. The folded form (training):
    the zero-padded rows are identical, so are their keys; one of them stands for all of them
    with log(512 - n) added to its logit, the same softmax over n_max + 1 keys."""

    states: torch.Tensor  # [B, 512, C], or folded [B, n_max + 1, C] (the last row: the padded one)
    bias: torch.Tensor | None = None  # folded: [B, n_max + 1] float32, 0 real, -inf absent, log(512 - n) padded


class SelfAttention(nn.Module):
    """q, k, v with RMS-normed q and k, RoPE; the attention itself is the processor's (processors.py)."""

    def __init__(self, dim: int, num_heads: int, eps: float, compute_dtype):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps, compute_dtype)
        self.norm_k = RMSNorm(dim, eps, compute_dtype)
        self.sp = None  # a SequenceParallel group, set by FusionModel.attach_sequence_parallel
        self.processor = PLAIN  # set by FusionModel.set_processor
        self.where = ("", -1)  # (tower, layer), for processors that keep something

    def heads(self, x):  # [B, L, C] -> [B, L, H, D]
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

    def forward(self, x, seq_lens, rope):
        q = self.heads(self.norm_q(self.q(x)))  # [B, L, H, D] ([B, L/K, H, D] under sequence parallel)
        k = self.heads(self.norm_k(self.k(x)))
        v = self.heads(self.v(x))
        sp = self.sp
        if sp is not None:  # Ulysses: all tokens, 1/K of the heads
            q, k, v = (sp.to_heads(t, int(seq_lens.max())) for t in (q, k, v))
        out = self.processor(self, "self", rope(q), rope(k), v, k_lens=seq_lens)
        if sp is not None:
            out = sp.to_sequence(out)
        return self.o(out.flatten(2))


class CrossAttention(SelfAttention):
    """Text attention plus, in a fusion model, attention to the other tower.

    q and o are shared: out = o(text_attn(q, k, v) + fusion_attn(rope(q), rope(k_t), v_t)).
    The fusion layers live here but project the OTHER tower's states (`k_fusion` of a
    video block projects audio)."""

    def __init__(self, dim: int, num_heads: int, eps: float, compute_dtype):
        super().__init__(dim, num_heads, eps, compute_dtype)
        self.k_fusion = Linear(dim, dim)
        self.v_fusion = Linear(dim, dim)
        self.pre_attn_norm_fusion = LayerNorm(dim, eps=eps, elementwise_affine=True, compute_dtype=compute_dtype)
        self.norm_k_fusion = RMSNorm(dim, eps=1e-6, compute_dtype=compute_dtype)

    def forward(self, x, text: TextKeys, own_rope=None, target=None):
        """x: [B, L, C] (already norm3'ed); text: the tower's TextKeys; target: None or
        (states [B, Lt, C], seq_lens [B], rope fn of the target tower)."""
        q = self.heads(self.norm_q(self.q(x)))
        k = self.heads(self.norm_k(self.k(text.states)))
        v = self.heads(self.v(text.states))
        sp = self.sp
        if sp is not None:  # queries swapped to all tokens / 1/K of the heads; text keys are local
            q = sp.to_heads(q, sp.lengths[self.where[0]])
            k, v = sp.local_heads(k), sp.local_heads(v)
        out = self.processor(self, "text", q, k, v, key_bias=text.bias)  # every text key, no RoPE, no mask
        if target is not None:
            states, lens, target_rope = target
            t = self.pre_attn_norm_fusion(states)
            k_t = self.heads(self.norm_k_fusion(self.k_fusion(t)))
            v_t = self.heads(self.v_fusion(t))
            if sp is not None:  # the other tower's local tokens, swapped like q
                k_t, v_t = sp.to_heads(k_t, int(lens.max())), sp.to_heads(v_t, int(lens.max()))
            out = out + self.processor(self, "fusion", own_rope(q), target_rope(k_t), v_t, k_lens=lens)
        if sp is not None:
            out = sp.to_sequence(out)
        return self.o(out.flatten(2))


class Block(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, compute_dtype):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps, compute_dtype=compute_dtype)
        self.self_attn = SelfAttention(dim, num_heads, eps, compute_dtype)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True, compute_dtype=compute_dtype)
        self.cross_attn = CrossAttention(dim, num_heads, eps, compute_dtype)
        self.norm2 = LayerNorm(dim, eps, compute_dtype=compute_dtype)
        self.ffn = nn.Sequential(Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ffn_dim, dim))
        self.modulation = Modulation(dim, 6)
        self.compute_dtype = compute_dtype

    def self_attention_part(self, x, mod, seq_lens, rope):
        shift, scale, gate = mod[0], mod[1], mod[2]
        y = self.self_attn(self.norm1(x).to(self.compute_dtype) * (1 + scale) + shift, seq_lens, rope)
        return x + y * gate

    def cross_ffn_part(self, x, mod, text: TextKeys, rope=None, target=None):
        x = x + self.cross_attn(self.norm3(x), text, rope, target)
        shift, scale, gate = mod[3], mod[4], mod[5]
        y = self.ffn(self.norm2(x).to(self.compute_dtype) * (1 + scale) + shift)
        return x + y * gate

    def forward(self, x, e0, seq_lens, rope, text: TextKeys):
        """Single-tower block: self-attention, then text-only cross-attention and FFN."""
        mod = self.modulation(e0)
        x = self.self_attention_part(x, mod, seq_lens, rope)
        return self.cross_ffn_part(x, mod, text)


class Head(nn.Module):
    def __init__(self, dim: int, out_features: int, eps: float, compute_dtype):
        super().__init__()
        self.norm = LayerNorm(dim, eps, compute_dtype=compute_dtype)
        self.head = Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):  # e: [B, L|1, C] time embedding (not the projection)
        shift, scale = (self.modulation.to(e.dtype).unsqueeze(0) + e.unsqueeze(2)).unbind(dim=2)
        return self.head(self.norm(x) * (1 + scale) + shift)


# ----------------------------------------------------------------------------- one tower


class Tower(nn.Module):
    """One Wan2.2 diffusion transformer: video (3-D patches, 3-D RoPE) or audio (1-D)."""

    def __init__(self, config: dict, compute_dtype=torch.bfloat16):
        super().__init__()
        c = config
        self.is_audio = "a" in c["model_type"]
        self.dim, self.num_heads = c["dim"], c["num_heads"]
        self.patch_size = tuple(c["patch_size"])
        self.in_dim, self.out_dim = c["in_dim"], c["out_dim"]
        self.freq_dim, self.text_len = c["freq_dim"], c.get("text_len", 512)
        self.text_dim = c.get("text_dim", 4096)
        self.rope_scaling = c.get("temporal_rope_scaling_factor", 1.0)
        self.compute_dtype = compute_dtype
        dim, eps = self.dim, c.get("eps", 1e-6)

        if self.is_audio:
            self.patch_embedding = nn.Sequential(
                ChannelLastConv1d(self.in_dim, dim, kernel_size=7, padding=3),
                nn.SiLU(),
                ConvMLP(dim, dim * 4, kernel_size=7, padding=3),
            )
        else:
            self.patch_embedding = Conv3d(self.in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(Linear(self.text_dim, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))
        self.time_embedding = nn.Sequential(Linear(self.freq_dim, dim), nn.SiLU(), Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            Block(dim, c["ffn_dim"], self.num_heads, eps, compute_dtype) for _ in range(c["num_layers"])
        )
        self.head = Head(dim, math.prod(self.patch_size) * self.out_dim, eps, compute_dtype)
        self._rope_cache: dict = {}
        self.sp = None  # a SequenceParallel group, set by FusionModel.attach_sequence_parallel

    # RoPE tables are not parameters: rebuilt for whatever device the model is on.
    def rope_table(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._rope_cache:
            d = self.dim // self.num_heads
            if self.is_audio:
                table = rope_table(1024, d - 4 * (d // 6), scaling=self.rope_scaling)
            else:
                table = torch.cat([rope_table(1024, d - 4 * (d // 6)), rope_table(1024, 2 * (d // 6)),
                                   rope_table(1024, 2 * (d // 6))], dim=1)
            self._rope_cache = {key: table.to(device)}
        return self._rope_cache[key]

    def embed(self, x, t, first_frame_is_clean: bool = False):
        """Latents -> (tokens [B, L, C], e [B, L|1, C], e0 [B, L|1, 6, C], grid).

        x: video latents [B, 48, F, H, W] or audio latents [B, La, 20]; t: timesteps [B]
        (or [1], shared by the batch)."""
        cd = self.compute_dtype
        if self.is_audio:
            tokens = self.patch_embedding(x.to(cd))  # [B, La, C]
            grid = (tokens.shape[1],)
        else:
            y = self.patch_embedding(x.to(cd))  # [B, C, F, h, w]
            grid = tuple(y.shape[2:])
            tokens = y.flatten(2).transpose(1, 2)  # [B, F*h*w, C], raster order f, y, x
        B, L = tokens.shape[:2]
        # Timesteps per token: all equal, except i2v's clean first frame (t = 0). The
        # embedding is computed once per distinct value and broadcast.
        t_tok = t.reshape(-1, 1).expand(B, 1)
        if first_frame_is_clean and not self.is_audio:
            n0 = grid[1] * grid[2]
            t_tok = t_tok.expand(B, L).clone()
            t_tok[:, :n0] = 0
        sin = sinusoidal_embedding(self.freq_dim, t_tok.flatten()).to(cd)
        e = self.time_embedding(sin).unflatten(0, t_tok.shape)  # [B, L|1, C]
        e0 = self.time_projection(e).unflatten(2, (6, self.dim))  # [B, L|1, 6, C]
        return tokens, e, e0, grid

    def embed_text(self, contexts, fold_padding: bool = False) -> TextKeys:
        """Text embeddings (B of them, each [n, text_dim], trimmed) -> the text attention's keys.

        Upstream zero-pads every prompt to 512 rows and embeds them all. fold_padding embeds
        the real rows and one zero row instead (see TextKeys; needs a processor that takes
        a key bias)."""
        cd, dev = self.compute_dtype, contexts[0].device
        B, width = len(contexts), contexts[0].shape[1]
        rows = self.text_len if not fold_padding else max(c.shape[0] for c in contexts)
        padded = torch.zeros(B, rows, width, dtype=cd, device=dev)
        for b, c in enumerate(contexts):
            padded[b, : c.shape[0]] = c.to(cd)
        states = self.text_embedding(padded)  # [B, rows, C]
        if not fold_padding:
            return TextKeys(states)
        pad_state = self.text_embedding(torch.zeros(1, 1, width, dtype=cd, device=dev))  # [1, 1, C]
        bias = torch.full((B, rows + 1), float("-inf"), device=dev)
        for b, c in enumerate(contexts):
            bias[b, : c.shape[0]] = 0.0
            if c.shape[0] < self.text_len:
                bias[b, rows] = math.log(self.text_len - c.shape[0])
        return TextKeys(torch.cat([states, pad_state.expand(B, 1, -1)], dim=1), bias)

    def rope_fn(self, grid, device):
        table = self.rope_table(device)
        if self.is_audio:
            return lambda x: rope_1d(x, grid[0], table)
        return lambda x: rope_3d(x, grid, table)

    def unembed(self, x, e, grid):
        """Head and unpatchify: [B, L, C] -> video [B, 48, F, H, W] or audio [B, La, 20]."""
        out = self.head(x, e)
        if self.sp is not None:  # every rank gets every token back
            out = self.sp.gather(out)
        B = out.shape[0]  # out: [B, L, prod(patch) * out_dim]
        if self.is_audio:
            return out[:, : grid[0]].to(self.compute_dtype)
        f, h, w = grid
        p, q, r = self.patch_size
        u = out[:, : f * h * w].reshape(B, f, h, w, p, q, r, self.out_dim)
        u = torch.einsum("bfhwpqrc->bcfphqwr", u).reshape(B, self.out_dim, f * p, h * q, w * r)
        return u.to(self.compute_dtype)

    def token_lengths(self, tokens) -> torch.Tensor:
        """Key lengths [B] (every token real), on the CPU: checking them never syncs the GPU."""
        return torch.full((tokens.shape[0],), tokens.shape[1])

    def forward(self, x, t, context, first_frame_is_clean: bool = False):
        """Single-tower generation step (only video or only audio): one sample or a batch, as FusionModel."""
        x, contexts, one = _as_batch(x, context, 2 if self.is_audio else 4)
        return _unbatch(self.forward_batch(x, t, contexts, first_frame_is_clean), one)

    def forward_batch(self, x, t, contexts, first_frame_is_clean: bool = False, fold_text_padding: bool = False):
        tokens, e, e0, grid = self.embed(x, t, first_frame_is_clean)
        text = self.embed_text(contexts, fold_text_padding)
        lens = self.token_lengths(tokens)
        rope = self.rope_fn(grid, tokens.device)
        for block in self.blocks:
            tokens = block(tokens, e0, lens, rope, text)
        return self.unembed(tokens, e, grid)


def _as_batch(x, context, sample_dims: int):
    """One sample (x with sample_dims dims, context [n, text_dim]) -> a batch of one;
    a batch (x [B, ...], context a list of B embeddings or a [B, n, text_dim] tensor) as it is.
    Returns (x [B, ...], contexts, whether it was one sample)."""
    if x.dim() == sample_dims:
        return x.unsqueeze(0), [context], True
    return x, list(context), False


def _unbatch(x, one: bool):
    return x[0] if (one and x is not None) else x


# ----------------------------------------------------------------------------- fusion


class FusionModel(nn.Module):
    """Video and audio towers of equal depth, joined in every block's cross-attention."""

    def __init__(self, video_config: dict | None, audio_config: dict | None, compute_dtype=torch.bfloat16):
        super().__init__()
        self.video_model = Tower(video_config, compute_dtype) if video_config is not None else None
        self.audio_model = Tower(audio_config, compute_dtype) if audio_config is not None else None
        if self.video_model is not None and self.audio_model is not None:
            assert len(self.video_model.blocks) == len(self.audio_model.blocks), "towers must have equal depth"
        self.compute_dtype = compute_dtype
        self.video_config, self.audio_config = video_config, audio_config
        for name, tower in self.towers():
            for i, block in enumerate(tower.blocks):
                block.self_attn.where = block.cross_attn.where = (name, i)

    @property
    def num_layers(self) -> int:
        tower = self.video_model or self.audio_model
        return len(tower.blocks)

    def towers(self) -> list[tuple[str, Tower]]:
        """[(name, tower)] of the towers this model has."""
        return [(n, t) for n, t in (("video", self.video_model), ("audio", self.audio_model)) if t is not None]

    def set_processor(self, processor: AttnProcessor | None, which: str = "cross",
                      towers: tuple[str, ...] = ("video", "audio"), layers=None) -> None:
        """Hand the attention of the chosen modules to `processor` (processors.py; None: plain).

        which: "cross" (each block's text + fusion attention), "self" or "all"; towers and
        layers (None: every layer) narrow it down. The capture probe is installed this way."""
        if which not in ("cross", "self", "all"):
            raise ValueError(f"which must be 'cross', 'self' or 'all', not {which!r}")
        processor = PLAIN if processor is None else processor
        for name, tower in self.towers():
            if name not in towers:
                continue
            for i, block in enumerate(tower.blocks):
                if layers is not None and i not in layers:
                    continue
                if which in ("cross", "all"):
                    block.cross_attn.processor = processor
                if which in ("self", "all"):
                    block.self_attn.processor = processor

    def attach_sequence_parallel(self, sp) -> None:
        """Run every forward across a sequence-parallel group (sequence_parallel.py); None: one process."""
        if sp is not None and (self.video_model is None or self.audio_model is None):
            raise UserError("sequence parallel (sp_size > 1) needs the fusion model with both towers; set sp_size: 1.")
        for _, tower in self.towers():
            tower.sp = sp
            for block in tower.blocks:
                block.self_attn.sp = block.cross_attn.sp = sp

    def forward(self, video, audio, t, video_context, audio_context,
                first_frame_is_clean: bool = False, slg_layer: int | None = None, fold_text_padding: bool = False):
        """One denoising evaluation, of one sample or of a batch.

        One sample: video [48, F, H, W] latent or None; audio [La, 20] latent or None;
        contexts: text embeddings [n, text_dim]. A batch: video [B, 48, F, H, W], audio
        [B, La, 20], contexts lists of B embeddings. t: int64 or float [1] (shared) or [B].
        Returns (video velocity, audio velocity) with the inputs' shapes (None for an absent
        tower). slg_layer > 0 skips that block in both towers (skip-layer guidance for the
        negative pass). fold_text_padding: see Tower.embed_text (training)."""
        # Single tower: upstream's path runs every block (no skip-layer guidance there).
        if video is None:
            audio, audio_context, one = _as_batch(audio, audio_context, 2)
            return None, _unbatch(self.audio_model.forward_batch(audio, t, audio_context,
                                                                 fold_text_padding=fold_text_padding), one)
        if audio is None:
            video, video_context, one = _as_batch(video, video_context, 4)
            return _unbatch(self.video_model.forward_batch(video, t, video_context, first_frame_is_clean,
                                                           fold_text_padding), one), None
        video, video_context, one = _as_batch(video, video_context, 4)
        audio, audio_context, _ = _as_batch(audio, audio_context, 2)
        v, a = self.forward_batch(video, audio, t, video_context, audio_context, first_frame_is_clean, slg_layer,
                                  fold_text_padding)
        return _unbatch(v, one), _unbatch(a, one)

    def forward_batch(self, video, audio, t, video_contexts, audio_contexts, first_frame_is_clean=False,
                      slg_layer=None, fold_text_padding=False):
        """The fusion forward over a batch: video [B, 48, F, H, W], audio [B, La, 20] -> velocities."""
        vm, am = self.video_model, self.audio_model
        xv, ev, e0v, grid_v = vm.embed(video, t, first_frame_is_clean)
        xa, ea, e0a, grid_a = am.embed(audio, t)
        text_v = vm.embed_text(video_contexts, fold_text_padding)
        text_a = am.embed_text(audio_contexts, fold_text_padding)
        lens_v, lens_a = vm.token_lengths(xv), am.token_lengths(xa)
        sp = vm.sp
        if sp is not None:  # from here on each rank holds its 1/K of the tokens (true lengths kept)
            sp.lengths = {"video": xv.shape[1], "audio": xa.shape[1]}
            xv, xa = sp.shard(xv), sp.shard(xa)
            ev, e0v = sp.shard_if_per_token(ev), sp.shard_if_per_token(e0v)
            ea, e0a = sp.shard_if_per_token(ea), sp.shard_if_per_token(e0a)
        rope_v, rope_a = vm.rope_fn(grid_v, xv.device), am.rope_fn(grid_a, xa.device)

        for i, (bv, ba) in enumerate(zip(vm.blocks, am.blocks)):
            if slg_layer is not None and slg_layer > 0 and i == slg_layer:
                continue
            mod_a, mod_v = ba.modulation(e0a), bv.modulation(e0v)
            xa = ba.self_attention_part(xa, mod_a, lens_a, rope_a)
            xv = bv.self_attention_part(xv, mod_v, lens_v, rope_v)
            audio_after_self = xa
            xa = ba.cross_ffn_part(xa, mod_a, text_a, rope_a, target=(xv, lens_v, rope_v))
            xv = bv.cross_ffn_part(xv, mod_v, text_v, rope_v, target=(audio_after_self, lens_a, rope_a))

        return vm.unembed(xv, ev, grid_v), am.unembed(xa, ea, grid_a)


# ----------------------------------------------------------------------------- building and loading


def build_on_meta(video_config, audio_config, compute_dtype=torch.bfloat16) -> FusionModel:
    """The model's structure without memory: load a checkpoint into it with `load_checkpoint`."""
    with torch.device("meta"):
        return FusionModel(video_config, audio_config, compute_dtype)


def build_random(video_config, audio_config, seed: int = 0, compute_dtype=torch.bfloat16,
                 device="cpu", std: float = 0.02) -> FusionModel:
    """Deterministic random weights (the tiny model, benchmarks at real size)."""
    model = build_on_meta(video_config, audio_config, compute_dtype)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.named_parameters():
        if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm_k_fusion" in name \
                or name.endswith("norm3.weight") or name.endswith("pre_attn_norm_fusion.weight"):
            t = torch.ones(p.shape)
        elif name.endswith(".bias"):
            t = torch.zeros(p.shape)
        elif "modulation" in name:
            t = torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5
        else:
            fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else p.shape[0]
            t = torch.randn(p.shape, generator=gen) * min(std, 1.0 / math.sqrt(fan_in))
        state[name] = t.to(device=device, dtype=compute_dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


class CheckpointMismatch(UserError):
    """A checkpoint whose keys or shapes do not fit the model (a user's file problem)."""


def _describe_mismatch(missing, unexpected, shape_errors) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape_errors)):
        if keys:
            keys = sorted(keys)
            head = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
            parts.append(f"{len(keys)} {label} keys ({head})")
    return "; ".join(parts)


def load_state_dict_into(model: FusionModel, state: dict, source: str = "checkpoint") -> FusionModel:
    """Strict, copy-free load (assign=True) with one clear error naming what does not fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shape_errors = [f"{k} {tuple(state[k].shape)} != {expected[k]}"
                    for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k]]
    if missing or unexpected or shape_errors:
        raise CheckpointMismatch(
            f"{source} does not fit this model: {_describe_mismatch(missing, unexpected, shape_errors)}; "
            f"check that it is the right Ovi checkpoint for the chosen model, complete and unmodified")
    model.load_state_dict(state, strict=True, assign=True)
    return model


def configs_from_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[dict | None, dict | None]:
    """Tower configs implied by a checkpoint's tensor shapes (heads of 128, as in Ovi).

    The released files give back the released configs; a smaller file written in the same
    layout (tests, toy models) gives its own, so one loader serves both."""
    video, audio = released_configs()

    def tower(prefix: str, base: dict) -> dict | None:
        if f"{prefix}.patch_embedding.weight" not in shapes and f"{prefix}.patch_embedding.0.weight" not in shapes:
            return None
        audio_like = f"{prefix}.patch_embedding.0.weight" in shapes
        pe = shapes[f"{prefix}.patch_embedding.0.weight" if audio_like else f"{prefix}.patch_embedding.weight"]
        dim = pe[0]
        patch = [1] if audio_like else list(pe[2:])
        layers = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith(f"{prefix}.blocks."))
        return dict(base, dim=dim, in_dim=pe[1], patch_size=patch, num_heads=dim // 128, num_layers=layers,
                    ffn_dim=shapes[f"{prefix}.blocks.0.ffn.0.weight"][0],
                    text_dim=shapes[f"{prefix}.text_embedding.0.weight"][1],
                    freq_dim=shapes[f"{prefix}.time_embedding.0.weight"][1],
                    out_dim=shapes[f"{prefix}.head.head.weight"][0] // math.prod(patch))

    return tower("video_model", video), tower("audio_model", audio)


def load_checkpoint(path, video_config=None, audio_config=None, device="cpu",
                    compute_dtype=torch.bfloat16, keep_float8: bool = True) -> FusionModel:
    """Build on meta and load a .safetensors checkpoint (bf16, fp32 or float8_e4m3fn).

    Configs default to what the file's shapes imply. Float checkpoints are cast to the
    compute dtype; float8 weights stay float8 and are upcast per layer at run time (keep_float8;
    False casts them once here, for small models whose memory does not matter).
    Tensors are assigned into the meta-built model, never copied twice."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        if video_config is None and audio_config is None:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            video_config, audio_config = configs_from_shapes(shapes)
        state = load_file(str(path), device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors' own error type included: a damaged user file
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path} cannot be read as a safetensors checkpoint ({reason}); "
                        f"the file is damaged or incomplete: download it again") from e
    model = build_on_meta(video_config, audio_config, compute_dtype)
    for k, v in state.items():
        if v.dtype != compute_dtype and (v.dtype != torch.float8_e4m3fn or not keep_float8):
            state[k] = v.to(compute_dtype)
    load_state_dict_into(model, state, source=str(path))
    return model.eval().requires_grad_(False)
