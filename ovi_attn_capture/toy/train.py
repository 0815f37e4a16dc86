"""Train a toy world model: `python -m ovi_attn_capture.toy.train [--steps N] [--model toy_tracking] [--out data/toy]`.

The real `FusionModel` at a small config learns the shapes world with flow matching:
x_s = (1 - s) x0 + s noise, target velocity noise - x0, timestep s * 1000; s is drawn
half from the sampler's shift-5 distribution and half uniformly. 10% of captions are
dropped (empty text, or Ovi's default negative prompts) so classifier-free guidance has
an unconditional model to push against. A curriculum starts with one object per clip.
Everything is seeded; on a CPU it runs in float32.

The training forward is `forward_batch`: the model's own forward over a batch, with one
shortcut that changes no value: the zero-padded text rows up to 512 are identical, so
one padded key with weight (512 - n) stands for all of them (softmax over n + 1 keys
with log(512 - n) added to the padded key's logit; `Tower.embed_text`), attended through
a processor with a backward pass (`TrainingProcessor`). tests/test_toy.py checks it
against `FusionModel.forward` sample by sample.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovi_attn_capture.model import registry
from ovi_attn_capture.model.fusion import FusionModel, build_random
from ovi_attn_capture.model.processors import TrainingProcessor

from ovi_attn_capture.toy import TOY_DIR
from ovi_attn_capture.toy.codec import AudioCodec, VideoCodec
from ovi_attn_capture.toy.world import AUDIO_LATENTS, Scene, audio_amplitudes, render_frames, sample_scene

UPSTREAM_VIDEO_NEGATIVE = "jitter, bad hands, blur, distortion"
UPSTREAM_AUDIO_NEGATIVE = "robotic, muffled, echo, distorted"


@dataclass
class TrainConfig:
    steps: int = 2600  # the bundled weights: one run of these defaults (data/toy/README.md)
    batch: int = 32  # on a CPU a step costs little more at 32 than at 8
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    ema: float = 0.995
    text_dropout: float = 0.1
    one_object_until: float = 0.15  # fraction of steps with single-object clips only
    seed: int = 0
    dim: int = 128
    num_heads: int = 1  # one head of 128, Ovi's head width
    ffn_dim: int = 512
    num_layers: int = 3
    text_dim: int = 64
    # Spatial patch of the video tower. Ovi's 2 packs 2 x 2 x 48 = 192 latent values into each
    # token, more than a width-128 model can carry through to its output: it could not remove
    # the last of the noise (speckled, smeared clips). 1 gives 48 values a token, an 8 x 8 grid.
    video_patch: int = 1
    text_context: float = 1.0  # how much of its neighbours the frozen text encoder mixes into a word (text.py)
    text_window: int = 1  # the frozen encoder's attention reach in words (text.py; 0: random mixing)
    render_size: int = 64  # clips are drawn at 64 px and pooled to the codec's 32 x 32 sub-cells
    threads: int = 2  # both cores of the 2-core machine; 1 on a CPU shared with other work (no spin-waits)
    save_every: int = 300  # steps between checkpoints (the EMA weights), so a long run can be inspected
    max_minutes: float = 0.0  # > 0: stop and save when the wall time runs out (the card says where it stopped)
    held_out: str = str(TOY_DIR / "eval.yaml")  # captions never trained on
    init: str = ""  # a toy weights file of the same config (or a folder with toy.safetensors): continue from it


# What each bundled toy changes from TrainConfig's defaults (data/toy/README.md has the runs).
# One head of 128 binds words to objects; four of 32 make the self-attention follow objects.
PRESETS = {"toy": {}, "toy_tracking": {"num_heads": 4}}


def tower_configs(cfg: TrainConfig) -> tuple[dict, dict]:
    common = dict(dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=256, num_heads=cfg.num_heads,
                  num_layers=cfg.num_layers, text_len=512, text_dim=cfg.text_dim, window_size=[-1, -1],
                  qk_norm=True, cross_attn_norm=True, eps=1e-6)
    video = dict(patch_size=[1, cfg.video_patch, cfg.video_patch], model_type="ti2v", in_dim=48, out_dim=48, **common)
    audio = dict(patch_size=[1], model_type="t2a", in_dim=20, out_dim=20, temporal_rope_scaling_factor=0.19676,
                 **common)
    return video, audio


# ----------------------------------------------------------------------------- data


def scene_latents(scenes: list[Scene], render_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes -> (video latents [B, 48, 5, 8, 8], audio latents [B, 22, 20]) through the fixed codecs."""
    frames = torch.from_numpy(np.stack([render_frames(s, render_size) for s in scenes]))  # [B, 3, 17, S, S]
    grouped = VideoCodec.group_time(frames)  # [B, 3, 5, S, S]
    B, C, Fr, S, _ = grouped.shape
    pooled = F.avg_pool2d(grouped.reshape(B, C * Fr, S, S), S // 32).reshape(B, C, Fr, 32, 32)
    video = VideoCodec().encode_pooled(pooled)
    audio = AudioCodec.normalise(torch.from_numpy(np.stack([audio_amplitudes(s) for s in scenes])))
    return video, audio


class TextCache:
    """Encoder outputs per caption ([n, text_dim]); the encoder is frozen, so each caption is encoded once."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> list[torch.Tensor]:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            # TextEncoder.encode pads to 512; the padded keys are masked out, so stopping the
            # padding at the longest caption gives the same outputs much faster.
            ids, mask = self.encoder._ids_and_mask(new)
            n = int(mask.sum(1).max())
            with torch.no_grad():
                hidden = self.encoder.model(input_ids=ids[:, :n], attention_mask=mask[:, :n]).last_hidden_state
            for t, h, m in zip(new, hidden, mask.sum(1).tolist()):
                self.cache[t] = h[:m].float()
        return [self.cache[t] for t in texts]


# ----------------------------------------------------------------------------- batched forward


TRAINING = TrainingProcessor()


def forward_batch(model: FusionModel, video, audio, t, video_texts: list[torch.Tensor],
                  audio_texts: list[torch.Tensor]):
    """The model's forward over a batch: video [B, 48, F, h, w], audio [B, La, 20], t [B] ->
    velocities of the same shapes. Text lists hold each sample's [n, text_dim] embedding.
    The padded text rows are folded into one key, and the cross-attention runs through the
    differentiable TrainingProcessor (the plain one is put back afterwards)."""
    model.set_processor(TRAINING)
    try:
        return model(video, audio, t, video_texts, audio_texts, fold_text_padding=True)
    finally:
        model.set_processor(None)


# ----------------------------------------------------------------------------- training


def sample_sigmas(gen: torch.Generator, n: int, shift: float = 5.0) -> torch.Tensor:
    """Half from the sampler's shifted schedule (mostly high noise), half uniform (the final steps)."""
    u = torch.rand(n, generator=gen)
    shifted = shift * u / (1 + (shift - 1) * u)
    pick = torch.rand(n, generator=gen) < 0.5
    return torch.where(pick, shifted, u).clamp(1e-3, 0.999)


def held_out_captions(path: str) -> set[str]:
    import yaml

    p = Path(path)
    if not p.is_file():
        return set()
    data = yaml.safe_load(p.read_text()) or {}
    return {str(item["prompt"]).lower() for item in data.get("prompts", [])}


def drop_captions(rng: random.Random, captions: list[str], rate: float) -> tuple[list[str], list[str]]:
    """Per sample: the caption for both towers, or (rate) an unconditional text per tower."""
    video, audio = [], []
    for c in captions:
        if rng.random() < rate:
            video.append("" if rng.random() < 0.7 else UPSTREAM_VIDEO_NEGATIVE)
            audio.append("" if rng.random() < 0.7 else UPSTREAM_AUDIO_NEGATIVE)
        else:
            video.append(c)
            audio.append(c)
    return video, audio


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


DEFAULT_WEIGHTS_FILE = registry.get(registry.DEFAULT_MODEL).fusion_file  # toy.safetensors


def build_model(cfg: TrainConfig, weights_file: str = DEFAULT_WEIGHTS_FILE) -> FusionModel:
    model = build_random(*tower_configs(cfg), seed=cfg.seed, compute_dtype=torch.float32)
    if cfg.init:  # a second stage: the weights a first run saved (its optimizer state is not kept)
        from safetensors.torch import load_file

        path = Path(cfg.init) if Path(cfg.init).suffix == ".safetensors" else Path(cfg.init) / weights_file
        if not path.is_file():
            raise SystemExit(f"--init {cfg.init}: no {path.name} there; point it at the weights a first run wrote.")
        # 1 head of 128 and 4 of 32 have tensors of the same shapes: compare the configs, not the shapes
        if registry.configs_in_file(path) != tower_configs(cfg):
            raise SystemExit(f"--init {path} was trained with other tower settings (its metadata's configs differ "
                             f"from these flags', e.g. --num-heads); continue it with the flags it was trained with.")
        state = load_file(str(path))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    else:
        for tower in (model.video_model, model.audio_model):  # start from a zero velocity
            torch.nn.init.zeros_(tower.head.head.weight)
    return model.train().requires_grad_(True)


def train(cfg: TrainConfig, out_dir: Path, log=functools.partial(print, flush=True),
          weights_file: str = DEFAULT_WEIGHTS_FILE) -> dict:
    """Train, saving the EMA weights to out_dir/weights_file every `save_every` steps and at the end; returns the facts."""
    from ovi_attn_capture.toy.text import build_tokenizer, fresh_text_encoder

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng_np, rng_py = np.random.default_rng(cfg.seed), random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    exclude = held_out_captions(cfg.held_out)
    encoder = fresh_text_encoder(context=cfg.text_context, window=cfg.text_window)
    texts = TextCache(encoder)
    model = build_model(cfg, weights_file)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "modulation" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
    started, losses = time.time(), []
    for step in range(cfg.steps):
        n_objects = 1 if step < cfg.one_object_until * cfg.steps else None
        scenes = [sample_scene(rng_np, n_objects, exclude) for _ in range(cfg.batch)]
        x0_v, x0_a = scene_latents(scenes, cfg.render_size)
        video_caps, audio_caps = drop_captions(rng_py, [s.caption for s in scenes], cfg.text_dropout)
        sigma = sample_sigmas(gen, cfg.batch)
        noise_v, noise_a = torch.randn(x0_v.shape, generator=gen), torch.randn(x0_a.shape, generator=gen)
        sv, sa = sigma.view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1)
        xt_v, xt_a = (1 - sv) * x0_v + sv * noise_v, (1 - sa) * x0_a + sa * noise_a
        pred_v, pred_a = forward_batch(model, xt_v, xt_a, sigma * 1000, texts(video_caps), texts(audio_caps))
        loss_v = F.mse_loss(pred_v, noise_v - x0_v)
        loss_a = F.mse_loss(pred_a, noise_a - x0_a)
        loss = loss_v + loss_a
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(cfg.ema, (1 + step) / (10 + step))
            for k, v in model.state_dict().items():
                ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        losses.append((loss_v.item(), loss_a.item()))
        if step % 50 == 0 or step == cfg.steps - 1:
            recent = np.mean(losses[-50:], axis=0)
            log(f"step {step:5d}  loss video {recent[0]:.4f} audio {recent[1]:.4f}  "
                f"lr {lr_at(step, cfg):.2e}  {time.time() - started:6.0f} s")
        out_of_time = cfg.max_minutes > 0 and time.time() - started > 60 * cfg.max_minutes
        if (step + 1) % cfg.save_every == 0 or step == cfg.steps - 1 or out_of_time:
            facts = _facts(cfg, step + 1, time.time() - started, losses, len(exclude))
            save(out_dir / weights_file, cfg, ema, build_tokenizer(), facts)
        if out_of_time:
            log(f"stopped at step {step + 1}: out of time")
            break
    log(f"saved to {out_dir} after {time.time() - started:.0f} s")
    return facts


