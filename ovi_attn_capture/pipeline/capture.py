"""`ovi-attn capture`: prompt file -> one HDF5 file with the clip and its attention maps.

Order of work, so that mistakes surface before anything expensive:
1. validate the run (prompt file, output paths, sizes) and, from the tokenizer and the
   config alone (preflight.py), resolve every token selection, the prompt's length, the
   file's layout and size: refuse over the budget or the free space;
2. load components (the weights) and check they agree with the preflight;
3. create the file (atomically, outputs.py) and generate with the probe attached, the
   background writer flushing after every step; SIGINT/SIGTERM stop at the next layer
   (stopping.py) and the file says `interrupted`; a full disk says `failed: disk full`;
4. decode, store frames and audio, close the file as `complete`; under --force only now
   does it replace the old file; then the clip MP4 beside it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ovi_attn_render.common import atomic

from ovi_attn_render.common import hooks
from ovi_attn_render.common.errors import Interrupted, UserError
from ovi_attn_render.contract.format import CaptureLayout, estimate_bytes
from ovi_attn_render.contract.geometry import FPS
from ovi_attn_render.common.units import format_bytes

from ovi_attn_capture import __version__

from ovi_attn_capture.model import attention
from ovi_attn_capture.components.loading import Components, describe, load_components, memory_plan, model_facts
from ovi_attn_capture.sampling.generate import SamplerSettings, Texts, sample
from ovi_attn_capture.pipeline.outputs import OutputPlan, check_free_space, create_capture_file, human, plan_outputs, render_hint
from ovi_attn_capture.pipeline.preflight import Shapes, preflight_shapes, shapes_of, tokens_cut
from ovi_attn_capture.probe.probe import CapturePlan, CaptureProbe, key_groups
from ovi_attn_capture.probe.query_probe import QueryPlan
from ovi_attn_capture.pipeline.queries import resolve_queries
from ovi_attn_capture.pipeline.prompt_file import RunSpec, resolve_model_defaults
from ovi_attn_capture.pipeline.stopping import StopNow, StopRequests
from ovi_attn_render.contract.token_groups import (TokenTable, group_for_other_text, group_members, group_words,
                                                   words_of)
from ovi_attn_capture.pipeline.writer import WriterFailed, is_disk_full

CLOSE_TIMEOUT_S = 120.0  # the writer drains and closes within this, or the process leaves without it

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
    frames: np.ndarray | None = None  # the decoded clip, until the MP4 is written
    waveform: np.ndarray | None = None


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but CUDA is not available here; use `device: cpu` or `auto`.")
    return dev


def _negative_members(groups, pos_words, text: str, tokens) -> list[list[int] | None]:
    """Token indices of each positive-prompt group inside a negative prompt (None if absent)."""
    out = []
    for grp, words in zip(groups, pos_words):
        found = group_for_other_text(grp, words, text, tokens)
        out.append(None if found is None else list(found.token_indices))
    return out


def build_plan(run: RunSpec, shapes: Shapes, device) -> tuple[CapturePlan, CaptureLayout, dict]:
    """Resolve every selection of the prompt file against the run's shapes (preflight or loaded)."""
    from ovi_attn_capture.components.text_encoder import clean_text

    cap = run.capture
    enc = shapes.text
    texts = {
        "positive": shapes.prompt_text,
        "video_negative": clean_text(run.video_negative_prompt),
        "audio_negative": clean_text(run.audio_negative_prompt),
    }
    tokens = {k: enc.tokenize(v) for k, v in texts.items()}
    table = TokenTable.of(texts["positive"], tokens["positive"], cap.tokens, text_len=enc.text_len)
    groups = table.groups
    words = words_of(texts["positive"], tokens["positive"])
    pos_words = [group_words(g, words) for g in groups]
    pad = next((i for i, g in enumerate(groups) if g.kind == "pad"), None)

    branches = list(cap.branches)
    grid = shapes.video_grid
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

    placed, query_plan = plan_queries(run, shapes, texts["positive"], tokens["positive"], device)
    plan = CapturePlan(
        steps=steps, layers=layers, kinds=list(cap.kinds), branches=branches,
        keep_heads=cap.heads == "all", map_dtype=transfer_dtype(cap.dtype), video_grid=grid, groups=kg,
        queries=query_plan)
    layout = CaptureLayout(
        grid=grid, audio_tokens=shapes.audio_tokens, steps=steps, layers=layers,
        groups=[g.label for g in groups], group_kinds=[g.kind for g in groups],
        group_members=group_members(groups, len(tokens["positive"])),
        tokens=table.tokens, kinds=list(cap.kinds), branches=branches,
        heads=1 if cap.heads == "mean" else shapes.num_heads,
        map_dtype=cap.dtype, num_steps=run.steps, num_layers=shapes.num_layers,
        video_frames=shapes.pixel_frames, video_size=tuple(shapes.pixel_size),
        audio_samples=shapes.audio_tokens * shapes.samples_per_latent,
        audio_sample_rate=shapes.sample_rate, audio_samples_per_token=shapes.samples_per_latent,
        queries=placed,
    )
    return plan, layout, texts


