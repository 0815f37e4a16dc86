"""What capturing attention maps costs: the same generation run plain, with our capture, and
the usual way (materialised softmax), side by side in one run.

Modes, all on the same model, seed, noise and text embeddings:
  plain        no probe: what `sample` costs alone.
  ours         the product: CaptureProbe + AsyncCaptureWriter writing a real HDF5 file in a
               temp dir; N token groups, every layer and step, text_video and text_audio
               (cond branch, head mean, fp16 maps: the prompt-file defaults).
  ours+fusion  the same plus the fusion maps (video_audio, audio_video).
  queries      self-attention of QUERY_POINTS (8) video query points instead of text maps:
               their exact rows over every video token (video_self), every layer and step,
               through the same probe and writer (the prompt file's `queries:`).
  naive        what the original approach did: every text cross-attention computed as an
               explicit softmax(q k^T / sqrt(d)) in float32 with the full [B, H, Lq, 512]
               probability matrix materialised, output P @ V, then P reduced to the same
               groups and written through the same writer. Implemented here, not in the
               package: a subclass of the capture probe, installed as the processor).

Timing: the modes run interleaved in this process (after one warm-up round), `--repeat`
rounds with the order rotated each round, median reported. Final latents of ours must
equal plain bit for bit (checked; the run fails otherwise); naive's difference is reported.

Memory: on CUDA, torch.cuda.max_memory_allocated per mode in this process (reset before
each run). On the CPU, peak RSS cannot be reset inside a process (the allocator keeps what
a previous mode freed), so each mode runs once more in a fresh child process (glibc's mmap
threshold fixed, see CHILD_MALLOC) that builds the model, resets its peak RSS
(/proc/self/clear_refs), generates, and reports VmHWM (os.wait4's whole-process peak where
/proc cannot reset); the weights are in every child, so the column that matters is the
difference to plain.
Wall time is also shown as min/min (noise only adds time) and as this process's CPU time
(all threads, the writer's included), which a busy machine disturbs less.

Sizes: tiny (the test model), medium (the released architecture narrowed to run on a
laptop CPU: dim 1024 = 8 heads of 128, 4 layers, ffn 4x, token grid 8x16x16, 50 audio
tokens) and real (the released 960x960_5s architecture, 11.7B random bf16 weights, grid
31x30x30, 157 audio tokens; CUDA only, about 24 GB of weights).

    .venv/bin/python bench/capture_overhead.py                 # CPU: tiny and medium; GPU: real
    .venv/bin/python bench/capture_overhead.py --size medium --repeat 5
    .venv/bin/python bench/capture_overhead.py --quick         # smoke test
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import _common as C

from ovi_attn_capture.model import registry
from ovi_attn_render.contract.geometry import PATCH, latent_size

MODES = ("plain", "ours", "ours+fusion", "naive", "queries")
TEXT_KINDS = ["text_video", "text_audio"]
ALL_KINDS = ["text_video", "text_audio", "video_audio", "audio_video"]
TARGETS = {("cpu", "medium"): 1.05, ("cuda", "real"): 1.02}  # ours / plain
QUERY_TARGETS = {("cpu", "medium"): 1.02}  # queries / plain
QUERY_POINTS = 8
GPU_EXTRA_TARGET = 2**30  # extra GPU memory for capture at real size


@dataclass
class Size:
    name: str
    video_latent: tuple[int, int, int, int]  # [48, F, H/16, W/16]
    audio_latent: tuple[int, int]  # [La, 20]
    slg_layer: int
    width: dict = field(default_factory=dict)  # overrides of the released configs (empty: as released)
    tiny: bool = False

    def configs(self) -> tuple[dict, dict]:
        from ovi_attn_capture.model.fusion import released_configs, tiny_configs

        video, audio = tiny_configs() if self.tiny else released_configs()
        for c in (video, audio):
            c.update(self.width)
        return video, audio

    @property
    def grid(self) -> tuple[int, int, int]:
        _, F, H, W = self.video_latent
        return F, H // PATCH[1], W // PATCH[2]

    def describe(self) -> str:
        v, _ = self.configs()
        F, h, w = self.grid
        return (f"dim {v['dim']} ({v['num_heads']} heads of {v['dim'] // v['num_heads']}), {v['num_layers']} layers, "
                f"ffn {v['ffn_dim']}, grid {F}x{h}x{w} = {F * h * w} video tokens, {self.audio_latent[0]} audio tokens")


def released_size(model: str) -> "Size":
    """A released model at its native size, its shapes from the model registry and the frame geometry."""
    m = registry.get(model)
    return Size("real", (48, m.video_latent_frames, *latent_size(m.native_size)), (m.audio_latents, 20),
                slg_layer=m.default_slg_layer)


SIZES = {
    "tiny": Size("tiny", (48, 5, 16, 16), (22, 20), slg_layer=1, tiny=True),
    "medium": Size("medium", (48, 8, 32, 32), (50, 20), slg_layer=2,
                   width={"dim": 1024, "ffn_dim": 4096, "num_heads": 8, "num_layers": 4}),
    "real": released_size("960x960_5s"),
}


# ----------------------------------------------------------------------------- the naive way


def materialised_softmax(q, k):
    """softmax(q k^T / sqrt(d)) in float32, the whole matrix: q [B, Lq, H, D], k [B, Lk, H, D]
    -> P [B, H, Lq, Lk]."""
    import torch

    scores = torch.einsum("blhd,bkhd->bhlk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1)


def materialising_probe_class():
    """The capture probe as a processor that runs each text attention the naive way: the
    full probability matrix P in float32, output P @ V, P reduced to the groups (built
    lazily: imports torch). The fusion attention stays the plain kernel's."""
    import torch

    from ovi_attn_capture.model.processors import AttnProcessor
    from ovi_attn_capture.probe.probe import CaptureProbe

    class MaterialisingProbe(CaptureProbe):
        def __call__(self, attn, kind, q, k, v, k_lens=None, key_bias=None):
            if kind != "text":
                return AttnProcessor.__call__(self, attn, kind, q, k, v, k_lens, key_bias)
            p = materialised_softmax(q, k)  # [B, H, Lq, 512] float32
            self.on_text_probabilities(attn.where, p)
            return (p @ v.float().transpose(1, 2)).transpose(1, 2).to(q.dtype)  # [B, Lq, H, D]

        @torch.no_grad()
        def on_text_probabilities(self, where, p) -> None:  # p [B, H, Lq, 512]
            found = self.text_target(where)
            if found is None:
                return
            kind, target, kg = found
            heads = p if self.plan.keep_heads else p.mean(dim=1, keepdim=True)  # [B, Hd, Lq, 512]
            m = heads[0].index_select(-1, kg.key_index) @ kg.key_weight  # [Hd, Lq, G]
            self.emit_text_groups(where, kind, target, kg, m)

    return MaterialisingProbe


