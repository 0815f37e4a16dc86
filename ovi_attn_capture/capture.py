"""`ovi-attn capture`: prompt file -> one HDF5 file with the clip and its attention maps.

Order of work, so that mistakes surface before anything expensive:
1. validate the run (prompt file, output path, sizes, selections) and build the plan;
2. load components; tokenize and resolve the token groups;
3. estimate file size and extra memory, refuse above the budget;
4. generate with the probe attached, the background writer flushing after every step;
5. decode, store frames and audio, close the file as `complete`.
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ovi_attn_render.errors import UserError
from ovi_attn_render.format import CaptureLayout, TokenRow, estimate_bytes
from ovi_attn_render.units import format_bytes

from . import __version__, attention
from .components import Components, describe, load_components, memory_plan, model_facts
from .generate import SamplerSettings, Texts, sample
from .probe import CapturePlan, CaptureProbe, key_groups
from .prompt_file import RunSpec, resolve_model_defaults
from .token_groups import group_for_other_text, group_words, resolve_groups, words_of

# The dtype maps leave the device in: float16 maps are stored as they come; every other
# encoding gets float32 and encodes on the writer thread (packing from float16 would add
# float16's rounding to the packing's).
def transfer_dtype(map_dtype: str) -> torch.dtype:
    return torch.float16 if map_dtype == "float16" else torch.float32


@dataclass
class CaptureSummary:
    path: Path
    bytes: int
    seconds: float
    steps: int
    layers: int
    groups: list[str]
    kinds: list[str]
    maps_written: int
    video_frames: int
    audio_seconds: float
    clip_path: Path | None = None


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but CUDA is not available here; use `device: cpu` or `auto`.")
    return dev


def check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it or choose another path with -o.")
    if not path.parent.exists():
        raise UserError(f"the output folder {path.parent} does not exist; create it or choose another path with -o.")


def _token_rows(text: str, tokens) -> list[TokenRow]:
    words = words_of(text, tokens)
    word_of = {}
    for w in words:
        for j in w.token_indices:
            word_of[j] = w
    rows = []
    for t in tokens:
        w = word_of.get(t.index)
        rows.append(TokenRow(t.index, t.id, t.piece, t.start, t.end, w.text if w else "", w.index if w else -1))
    return rows


def _group_members(groups, n_tokens: int) -> np.ndarray:
    m = np.zeros((len(groups), n_tokens), np.uint8)
    for g, grp in enumerate(groups):
        if grp.kind != "pad":  # padding keys are not text tokens of the table
            m[g, list(grp.token_indices)] = 1
    return m


def _negative_members(groups, pos_words, text: str, tokens) -> list[list[int] | None]:
    """Token indices of each positive-prompt group inside a negative prompt (None if absent)."""
    out = []
    for grp, words in zip(groups, pos_words):
        found = group_for_other_text(grp, words, text, tokens)
        out.append(None if found is None else list(found.token_indices))
    return out


def build_plan(run: RunSpec, comp: Components, device) -> tuple[CapturePlan, CaptureLayout, dict]:
    """Resolve every selection of the prompt file against the loaded components."""
    cap = run.capture
    enc = comp.text
    texts = {
        "positive": comp.prompt_text,
        "video_negative": comp.clean(run.video_negative_prompt),
        "audio_negative": comp.clean(run.audio_negative_prompt),
    }
    tokens = {k: enc.tokenize(v) for k, v in texts.items()}
    groups = resolve_groups(cap.tokens, texts["positive"], tokens["positive"], text_len=enc.text_len)
    words = words_of(texts["positive"], tokens["positive"])
    pos_words = [group_words(g, words) for g in groups]
    pad = next((i for i, g in enumerate(groups) if g.kind == "pad"), None)

    branches = ["cond", "uncond"] if cap.branch == "both" else [cap.branch]
    grid = comp.video_grid
    steps, layers = list(cap.steps), list(cap.layers)  # resolved by resolve_model_defaults
    kg = {}
    for branch in branches:
        for tower, neg_key in (("video", "video_negative"), ("audio", "audio_negative")):
            key = "positive" if branch == "cond" else neg_key
            if branch == "cond":
                members = [list(g.token_indices) for g in groups]
            else:
                members = _negative_members(groups, pos_words, texts[key], tokens[key])
            if pad is not None:
                members[pad] = []
            kg[(branch, tower)] = key_groups(members, pad, len(tokens[key]), enc.text_len, device)

    plan = CapturePlan(
        steps=steps, layers=layers, kinds=list(cap.kinds), branches=branches,
        keep_heads=cap.heads == "all", map_dtype=transfer_dtype(cap.dtype), video_grid=grid, groups=kg)
    layout = CaptureLayout(
        grid=grid, audio_tokens=comp.audio_tokens, steps=steps, layers=layers,
        groups=[g.label for g in groups], group_kinds=[g.kind for g in groups],
        group_members=_group_members(groups, len(tokens["positive"])),
        tokens=_token_rows(texts["positive"], tokens["positive"]), kinds=list(cap.kinds), branches=branches,
        heads=1 if cap.heads == "mean" else (comp.model.video_model or comp.model.audio_model).num_heads,
        map_dtype=cap.dtype, num_steps=run.steps, num_layers=comp.model.num_layers,
        video_frames=comp.pixel_frames, video_size=comp.pixel_size,
        audio_samples=comp.audio_tokens * comp.audio.samples_per_latent,
        audio_sample_rate=comp.audio.sample_rate, audio_samples_per_token=comp.audio.samples_per_latent,
    )
    return plan, layout, texts


def _versions(device) -> dict:
    v = {"ovi_attn": __version__, "torch": torch.__version__, "python": platform.python_version(),
         "cuda": torch.version.cuda or "", "attention_backend": attention.backend_for(device)}
    if device.type == "cuda":
        v["gpu"] = torch.cuda.get_device_name(device)
    return v


def clip_name(prompt: str, seed: int, when: _dt.datetime) -> str:
    """`<first words of the prompt>_seed<seed>_<UTC time>.mp4`, as upstream names its outputs."""
    import re

    words = re.sub(r"<[^>]*>", " ", prompt)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", words).strip("_")[:48].rstrip("_") or "clip"
    return f"{slug}_seed{seed}_{when.strftime('%Y%m%d-%H%M%S')}.mp4"


def write_clip_mp4(path: Path, frames: np.ndarray, waveform: np.ndarray, sample_rate: int, fps: float = 24.0):
    """H.264 at 24 fps with an AAC track, like upstream's output."""
    from ovi_attn_render.draw import write_mp4

    write_mp4(str(path), lambda i: frames[i], len(frames), fps, waveform, sample_rate)