def plan_queries(run: RunSpec, shapes: Shapes, text: str, tokens, device):
    """The prompt file's query points placed on this run's grid, and the probe's plan for them
    (None without queries). An adaptive query's token resolves like capture.tokens does."""
    if not run.queries:
        return [], None
    placed = resolve_queries(run.queries, pixel_frames=shapes.pixel_frames, pixel_size=tuple(shapes.pixel_size),
                             grid=shapes.video_grid, audio_tokens=shapes.audio_tokens,
                             seconds_per_token=shapes.samples_per_latent / shapes.sample_rate)
    video = [q for q in placed if q.tower == "video"]
    audio = [q for q in placed if q.tower == "audio"]
    adaptive = {}
    for i, q in enumerate(video):
        if q.adaptive:
            groups = [g for g in TokenTable.of(text, tokens, [q.token], text_len=shapes.text.text_len).groups
                      if g.kind != "pad"]
            chosen = [g for g in groups if g.kind != "eos"] or groups  # `<eos>` alone selects the EOS token
            members = sorted({j for g in chosen for j in g.token_indices})
            adaptive[i] = key_groups([members], None, len(tokens), shapes.text.text_len, device)
    plan = QueryPlan(video, audio, tuple(shapes.video_grid), shapes.audio_tokens, adaptive)
    return video + audio, plan


def _versions(device) -> dict:
    v = {"ovi_attn": __version__, "torch": torch.__version__, "python": platform.python_version(),
         "cuda": torch.version.cuda or "", "attention_backend": attention.backend_for(device)}
    if device.type == "cuda":
        v["gpu"] = torch.cuda.get_device_name(device)
    return v


def write_clip_mp4(path: Path, frames: np.ndarray, waveform: np.ndarray, sample_rate: int, fps: float = FPS):
    """H.264 at 24 fps with an AAC track, like upstream's output."""
    from ovi_attn_render.common.media import write_mp4

    write_mp4(str(path), lambda i: frames[i], len(frames), fps, waveform, sample_rate)


def run_capture(run: RunSpec, output: Path, *, force: bool = False, console=None, progress: bool = True,
                comp: Components | None = None, mp4: bool = True, sp=None,
                on_progress=None) -> CaptureSummary | None:
    """sp: a sequence_parallel.SequenceParallel group to run across; only its rank 0 writes
    (and decodes); the other ranks compute their heads' maps and return None.
    on_progress(steps_done, steps): called after every sampler step (the API's progress)."""
    writes = sp is None or sp.rank == 0
    out = plan_outputs(Path(output), force, mp4) if writes else None
    asked = (run.height, run.width) if run.height or run.width else None
    run = resolve_model_defaults(run, **model_facts(run.model))  # bad layers/steps fail here, with their line
    device = resolve_device(run.device)
    say = console.print if console is not None else (lambda *a, **k: None)

    with StopRequests() as stop:
        t_load = time.time()
        # Everything that can be wrong is found before the weights load.
        shapes = preflight_shapes(run, text=comp.text if comp is not None else None)
        cut = _check_prompt_length(shapes, say)
        layout = build_plan(run, shapes, torch.device("cpu"))[1]
        _check_size(run, layout, out)
        if comp is None:
            comp = load_components(run, device, say)
        hooks.at("loaded")
        loaded = shapes_of(comp)
        plan, layout, texts = build_plan(run, loaded, device)
        started = _dt.datetime.now(_dt.timezone.utc)
        layout.attrs = _run_attrs(run, comp, texts, started, device) | {"text_tokens_cut": cut}
        # Again with the run's attributes (and shapes as loaded, should a checkpoint differ
        # from its config): in memory, milliseconds.
        size = _check_size(run, layout, out)
        if asked is not None and tuple(comp.pixel_size) != (run.height, run.width):
            say(f"[yellow]note:[/] {run.height}x{run.width} was rescaled to the model's area and snapped to "
                f"multiples of 32: {comp.pixel_size[0]}x{comp.pixel_size[1]}")
        say(f"clip: {describe(comp)}")
        say(memory_plan(comp))
        say(f"capture: {len(plan.steps)} steps x {len(plan.layers)} layers x {len(layout.groups)} groups "
            f"({', '.join(plan.kinds)}; {', '.join(plan.branches)}) -> file {format_bytes(size)}, "
            f"extra memory for maps <= {format_bytes(_extra_memory_mb(layout) * 1e6)}")
        hooks.at("checked")
        writer = create_capture_file(out.writing, layout) if writes else None
        stop.defer(f"{out.writing} is readable with the steps flushed so far (its status still says running)"
                   if writes else "this helper rank holds no file")
        summary = _generate(run, comp, plan, layout, texts, writer, out, stop, device, console, progress, t_load,
                            sp, on_progress=on_progress)
        if summary is None:  # a helper rank of a sequence-parallel group
            return None
        # The capture is complete (and in place): a signal now stops the MP4 alone.
        stop.now(f"while writing the clip MP4; {out.final} is complete, the MP4 was not written")
        if out.clip is not None:
            _write_clip(out, summary, comp.audio.sample_rate)
            summary.clip_path = out.clip
    summary.frames = summary.waveform = None
    summary.bytes = out.final.stat().st_size
    return summary