# ----------------------------------------------------------------------------- one setup


class Bench:
    """Model, inputs and token groups for one size; `run(mode)` generates once."""

    def __init__(self, size: Size, steps: int, groups: int, device: str, seed: int = 0):
        import torch

        from ovi_attn_capture.sampling.generate import SamplerSettings, Texts
        from ovi_attn_capture.model.fusion import build_random

        torch.manual_seed(seed)
        self.size, self.steps, self.groups, self.device = size, steps, groups, torch.device(device)
        video_cfg, audio_cfg = size.configs()
        t0 = time.perf_counter()
        self.model = build_random(video_cfg, audio_cfg, seed=seed, device=device)
        self.build_seconds = time.perf_counter() - t0
        self.params = sum(p.numel() for p in self.model.parameters())
        gen = torch.Generator().manual_seed(seed + 1)
        n_pos = groups - 1  # one token per word group, then EOS
        self.texts = Texts(*(torch.randn(n, video_cfg.get("text_dim", 4096), generator=gen).bfloat16().to(device)
                             for n in (n_pos, 10, 9)))
        self.settings = SamplerSettings(steps=steps, slg_layer=size.slg_layer, seed=seed + 2)
        self.tmp = tempfile.TemporaryDirectory(prefix="ovi-attn-bench-")
        self.runs = 0

    def spec(self, kinds, steps: int) -> C.SyntheticSpec:
        """The file's sizes: what `ovi-attn capture` would preallocate for this run."""
        return C.SyntheticSpec(grid=self.size.grid, steps=steps, layers=self.model.num_layers,
                               groups=self.groups, audio_tokens=self.size.audio_latent[0], video_frames=0,
                               video_size=(0, 0), audio_seconds=0.0, kinds=tuple(kinds))

    def plan(self, kinds, steps: int):
        """The probe's plan for the cond branch: word g is token g, EOS the last real token."""
        import torch

        from ovi_attn_capture.pipeline.capture import transfer_dtype
        from ovi_attn_capture.probe.probe import CapturePlan, key_groups
        from ovi_attn_render.contract.format import DEFAULT_MAP_ENCODING

        n_words = self.groups - 2
        members = [[g] for g in range(n_words)] + [[n_words], []]  # words, <eos>, <pad>
        kg = {("cond", tower): key_groups(members, self.groups - 1, n_words + 1, 512, self.device)
              for tower in ("video", "audio")}
        return CapturePlan(steps=list(range(steps)), layers=list(range(self.model.num_layers)), kinds=list(kinds),
                           branches=["cond"], keep_heads=False, map_dtype=transfer_dtype(DEFAULT_MAP_ENCODING),
                           video_grid=self.size.grid, groups=kg)

    def query_points(self) -> list:
        """QUERY_POINTS video queries spread over the clip's frames and cells."""
        from ovi_attn_render.contract.queries import PlacedQuery

        F, h, w = self.size.grid
        return [PlacedQuery(f"q{i}", "video", -1, i * F // QUERY_POINTS, (3 * i + 1) % h, (5 * i + 2) % w)
                for i in range(QUERY_POINTS)]

    def query_plan(self, steps: int):
        """The probe's plan for the queries mode: no text maps, the query points' rows only."""
        from ovi_attn_capture.probe.query_probe import QueryPlan

        plan = self.plan([], steps)
        plan.queries = QueryPlan(self.query_points(), [], self.size.grid, self.size.audio_latent[0])
        return plan

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, mode: str, steps: int | None = None) -> dict:
        """Generate once in `mode`; returns seconds, final latents, the file, GPU peak."""
        import torch

        from ovi_attn_capture.sampling.generate import sample
        from ovi_attn_capture.probe.probe import CaptureProbe
        from ovi_attn_capture.pipeline.writer import AsyncCaptureWriter

        settings = self.settings if steps is None else type(self.settings)(**{**asdict(self.settings), "steps": steps})
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.runs += 1
        path = os.path.join(self.tmp.name, f"{mode.replace('+', '_')}_{self.runs}.h5")
        self.sync()
        t0, cpu0 = time.perf_counter(), time.process_time()
        writer = probe = None
        try:
            if mode != "plain":
                kinds = ALL_KINDS if mode == "ours+fusion" else [] if mode == "queries" else TEXT_KINDS
                layout = C.synthetic_layout(self.spec(kinds, settings.steps))
                if mode == "queries":
                    layout.queries = self.query_points()
                writer = AsyncCaptureWriter(path, layout)
                plan = self.query_plan(settings.steps) if mode == "queries" else self.plan(kinds, settings.steps)
                probe = (materialising_probe_class() if mode == "naive" else CaptureProbe)(plan, writer)
                self.model.set_processor(probe, which="all")  # as a capture installs it
            on_step = None if writer is None else (lambda i, t, s: writer.step_done(i + 1, i, t, s))
            video, audio = sample(self.model, self.texts, self.size.video_latent, self.size.audio_latent, settings,
                                  self.device, probe=probe, on_step=on_step)
            self.sync()
            if writer is not None:
                writer.close("complete")
                writer = None
        finally:
            self.model.set_processor(None, which="all")
            if writer is not None:
                writer.close("failed")
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {"seconds": seconds, "cpu_seconds": cpu_seconds, "video": video.cpu(), "audio": audio.cpu(), "path": None if mode == "plain" else path,
                "maps": 0 if probe is None else probe.maps_written, "gpu_peak": peak}