def run_capture(run: RunSpec, output: Path, *, force: bool = False, console=None, progress: bool = True,
                comp: Components | None = None, mp4: bool = True, sp=None) -> CaptureSummary | None:
    """sp: a sequence_parallel.SequenceParallel group to run across; only its rank 0 writes
    (and decodes); the other ranks compute their heads' maps and return None."""
    output = Path(output)
    writes = sp is None or sp.rank == 0
    if writes:
        check_output(output, force)
    asked = (run.height, run.width) if run.height or run.width else None
    run = resolve_model_defaults(run, **model_facts(run.model))  # bad layers/steps fail here, with their line
    device = resolve_device(run.device)
    say = console.print if console is not None else (lambda *a, **k: None)

    t_load = time.time()
    if comp is None:
        comp = load_components(run, device, say)
    plan, layout, texts = build_plan(run, comp, device)
    if asked is not None and tuple(comp.pixel_size) != (run.height, run.width):
        say(f"[yellow]note:[/] {run.height}x{run.width} was rescaled to the model's area and snapped to "
            f"multiples of 32: {comp.pixel_size[0]}x{comp.pixel_size[1]}")
    say(f"clip: {describe(comp)}")
    say(memory_plan(comp))
    size = estimate_bytes(layout)
    budget = float(run.max_file_gb) * 1e9
    say(f"capture: {len(plan.steps)} steps x {len(plan.layers)} layers x {len(layout.groups)} groups "
        f"({', '.join(plan.kinds)}; {', '.join(plan.branches)}) -> estimated file {format_bytes(size)}, "
        f"extra memory for maps <= {format_bytes(_extra_memory_mb(layout) * 1e6)}")
    if size > budget:
        raise UserError(
            f"the capture would take about {size / 1e9:.1f} GB, over the {run.max_file_gb} GB budget; "
            f"capture fewer steps/layers/tokens or raise `max_file_gb`.")
    if writes and output.exists():  # --force: remove only now that the run is known to be valid
        output.unlink()

    started = _dt.datetime.now(_dt.timezone.utc)
    layout.attrs = _run_attrs(run, comp, texts, started, device)
    from .writer import AsyncCaptureWriter

    writer = AsyncCaptureWriter(output, layout) if writes else None
    probe = CaptureProbe(plan, writer, sp)
    comp.model.attach_probe(probe)
    if sp is not None:
        comp.model.attach_sequence_parallel(sp)
    settings = SamplerSettings(steps=run.steps, solver=run.solver, shift=run.shift,
                               video_guidance_scale=run.video_guidance_scale,
                               audio_guidance_scale=run.audio_guidance_scale,
                               slg_layer=comp.slg_layer, seed=run.seed)
    step_pos = {s: i for i, s in enumerate(plan.steps)}
    t0 = time.time()
    status = "failed"
    try:
        with _progress(progress, console, run.steps) as advance:
            def on_step(i, timestep, sigma):
                if writer is not None and i in step_pos:
                    writer.step_done(step_pos[i] + 1, step_pos[i], timestep, sigma)
                advance(i, probe.maps_written)

            embeddings = comp.encode_texts(texts)
            video_lat, audio_lat = sample(comp.model, embeddings, comp.video_latent_shape, comp.audio_latent_shape,
                                          settings, device, probe=probe, first_frame=comp.first_frame,
                                          on_step=on_step)
        comp.model.attach_probe(None)
        if writer is None:  # a helper rank of a sequence-parallel group: the group's writer decodes
            status = "complete"
            return None
        frames, waveform = comp.decode(video_lat, audio_lat)
        gen_seconds = time.time() - t0
        writer.write_clip(frames, waveform)
        writer.set_attrs(finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         generation_seconds=round(gen_seconds, 3), load_seconds=round(t0 - t_load, 3))
        status = "complete"
    finally:
        comp.model.attach_probe(None)
        if sp is not None:
            comp.model.attach_sequence_parallel(None)
        if writer is not None:
            writer.close(status)
    clip = None
    if mp4:
        clip = output.parent / clip_name(run.prompt, run.seed, started)
        write_clip_mp4(clip, frames, waveform, comp.audio.sample_rate)
    return CaptureSummary(output, output.stat().st_size, time.time() - t0, len(plan.steps), len(plan.layers),
                          list(layout.groups), list(plan.kinds), probe.maps_written, len(frames),
                          len(waveform) / comp.audio.sample_rate, clip)


