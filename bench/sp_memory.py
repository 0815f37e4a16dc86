"""Memory per GPU and traffic per layer with and without sequence parallel, from the shapes alone.

    python bench/sp_memory.py            # the tables of docs/DISTRIBUTED.md

Nothing is loaded or run: weights come from the released checkpoint's key list
(tests/data/fusion_state_dict_11b.json) and umT5-XXL's published shape; activations and
all-to-all volumes from the token counts of each model at its native size. Torch-free.
"""

from __future__ import annotations

import json
import math

from _common import ROOT

from ovi_attn_capture.model import registry
from ovi_attn_render.contract.geometry import token_grid

BF16 = 2  # bytes


def tower_size() -> tuple[int, int, int, int]:
    """(width, FFN width, heads, layers) of one tower of the released model, from its config."""
    video, _ = registry.tower_configs("720x720_5s")  # every released model has the same towers
    return video["dim"], video["ffn_dim"], video["num_heads"], video["num_layers"]


DIM, FFN, HEADS, LAYERS = tower_size()


def released_shapes() -> dict[str, tuple[int, int, int, int]]:
    """Released model -> (latent frames F, token grid h x w at its native size, audio tokens La),
    from the model registry and the frame geometry (the one home of both)."""
    return {name: (*token_grid(m.video_latent_frames, m.native_size), m.audio_latents)
            for name, m in registry.MODELS.items() if m.released}


MODELS = released_shapes()
GROUPS = 12  # token groups a typical capture records (capture.tokens: all on a 10-word prompt + <eos>, <pad>)


def fusion_params() -> int:
    shapes = json.loads((ROOT / "tests" / "data" / "fusion_state_dict_11b.json").read_text())
    return sum(math.prod(s) for s in shapes.values())


def umt5_xxl_params() -> int:
    """umT5-XXL encoder: vocab 256384 x 4096 embedding, 24 layers of attention (4 x 4096 x 4096)
    and gated FFN (3 x 4096 x 10240), 32x64 relative-position tables per layer, two norms per layer."""
    d, ff, layers = 4096, 10240, 24
    per_layer = 4 * d * d + 3 * d * ff + 32 * 64 + 2 * d
    return 256384 * d + layers * per_layer + d


def activations(tokens: int) -> int:
    """The largest live set while sampling, as components.memory_plan estimates it: the FFN's hidden
    state plus ~8 model-width tensors (residual, q, k, v, attention output, modulation), bf16."""
    return tokens * (FFN + 8 * DIM) * BF16


def main() -> None:
    gb = 1e9
    fusion, t5 = fusion_params() * BF16, umt5_xxl_params() * BF16
    print(f"fusion weights {fusion / gb:.2f} GB, umT5-XXL {t5 / gb:.2f} GB (bf16), on every rank\n")
    print("| model | video + audio tokens | sp_size | tokens per rank | activations per rank | "
          "peak per GPU while sampling | while encoding text |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (F, h, w, La) in MODELS.items():
        Lv = F * h * w
        for K in (1, 2, 4, 8):
            per_rank = math.ceil(Lv / K) + math.ceil(La / K)
            act = activations(per_rank)
            print(f"| {name} | {Lv:,} + {La} | {K} | {per_rank:,} | {act / gb:.2f} GB | "
                  f"{(fusion + act) / gb:.1f} GB | {(fusion + t5) / gb:.1f} GB |")
    print("\nall-to-all traffic per block and forward pass, sent by each rank (bf16):\n")
    print("| model | sp_size | all-to-alls per block | sent per rank per block | per step (2 passes, 30 + 29 blocks) | "
          "capture adds per captured layer (mean / heads: all) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (F, h, w, La) in MODELS.items():
        Lv = F * h * w
        for K in (2, 4, 8):
            # per tower: self-attention q, k, v, out (4) + cross q, out (2) + the other tower's k, v (2)
            one = lambda L: math.ceil(L / K) * DIM * BF16 * (K - 1) / K  # noqa: E731 - one tensor's share sent
            block = 8 * one(Lv) + 8 * one(La)
            step = block * (LAYERS + LAYERS - 1)
            # reduced maps, float32: text_video + text_audio [G, L], video_audio [F, La], audio_video [La, F] + spatial [Lv]
            maps = (GROUPS * (Lv + La) + 2 * F * La + Lv) * 4
            print(f"| {name} | {K} | 16 | {block / 1e6:,.0f} MB | {step / gb:.1f} GB | "
                  f"{maps / 1e6:.1f} MB / {maps * HEADS / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