# ----------------------------------------------------------------------------- checks


def max_abs_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def check_identity(plain: dict, other: dict, mode: str) -> None:
    import torch

    if not (torch.equal(plain["video"], other["video"]) and torch.equal(plain["audio"], other["audio"])):
        raise C.BenchFailure(f"{mode} changed the generation: max |video - plain| = "
                             f"{max_abs_diff(plain['video'], other['video'])}, audio "
                             f"{max_abs_diff(plain['audio'], other['audio'])}; capture must not change a bit")


def first_map_difference(ours_path: str, naive_path: str) -> float:
    """text_video at step 0, layer 0 (identical inputs in both runs): naive's maps against
    ours, to show the naive path computes the same thing."""
    import h5py
    import numpy as np

    from ovi_attn_render.contract.format import decode

    with h5py.File(ours_path, "r") as a, h5py.File(naive_path, "r") as b:
        x = decode(a["text_video"].attrs, a["text_video"][0, :, :, 0, 0])  # [token, frame, head, y, x]
        y = decode(b["text_video"].attrs, b["text_video"][0, :, :, 0, 0])
    return float(np.nanmax(np.abs(x - y)))


# ----------------------------------------------------------------------------- measuring


@dataclass
class ModeResult:
    mode: str
    seconds: list[float]
    cpu_seconds: list[float] = field(default_factory=list)  # this process, all threads (writer included)
    memory: int | None = None  # CUDA peak bytes, or child peak RSS bytes
    diff_vs_plain: float = 0.0
    maps: int = 0
    file_bytes: int = 0

    disturbed: list[bool] = field(default_factory=list)  # CPU runs that did not get their cores

    def _kept(self, xs: list[float]) -> list[float]:
        """The undisturbed runs' values (all of them if every run was disturbed)."""
        kept = [x for x, d in zip(xs, self.disturbed) if not d]
        return kept or xs

    @property
    def median(self) -> float:
        return C.median(self._kept(self.seconds))

    @property
    def cpu_median(self) -> float:
        return C.median(self._kept(self.cpu_seconds))