def _write_clip(out: OutputPlan, summary: CaptureSummary, sample_rate: int) -> None:
    """The clip MP4 beside the capture, atomically; a full disk here is one sentence."""
    try:
        with atomic.replacing(out.clip) as tmp:
            write_clip_mp4(Path(tmp), summary.frames, summary.waveform, sample_rate)
    except Exception as e:  # PyAV reports a full disk as its own OSError subclass
        if not is_disk_full(e):
            raise
        raise UserError(f"the disk filled up while writing the clip MP4; {out.final} is complete, {out.clip} was "
                        f"not written: free some space and draw the clip with "
                        f"`{render_hint(out.final, summary.groups, '--view', 'frames')}`.") from None


def _check_prompt_length(shapes: Shapes, say) -> int:
    """Say how many tokens the text limit cuts from the prompt (recorded in the file)."""
    cut = tokens_cut(shapes.text, shapes.prompt_text)
    if cut:
        limit = shapes.text.text_len
        say(f"[yellow]note:[/] the prompt has {limit + cut} tokens but the text encoder reads {limit}: the last "
            f"{cut} are cut and the model never sees them (the file records text_tokens_cut = {cut}).")
    return cut


def _check_size(run: RunSpec, layout: CaptureLayout, out: OutputPlan | None) -> int:
    size = estimate_bytes(layout)
    if size > float(run.max_file_gb) * 1e9:
        raise UserError(
            f"the capture would take about {human(size)}, over the {run.max_file_gb} GB budget; "
            f"capture fewer steps/layers/tokens or raise `max_file_gb`.")
    if out is not None:  # the rank that writes
        check_free_space(out.final.parent, size)
    return size