def _extra_memory_mb(layout: CaptureLayout) -> float:
    from .maps import CHUNK_BYTES

    itemsize = transfer_dtype(layout.map_dtype).itemsize
    F, h, w = layout.grid
    one_layer = len(layout.groups) * layout.heads * (F * h * w + layout.audio_tokens) * itemsize
    return (CHUNK_BYTES + 4 * one_layer) / 1e6


def _run_attrs(run: RunSpec, comp: Components, texts: dict, started, device) -> dict:
    settings = run.settings()
    settings["checkpoint_files"] = comp.files
    settings["height"], settings["width"] = comp.pixel_size
    settings["slg_layer"] = comp.slg_layer
    return {
        "prompt": texts["positive"], "video_negative_prompt": texts["video_negative"],
        "audio_negative_prompt": texts["audio_negative"], "seed": run.seed, "model": run.model,
        "solver": run.solver, "shift": run.shift, "video_guidance_scale": run.video_guidance_scale,
        "audio_guidance_scale": run.audio_guidance_scale, "slg_layer": comp.slg_layer, "mode": run.mode,
        "settings": settings, "versions": _versions(device),
        "started_at": started.isoformat(timespec="seconds"), "finished_at": "",
    }


class _progress:
    """Progress over denoising steps (ovi_attn_render.progress: a bar on a terminal, periodic
    lines on stderr elsewhere); silent when off."""

    def __init__(self, enabled: bool, console, total: int):
        from ovi_attn_render.progress import Progress

        self.progress = Progress("denoising", total, "steps", enabled=enabled, console=console)

    def __enter__(self):
        p = self.progress.__enter__()
        return lambda i, n: p.update(i + 1, maps=n)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)