@dataclass
class SizeResult:
    size: str
    device: str
    config: str
    params: int
    steps: int
    groups: int
    repeat: int
    build_seconds: float
    modes: dict
    memory_kind: str
    naive_map_diff: float = float("nan")


def disturbed(bench: Bench, run: dict) -> bool:
    """A CPU run during which another process took our cores: torch's threads keep every
    core busy through a forward pass, so CPU time / wall time below 85% of the thread count
    means the run waited for the CPU (on a shared 2-core machine: a 3-5x slower run)."""
    import torch

    if bench.device.type != "cpu":
        return False
    return run["cpu_seconds"] / run["seconds"] < 0.85 * torch.get_num_threads()


def time_modes(bench: Bench, modes: list[str], repeat: int, warmup: bool) -> tuple[dict[str, ModeResult], float]:
    """Interleaved rounds, order rotated each round; checks on every run.

    Returns the results per mode and the largest difference of naive's maps to ours at
    step 0, layer 0 (NaN when either did not run)."""
    results = {m: ModeResult(m, []) for m in modes}
    if warmup:
        for m in modes:
            bench.run(m, steps=1)
    reference, map_diff = None, float("nan")
    for r in range(repeat):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        runs = {}
        for m in order:
            print(f"  round {r + 1}/{repeat}: {m} ...", end="", flush=True)
            runs[m] = bench.run(m)
            print(f" {runs[m]['seconds']:.2f} s (cpu {runs[m]['cpu_seconds']:.2f} s)", flush=True)
            res = results[m]
            res.seconds.append(runs[m]["seconds"])
            res.cpu_seconds.append(runs[m]["cpu_seconds"])
            res.disturbed.append(disturbed(bench, runs[m]))
            res.maps = runs[m]["maps"]
            if runs[m]["path"]:
                res.file_bytes = os.path.getsize(runs[m]["path"])
            if runs[m]["gpu_peak"] is not None:
                res.memory = max(res.memory or 0, runs[m]["gpu_peak"])
        plain = runs.get("plain")
        if plain is not None:
            if reference is None:
                reference = plain
            check_identity(reference, plain, "plain (run to run)")
            for m in ("ours", "ours+fusion", "queries"):
                if m in runs:
                    check_identity(plain, runs[m], m)
            if "naive" in runs:
                d = max(max_abs_diff(plain["video"], runs["naive"]["video"]),
                        max_abs_diff(plain["audio"], runs["naive"]["audio"]))
                results["naive"].diff_vs_plain = max(results["naive"].diff_vs_plain, d)
        if "ours" in runs and "naive" in runs:
            d = first_map_difference(runs["ours"]["path"], runs["naive"]["path"])
            map_diff = d if map_diff != map_diff else max(map_diff, d)
        for run in runs.values():  # keep the temp dir small
            if run["path"] and os.path.exists(run["path"]):
                os.remove(run["path"])
    return results, map_diff