def _generate(run, comp, plan, layout, texts, writer, out: OutputPlan | None, stop: StopRequests, device, console,
              progress, t_load, sp=None, on_progress=None) -> CaptureSummary | None:
    """Sample with the probe attached; close the file with how it ended. Raises Interrupted
    (exit 130/143) or a UserError for a full disk after closing the file. A helper rank of
    a sequence-parallel group (writer None) returns None."""
    probe = CaptureProbe(plan, writer, sp)
    probe.stop_check = stop.check
    comp.model.set_processor(probe, which="all")
    if sp is not None:
        comp.model.attach_sequence_parallel(sp)
    settings = SamplerSettings(steps=run.steps, solver=run.solver, shift=run.shift,
                               video_guidance_scale=run.video_guidance_scale,
                               audio_guidance_scale=run.audio_guidance_scale,
                               slg_layer=comp.slg_layer, seed=run.seed)
    step_pos = {s: i for i, s in enumerate(plan.steps)}
    t0 = time.time()
    done = 0  # captured steps handed to the writer
    status, stopped, frames, waveform = "failed", None, None, None
    try:
        with _progress(progress, console, run.steps) as advance:
            def on_step(i, timestep, sigma):
                nonlocal done
                if writer is not None and i in step_pos:
                    writer.step_done(step_pos[i] + 1, step_pos[i], timestep, sigma)
                    done = step_pos[i] + 1
                    hooks.at(f"step-{done}")
                advance(i, probe.maps_written)
                if on_progress is not None:
                    on_progress(i + 1, run.steps)
                stop.check()

            embeddings = comp.encode_texts(texts)
            stop.check()
            video_lat, audio_lat = sample(comp.model, embeddings, comp.video_latent_shape, comp.audio_latent_shape,
                                          settings, device, probe=probe, first_frame=comp.first_frame,
                                          on_step=on_step)
        comp.model.set_processor(None, which="all")
        if writer is None:  # a helper rank of a sequence-parallel group: the group's writer decodes
            status = "complete"
            return None
        frames, waveform = comp.decode(video_lat, audio_lat)
        stop.check()
        gen_seconds = time.time() - t0
        hooks.at("clip")
        writer.write_clip(frames, waveform)
        writer.set_attrs(finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         generation_seconds=round(gen_seconds, 3), load_seconds=round(t0 - t_load, 3))
        status = "complete"
    except StopNow as e:
        status, stopped = "interrupted", e.signum
    except WriterFailed:
        status = "failed"  # the writer closes it as `failed: disk full` when that was the cause
    finally:
        comp.model.set_processor(None, which="all")
        if sp is not None:
            comp.model.attach_sequence_parallel(None)
        if writer is not None and not writer.close(status, timeout=CLOSE_TIMEOUT_S):
            _leave_now(f"the capture writer did not finish within {CLOSE_TIMEOUT_S:.0f} s; {out.writing} keeps "
                       f"the steps flushed before.", 128 + stopped if stopped else 1)
    if writer is None:
        if stopped is not None:
            raise Interrupted(f"{signal.Signals(stopped).name}: this helper rank stopped (it holds no file).",
                              stopped)
        return None
    if writer.error is not None:
        if is_disk_full(writer.error):
            raise UserError(f"the disk filled up while writing {out.writing}: generation stopped and the "
                            f"{_steps_kept(writer)} completed steps are kept (status `failed: disk full`); free "
                            f"some space and capture again, or render them with `{render_hint(out.writing, layout.groups)}`.")
        raise writer.error
    if stopped is not None:
        raise Interrupted(_interrupt_message(stopped, out, _steps_kept(writer), len(plan.steps), layout), stopped)
    hooks.at("complete")
    if out.replaces:  # only now may the new capture take the old one's place
        hooks.at("before-replace")
        os.replace(out.writing, out.final)
    return CaptureSummary(out.final, 0, time.time() - t0, len(plan.steps), len(plan.layers),
                          list(layout.groups), list(plan.kinds), probe.maps_written, len(frames),
                          len(waveform) / comp.audio.sample_rate, None, frames, waveform)


def _steps_kept(writer) -> int:
    import h5py

    try:
        with h5py.File(writer.file.path, "r", locking=False) as f:
            return int(f.attrs["steps_done"])
    except (OSError, KeyError, ValueError):
        return 0


def _interrupt_message(signum: int, out: OutputPlan, kept: int, total: int, layout: CaptureLayout) -> str:
    name = signal.Signals(signum).name
    if out.replaces:
        where = f"{out.final} is untouched and the new capture's steps are in {out.writing} (status interrupted)"
    else:
        where = f"{out.writing} holds them (status interrupted)"
    if kept == 0:
        return f"{name} before the first captured step finished; {where}, nothing to render yet."
    return (f"{name} after {kept} of {total} captured steps; {where}: render them with "
            f"`{render_hint(out.writing, layout.groups)}`.")


def _leave_now(message: str, code: int) -> None:
    """Exit without the interpreter's shutdown, which could wait forever on a writer thread
    stuck in HDF5 (its lock held): say why, flush what Python buffered, go."""
    import sys

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os.write(2, f"error: {message}\n".encode())
        os._exit(code)


def _extra_memory_mb(layout: CaptureLayout) -> float:
    from ovi_attn_capture.probe.maps import CHUNK_BYTES

    itemsize = transfer_dtype(layout.map_dtype).itemsize
    F, h, w = layout.grid
    one_layer = len(layout.groups) * layout.heads * (F * h * w + layout.audio_tokens) * itemsize
    one_layer += layout.heads * (len(layout.tower_queries("video")) * F * h * w
                                 + len(layout.tower_queries("audio")) * layout.audio_tokens) * itemsize
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
        "started_at": started.isoformat(timespec="seconds"),
    }


class _progress:
    """Progress over denoising steps (ovi_attn_render.common.progress: a bar on a terminal, periodic
    lines on stderr elsewhere); silent when off."""

    def __init__(self, enabled: bool, console, total: int):
        from ovi_attn_render.common.progress import Progress

        self.progress = Progress("denoising", total, "steps", enabled=enabled, console=console)

    def __enter__(self):
        p = self.progress.__enter__()
        return lambda i, n: p.update(i + 1, maps=n)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)