def _facts(cfg: TrainConfig, steps_done: int, wall: float, losses: list, held_out: int) -> dict:
    final = np.mean(losses[-200:], axis=0)
    return {"config": asdict(cfg), "steps_done": steps_done, "wall_seconds": round(wall, 1),
            "final_loss_video": round(float(final[0]), 4), "final_loss_audio": round(float(final[1]), 4),
            "torch": torch.__version__, "held_out_captions": held_out}


def stored(state: dict) -> dict:
    """The weights as the toy files keep them: matrices in float8_e4m3fn, everything else float16.

    The loader runs float8 weights as it runs Ovi's fp8 checkpoint (kept float8, cast per
    layer). It halves the file, so two toys fit the repository's 10 MB; the bundled one-head
    toy pointed the same within 0.006 in float8 as in float16 (data/toy/README.md)."""
    def kept(v: torch.Tensor) -> torch.Tensor:
        big_matrix = v.ndim >= 2 and v.numel() >= 4096
        return v.float().to(torch.float8_e4m3fn if big_matrix else torch.float16).contiguous()

    return {k: kept(v) for k, v in state.items()}


def save(weights: Path, cfg: TrainConfig, state: dict, tokenizer, facts: dict) -> None:
    """weights (e.g. data/toy/toy.safetensors), and beside it the text encoder, tokenizer and
    <stem>.training.json (the facts, also in the weights' metadata)."""
    from safetensors.torch import save_file

    from ovi_attn_capture.toy.text import t5_state_dict

    out_dir = weights.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    video_config, audio_config = tower_configs(cfg)
    meta = {"video_config": json.dumps(video_config), "audio_config": json.dumps(audio_config),
            "training": json.dumps(facts)}
    save_file(stored(state), str(weights), metadata=meta)
    save_file(t5_state_dict(tokenizer.get_vocab_size(), context=cfg.text_context, window=cfg.text_window),
              str(out_dir / "text_encoder.safetensors"))
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / f"{weights.stem}.training.json").write_text(json.dumps(facts, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=TOY_DIR)
    parser.add_argument("--model", choices=registry.toy_models(), default="toy",
                        help="which bundled toy to train: its settings (PRESETS) and its file in --out")
    chosen, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[chosen.model])  # flags given on the command line still win
    args = vars(parser.parse_args(argv))
    out, model = args.pop("out"), args.pop("model")
    train(TrainConfig(**args), out, weights_file=registry.get(model).fusion_file)


if __name__ == "__main__":
    main()