# glibc keeps freed memory of its heaps resident and moves its mmap threshold up as big
# blocks are freed, so the same run's peak RSS wanders by +-200 MB with allocation history
# (measured). A fixed threshold sends every block >= 64 KiB to mmap and back to the OS when
# freed: peak RSS then follows peak live memory, and repeats agree to the kilobyte.
CHILD_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def child_memory(size: str, modes: list[str], steps: int, groups: int, jobs: int,
                 threads: int | None) -> dict[str, int]:
    """Peak RSS of each mode in a fresh process (see the module docstring)."""

    def one(mode: str) -> int:
        run = C.run_child([sys.executable, __file__, "--child", mode, "--size", size, "--steps", str(steps),
                           "--groups", str(groups), "--device", "cpu", *(["--threads", str(threads)] if threads else [])],
                          env=CHILD_MALLOC)
        C.check_child(run, f"memory child for {mode}")
        report = json.loads(run.stdout.strip().splitlines()[-1])
        return report["run_peak_rss"] or run.max_rss_bytes  # whole-process peak where /proc cannot reset

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(modes, pool.map(one, modes)))


def measure_size(size: Size, device: str, steps: int, groups: int, repeat: int, warmup: bool, jobs: int,
                 modes: list[str], memory_modes: list[str], threads: int | None) -> SizeResult:
    print(f"{size.name}: building the model ({size.describe()}) on {device} ...", flush=True)
    bench = Bench(size, steps, groups, device)
    params, build_seconds = bench.params, bench.build_seconds
    timed, naive_map_diff = time_modes(bench, modes, repeat, warmup)
    if naive_map_diff == naive_map_diff and naive_map_diff > 1e-2:
        raise C.BenchFailure(f"naive maps differ from ours by {naive_map_diff} at step 0, layer 0; "
                             "the naive path does not compute the same maps")
    del bench  # free the weights (before the memory children load theirs)
    if device == "cpu":
        print("  peak RSS per mode (one child process each) ...", flush=True)
        for m, rss in child_memory(size.name, memory_modes, steps, groups, jobs, threads).items():
            timed[m].memory = rss
        kind = "peak RSS (child)"
    else:
        kind = "CUDA max allocated"
    return SizeResult(size.name, device, size.describe(), params, steps, groups, repeat, build_seconds, timed, kind,
                      naive_map_diff)


def _vm_hwm() -> int | None:
    """This process's peak RSS in bytes (VmHWM), None where /proc says nothing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak seen is the run's alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_main(mode: str, size: str, steps: int, groups: int, device: str) -> None:
    """--child: one run of one mode; prints its peak RSS as JSON. The peak of building the
    model (transient float32 weights) is wiped first where Linux allows it, so the number
    is the generation's own peak: weights + activations + what the mode adds."""
    bench = Bench(SIZES[size], steps, groups, device)
    reset = _reset_hwm()
    out = bench.run(mode)
    print(json.dumps({"mode": mode, "seconds": out["seconds"], "maps": out["maps"],
                      "run_peak_rss": _vm_hwm() if reset else None}))


# ----------------------------------------------------------------------------- report


def report(results: list[SizeResult], facts: dict, versions: dict) -> list[str]:
    """Print the table and the ratio lines; returns the misses (for the exit note)."""
    rows, lines, misses = [], [], []
    for r in results:
        plain = r.modes.get("plain")
        for m in r.modes.values():
            ratio = m.median / plain.median if plain else float("nan")
            best = min(m.seconds) / min(plain.seconds) if plain else float("nan")
            cpu_ratio = m.cpu_median / plain.cpu_median if plain else float("nan")
            extra = (m.memory - plain.memory) if (plain and m.memory is not None and plain.memory is not None) else None
            rows.append((
                r.size, m.mode, f"{m.median:.3f}",
                " ".join(f"{s:.2f}" + ("*" if d else "") for s, d in zip(m.seconds, m.disturbed)), f"{ratio:.3f}",
                f"{best:.3f}", f"{m.cpu_median:.2f}", f"{cpu_ratio:.3f}",
                "-" if m.memory is None else C.mib(m.memory),
                "-" if extra is None or m.mode == "plain" else f"{extra / 2**20:+,.1f} MiB",
                "0 (bit-identical)" if m.mode in ("plain", "ours", "ours+fusion", "queries") else f"{m.diff_vs_plain:.3g}",
                str(m.maps), C.human_bytes(m.file_bytes) if m.file_bytes else "-",
            ))
        if plain:
            parts = [f"{m}/plain = {r.modes[m].median / plain.median:.3f} (min {min(r.modes[m].seconds) / min(plain.seconds):.3f}, "
                     f"cpu {r.modes[m].cpu_median / plain.cpu_median:.3f})" for m in r.modes if m != "plain"]
            line = f"{r.size} ({r.device}): " + ", ".join(parts)
            for mode, targets, what in (("ours", TARGETS, ""), ("queries", QUERY_TARGETS, f" ({QUERY_POINTS} query points)")):
                target = targets.get((r.device, r.size))
                if target and mode in r.modes:
                    ratio = r.modes[mode].median / plain.median
                    v = C.verdict(ratio, target)
                    line += f"; target {mode}/plain <= {target}{what}: {v}"
                    if v != "ok":
                        misses.append(f"{r.size} {mode}/plain {ratio:.3f} > {target}")
            if r.device == "cuda" and r.size == "real" and "ours" in r.modes:
                extra = max(r.modes[m].memory - plain.memory for m in ("ours", "ours+fusion") if m in r.modes)
                v = C.verdict(extra, GPU_EXTRA_TARGET)
                line += f"; extra GPU memory {extra / 2**20:,.0f} MiB (target <= 1 GiB: {v})"
                if v != "ok":
                    misses.append(f"extra GPU memory {extra / 2**20:,.0f} MiB")
            if r.naive_map_diff == r.naive_map_diff:
                line += f"; naive maps vs ours at step 0 layer 0: max |diff| {r.naive_map_diff:.2g}"
            lines.append(line)
    configs = "; ".join(f"{r.size}: {r.config}, {r.params / 1e6:,.0f}M params, {r.steps} steps x 2 passes, "
                        f"{r.groups} groups, median of {r.repeat}" for r in results)
    kinds = ", ".join(sorted({r.memory_kind for r in results}))
    C.print_table(f"capture_overhead ({configs})",
                  ["size", "mode", "median s", "runs s", "/ plain", "min / min", "cpu s", "cpu / plain",
                   f"memory ({kinds})", "extra vs plain",
                   "max |latent - plain|", "maps", "file"], rows,
                  caption=C.describe_machine(facts) + f"; {versions}")
    if any(any(m.disturbed) for r in results for m in r.modes.values()):
        print("* a run that did not get its CPU cores (another process ran; CPU time / wall time < 0.85 x threads): "
              "left out of the medians (kept when every run of a mode was disturbed); min / min uses all runs")
    print("ratios:")
    for line in lines:
        print("  " + line)
    return misses


def versions(device: str) -> str:
    import torch

    from ovi_attn_capture.model import attention

    v = f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention backend {attention.backend_for(device)}"
    if device.startswith("cuda"):
        v += f", {torch.cuda.get_device_name(0)}"
    return v


def main() -> None:
    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", choices=MODES)
        ap.add_argument("--size", choices=list(SIZES))
        ap.add_argument("--steps", type=int)
        ap.add_argument("--groups", type=int)
        ap.add_argument("--device", default="cpu")
        ap.add_argument("--threads", type=int)
        a = ap.parse_args()
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        child_main(a.child, a.size, a.steps, a.groups, a.device)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", help="comma-separated: tiny, medium, real (default: tiny,medium on CPU; real on CUDA)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--steps", type=int, help="sampler steps per run (default 2)")
    ap.add_argument("--groups", type=int, default=16, help="token groups captured, <eos> and <pad> included")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    ap.add_argument("--jobs", type=int, default=1, help="memory children run at once (CPU)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="tiny, 1 step, 1 round, no warm-up (smoke test)")
    ap.add_argument("--out", metavar="JSON", help="also save the numbers as JSON")
    args = ap.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise C.BenchFailure("--device cuda was asked for but CUDA is not available")
    modes = [m.strip() for m in args.modes.split(",")]
    if "plain" not in modes or any(m not in MODES for m in modes):
        raise C.BenchFailure(f"--modes must include plain and name only {', '.join(MODES)}")
    memory_modes = modes
    if args.quick:  # every code path once, as little work as possible
        sizes, steps, repeat, warmup, jobs = ["tiny"], 1, 1, False, 1
        memory_modes = [m for m in modes if m == "ours"]  # one child exercises the path
        args.threads = args.threads or 1  # OpenMP barriers crawl on a busy CI machine
    else:
        sizes = (args.size or ("real" if device.startswith("cuda") else "tiny,medium")).split(",")
        steps, repeat, warmup, jobs = args.steps or 2, max(1, args.repeat), True, args.jobs
    if "real" in sizes and not device.startswith("cuda"):
        raise C.BenchFailure("--size real needs a CUDA GPU (11.7B parameters); use tiny or medium on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = C.machine_facts()
    results = [measure_size(SIZES[s.strip()], device, steps, args.groups, repeat, warmup, jobs, modes, memory_modes,
                            args.threads)
               for s in sizes]
    misses = report(results, facts, versions(device))
    if misses:
        print("missed targets: " + "; ".join(misses))
    C.save_json(args.out, {"results": [asdict(r) for r in results], "machine": facts, "versions": versions(device),
                           "misses": misses})


if __name__ == "__main__":
    raise SystemExit(C.main_guard(main))
