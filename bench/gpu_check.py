"""The CUDA path, verified: one command that checks and measures every CUDA line of ovi-attn.

Sections (all by default; `--only` picks some):
  backends  each available kernel (SDPA flash, SDPA efficient, flash-attn 2/3 when
            importable, math) against a float64 reference in bf16 and fp16: out and lse,
            with and without key masks, at Ovi's shapes (24 heads of 128; 27,900 video
            tokens; 512 text keys; 157 audio keys);
  maps      the text, video->audio and audio->video maps computed from each kernel's lse
            against float64 brute force (softmax over every key, then reduced);
  identity  capture on vs off: bit-identical latents (tiny and medium model, 2 steps),
            and the maps in the file equal to synchronous copies of what the probe put
            (the pinned, non-blocking copy and its event);
  real      the released 960x960_5s architecture with random bf16 weights, 2 sampler
            steps: plain vs ours vs ours+fusion vs naive (times, max_memory_allocated,
            extra memory of capture), then the same memory figures at the 960x960_10s
            shapes (61x30x30 = 54,900 video tokens, 314 audio tokens) with one step, and
            the writer keeping up (queue length at each step end, drain time at close).

    python bench/gpu_check.py                  # on a GPU: everything (about 4 min on an H200)
    python bench/gpu_check.py --smoke          # on the CPU: tiny shapes, math and CPU SDPA only
    python bench/gpu_check.py --only backends,maps --out DIR

A table goes to stdout and gpu_check.json to --out DIR (default $OUT when set). Exit code 0:
every check passed and every target was met; 1: a check failed (or could not run); 3:
every check passed but a performance target was missed. Imports nothing beyond torch,
numpy, h5py and rich (no flash-attn unless installed, no diffusers, av, h5netcdf, ftfy).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import _common as C
import capture_overhead as CO

REAL_10S = CO.Size("real_10s", (48, 61, 60, 60), (314, 20), slg_layer=11)
SMOKE_LONG = CO.Size("tiny_long", (48, 9, 16, 16), (40, 20), slg_layer=1, tiny=True)
OUT_TOL = {"bfloat16": 2e-2, "float16": 3e-3}  # |out - ref| <= tol * (1 + |ref|): rounding to the dtype
LSE_TOL = 1e-3  # |lse - ref| (natural log): 0.1 % of any probability
MAP_TOL = 1e-3  # max |map - brute force| / max |brute force|
OURS_TARGET, EXTRA_TARGET = 1.02, 2**30
START = time.perf_counter()


@dataclass
class Check:
    section: str
    name: str
    value: str
    limit: str
    ok: bool | None  # None: a measurement without a pass/fail
    kind: str = "check"  # "check" (fails the run) or "target" (a missed target: exit 3)


@dataclass
class Shapes:
    """The attention problems Ovi's cross attention poses, at one size."""

    heads: int
    head_dim: int
    grid: tuple[int, int, int]  # video token grid (F, h, w)
    text_keys: int
    text_real: int  # real prompt tokens; the rest are identical padding keys
    audio: int  # audio tokens
    audio_lens: tuple[int, int]  # key lengths of a batch of two, for the masked cases

    @property
    def video(self) -> int:
        return math.prod(self.grid)


OVI = Shapes(24, 128, (31, 30, 30), 512, 20, 157, (157, 120))
SMOKE = Shapes(4, 64, (3, 4, 4), 64, 9, 11, (11, 7))


class Report:
    def __init__(self):
        self.checks: list[Check] = []

    def add(self, section, name, value, limit="", ok=None, kind="check") -> bool:
        self.checks.append(Check(section, name, value, limit, ok, kind))
        return ok is not False

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False and c.kind == "check"]

    def missed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False and c.kind == "target"]


# ----------------------------------------------------------------------------- kernels


def kernels(device: str) -> dict:
    """name -> fn(q, k, v, k_lens) -> (out, lse) or None where the kernel cannot take the case."""
    from ovi_attn_capture.model import attention as A

    def call(fn, takes_mask=True):
        def run(q, k, v, k_lens):
            if k_lens is not None and not takes_mask:
                return None
            out, lse = fn(q, k, v) if not takes_mask else fn(q, k, v, k_lens)
            return out.to(q.dtype), lse.float()
        return run

    if device == "cpu":
        return {"sdpa (cpu flash)": call(A._sdpa_cpu), "math": call(A._math)}
    found = {"sdpa flash": call(A._sdpa_flash, takes_mask=False), "sdpa efficient": call(A._sdpa_efficient)}
    if A._fa2 is not None:
        found["flash-attn 2"] = call(A._flash2)
    if A._fa3 is not None:
        found["flash-attn 3"] = call(A._flash3)
    found["math"] = call(A._math)
    return found


def cases(shapes: Shapes, dtype, device, seed=0) -> dict:
    """name -> (q, k, v, k_lens, kind): the text, video->audio and audio->video attention (Wan layout)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    H, D = shapes.heads, shapes.head_dim

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, H, D, generator=g, device=device) * scale).to(dtype)

    # Scores of std ~2.3 (q, k after RMSNorm times learned scales): peaked softmax rows.
    q_v, q_a = rand(2, shapes.video, scale=1.5), rand(2, shapes.audio, scale=1.5)
    k_t, v_t = rand(1, shapes.text_keys, scale=1.5), rand(1, shapes.text_keys)
    k_t[:, shapes.text_real:] = k_t[:, shapes.text_real:shapes.text_real + 1]  # zero-padded prompt rows: one key
    v_t[:, shapes.text_real:] = v_t[:, shapes.text_real:shapes.text_real + 1]
    k_a, v_a = rand(2, shapes.audio, scale=1.5), rand(2, shapes.audio)
    k_v, v_v = rand(2, shapes.video, scale=1.5), rand(2, shapes.video)
    a_lens = torch.tensor(shapes.audio_lens)
    v_lens = torch.tensor([shapes.video, shapes.video * 2 // 3])
    return {
        "text (video q, 512 keys)": (q_v[:1], k_t, v_t, None, "text"),
        "video->audio": (q_v, k_a, v_a, None, "video_audio"),
        "video->audio masked": (q_v, k_a, v_a, a_lens, "video_audio"),
        "audio->video": (q_a, k_v, v_v, None, "audio_video"),
        "audio->video masked": (q_a, k_v, v_v, v_lens, "audio_video"),
    }


def float64_probabilities(q, k, k_lens):
    """softmax(scale q.k) over the valid keys in float64: [B, H, Lq, Lk], and its lse."""
    import torch

    s = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if k_lens is not None:
        valid = torch.arange(k.shape[1], device=k.device)[None, :] < k_lens.to(k.device)[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.exp(s - lse[..., None]), lse


def check_backends_and_maps(report: Report, shapes: Shapes, device: str, sections: set) -> None:
    import torch

    for dtype in (torch.bfloat16, torch.float16):
        dname = str(dtype).split(".")[-1]
        for case, (q, k, v, k_lens, kind) in cases(shapes, dtype, device).items():
            p, ref_lse = float64_probabilities(q, k, k_lens)
            ref_out = torch.einsum("bhlk,bkhd->blhd", p, v.double())
            truth = brute_force_maps(kind, p, shapes) if "maps" in sections else None
            del p
            for name, fn in kernels(device).items():
                label = f"{name}, {dname}, {case}"
                try:
                    res = fn(q, k, v, k_lens)
                except Exception as e:  # noqa: BLE001 - a kernel that breaks is a failed check
                    report.add("backends", label, f"raised {type(e).__name__}: {str(e).splitlines()[0][:120]}", "", False)
                    continue
                if res is None:
                    continue  # SDPA's flash kernel takes no mask
                out, lse = res
                if "backends" in sections:
                    out_err = float(((out.double() - ref_out).abs() / (1 + ref_out.abs())).max())
                    lse_err = float((lse.double() - ref_lse).abs().max())
                    shapes_ok = out.shape == q.shape and lse.shape == ref_lse.shape
                    report.add("backends", label, f"out {out_err:.1e}, lse {lse_err:.1e}",
                               f"out <= {OUT_TOL[dname]:g}, lse <= {LSE_TOL:g}",
                               shapes_ok and out_err <= OUT_TOL[dname] and lse_err <= LSE_TOL)
                if truth is not None and name != "math":
                    errs = {what: float((ours.double() - ref).abs().max() / ref.abs().max())
                            for what, (ours, ref) in captured_maps(kind, q, k, lse, k_lens, shapes, truth).items()}
                    report.add("maps", label, ", ".join(f"{w} {e:.1e}" for w, e in errs.items()),
                               f"<= {MAP_TOL:g} of the largest", max(errs.values()) <= MAP_TOL)
                del out, lse
            del ref_out, ref_lse, truth
            if device == "cuda":
                torch.cuda.empty_cache()


def text_groups(shapes: Shapes, device):
    """Groups of the text keys as capture forms them: single words, a two-token word,
    <eos>, and <pad> (all the identical padding keys, one representative in the probe)."""
    from ovi_attn_capture.probe.probe import key_groups

    n = shapes.text_real
    members = [[j] for j in range(n - 3)] + [[n - 3, n - 2], [n - 1], []]  # words, a 2-token word, <eos>, <pad>
    kg = key_groups(members, len(members) - 1, n, shapes.text_keys, device)
    members[-1] = list(range(n, shapes.text_keys))  # what <pad> stands for, for brute force
    return kg, members


def brute_force_maps(kind: str, p, shapes: Shapes) -> dict:
    """The maps from the float64 probabilities p [B, H, Lq, Lk] (head mean, as capture's default)."""
    import torch

    m = p.mean(dim=1)  # [B, Lq, Lk]
    F_, h, w = shapes.grid
    if kind == "text":
        _, members = text_groups(shapes, p.device)
        return {"groups": torch.stack([m[..., g].sum(-1) for g in members], -1)}  # [B, Lq, G]
    if kind == "video_audio":
        return {"per frame": m.unflatten(1, (F_, h * w)).mean(2)}  # [B, F, La]
    return {"per frame": m.unflatten(2, (F_, h * w)).sum(3),  # [B, La, F]
            "spatial": m.sum(1).unflatten(1, (F_, h, w))}  # [B, F, h, w]


def captured_maps(kind, q, k, lse, k_lens, shapes: Shapes, truth: dict) -> dict:
    """What the probe's functions make of this kernel's lse, beside the brute-force maps."""
    from ovi_attn_capture.probe import maps

    if kind == "text":
        kg, _ = text_groups(shapes, q.device)
        ours = maps.text_group_maps(q, k, lse, kg.key_index, kg.key_weight)[:, 0]  # [B, Lq, G]
        return {"groups": (ours, truth["groups"])}
    if kind == "video_audio":
        return {"per frame": (maps.video_to_audio_maps(q, k, lse, k_lens, shapes.grid)[:, 0], truth["per frame"])}
    per_frame, spatial = maps.audio_to_video_maps(q, k, lse, k_lens, shapes.grid)
    return {"per frame": (per_frame[:, 0], truth["per frame"]), "spatial": (spatial[:, 0], truth["spatial"])}


# ----------------------------------------------------------------------------- writer watch


class _Watch:
    """What one capture writer saw: maps put, queue length at each step end, drain time."""

    def __init__(self):
        self.puts = 0
        self.max_pending = 0
        self.step_ends: list[tuple[int, int, float]] = []  # (maps put so far, queue length, time)
        self.drain_seconds = float("nan")
        self.copies: dict | None = None  # (var, branch, step, layer) -> synchronous host copy
        self.path = None


@contextlib.contextmanager
def watched_writers(record: bool):
    """Every AsyncCaptureWriter made inside the block reports to a _Watch (yielded list);
    with record=True each map is also copied to the host synchronously, to compare with
    what the asynchronous pinned copy put in the file."""
    from ovi_attn_capture.pipeline import writer as W

    base = W.AsyncCaptureWriter
    watches: list[_Watch] = []

    class Watched(base):
        def __init__(self, path, layout, *a, **kw):
            super().__init__(path, layout, *a, **kw)
            self.watch = _Watch()
            self.watch.path = str(path)
            self.watch.copies = {} if record else None
            watches.append(self.watch)

        def put(self, var, branch, step, layer, values):
            super().put(var, branch, step, layer, values)
            w = self.watch
            w.puts += 1
            w.max_pending = max(w.max_pending, self.queue.qsize())
            if w.copies is not None:
                w.copies[(var, branch, step, layer)] = values.detach().to("cpu", copy=True).float().numpy()

        def step_done(self, *a, **kw):
            self.watch.step_ends.append((self.watch.puts, self.queue.qsize(), time.perf_counter()))
            super().step_done(*a, **kw)

        def close(self, status="complete", timeout=None):
            t0 = time.perf_counter()
            joined = super().close(status, timeout)
            self.watch.drain_seconds = time.perf_counter() - t0
            self.watch.path = self.file.path  # created under a temporary name, renamed since
            return joined

    W.AsyncCaptureWriter = Watched
    try:
        yield watches
    finally:
        W.AsyncCaptureWriter = base


def file_matches_copies(watch: _Watch) -> tuple[int, int]:
    """(maps equal to their synchronous copy, maps compared), reading the finished file."""
    import h5py
    import numpy as np

    from ovi_attn_render.contract.format import MAP_ENCODINGS, decode
    from ovi_attn_render.contract.kinds import MAP_KINDS

    same = 0
    with h5py.File(watch.path, "r") as f:
        encoding = MAP_ENCODINGS[str(f.attrs["map_dtype"])]
        for (var, branch, step, layer), values in watch.copies.items():
            file_dims = [d for d in MAP_KINDS[var].dims if d not in ("branch", "step", "layer")]
            where = tuple({"branch": branch, "step": step, "layer": layer}.get(d, slice(None)) for d in MAP_KINDS[var].dims)
            attrs = f[var].attrs
            stored = decode(attrs, f[var][where])  # dims file_dims
            expected = np.transpose(values, [MAP_KINDS[var].value_dims.index(d) for d in file_dims])
            expected = decode(attrs, encoding.for_variable(var).encode(var, expected))  # as the writer stores it
            same += bool(np.array_equal(stored, expected, equal_nan=True))
    return same, len(watch.copies)


# ----------------------------------------------------------------------------- identity


def solver() -> str:
    """The default UniPC comes from diffusers, which the device machine lacks unless its
    wheel is carried (docs/PERFORMANCE.md); DPM++ is ours and runs the same model passes."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return "dpm++"
    return "unipc"


def make_bench(size: CO.Size, steps: int, device: str) -> CO.Bench:
    import dataclasses

    bench = CO.Bench(size, steps, 16, device)
    bench.settings = dataclasses.replace(bench.settings, solver=solver())
    return bench



def check_identity(report: Report, sizes: list[str], device: str, steps: int) -> None:
    import torch

    for size in sizes:
        bench = make_bench(CO.SIZES[size], steps, device)
        plain = bench.run("plain")
        again = bench.run("plain")
        same = torch.equal(plain["video"], again["video"]) and torch.equal(plain["audio"], again["audio"])
        report.add("identity", f"{size}: plain twice", "bit-identical" if same else "differs",
                   "bit-identical (the kernels are deterministic)", same)
        for mode in ("ours", "ours+fusion"):
            with watched_writers(record=True) as watches:
                run = bench.run(mode)
            try:
                CO.check_identity(plain, run, mode)
                report.add("identity", f"{size}: {mode} vs plain latents", "bit-identical", "bit-identical", True)
            except C.BenchFailure as e:
                report.add("identity", f"{size}: {mode} vs plain latents", str(e)[:160], "bit-identical", False)
            equal, total = file_matches_copies(watches[0])
            report.add("identity", f"{size}: {mode} maps in the file vs synchronous copies",
                       f"{equal}/{total} equal", "all equal", total > 0 and equal == total)
            os.remove(run["path"])
        del bench
        if device == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- real size


def writer_rows(report: Report, label: str, watch: _Watch) -> None:
    """The writer kept up: never a whole step behind, and its drain at close is short."""
    ends = watch.step_ends
    if len(ends) < 1:
        report.add("writer", label, "no step ended", "", False)
        return
    per_step = ends[0][0]
    times = [t for _, _, t in ends]
    step_seconds = min(b - a for a, b in zip(times, times[1:])) if len(ends) > 1 else float("nan")
    pending = [n for _, n, _ in ends]
    ok = all(n <= per_step for n in pending)
    report.add("writer", f"{label}: queue at each step end", " ".join(map(str, pending)),
               f"<= {per_step} (one step's maps)", ok)
    drain_ok = watch.drain_seconds <= max(1.0, step_seconds) if step_seconds == step_seconds else True
    report.add("writer", f"{label}: drain at close", f"{watch.drain_seconds:.3f} s",
               "<= one step" + (f" ({step_seconds:.2f} s)" if step_seconds == step_seconds else ""), drain_ok)
    report.add("writer", f"{label}: most maps queued", str(watch.max_pending), "", None)


def check_real(report: Report, device: str, smoke: bool, repeat: int, budget: float) -> dict:
    import torch

    size, long_size = (CO.SIZES["tiny"], SMOKE_LONG) if smoke else (CO.SIZES["real"], REAL_10S)
    steps = 1 if smoke else 2
    print(f"real: building {size.name} ({size.describe()}) on {device} ...", flush=True)
    with normal_draws_on(device):
        bench = make_bench(size, steps, device)
    report.add("real", f"{size.name}: model build (random bf16 weights)", f"{bench.build_seconds:.1f} s", "", None)
    with watched_writers(record=False) as watches:
        timed, naive_map_diff = CO.time_modes(bench, list(CO.MODES), repeat, warmup=not smoke)
    result = CO.SizeResult(size.name, device, size.describe(), bench.params, steps, 16, repeat, bench.build_seconds,
                           timed, "CUDA max allocated" if device == "cuda" else "-", naive_map_diff)
    CO.report([result], C.machine_facts(), CO.versions(device))
    plain = timed["plain"]
    for mode in ("ours", "ours+fusion", "naive"):
        ratio = timed[mode].median / plain.median
        is_target = mode == "ours" and not smoke
        report.add("real", f"{size.name}: {mode}/plain time", f"{ratio:.3f}", f"<= {OURS_TARGET}" if is_target else "",
                   ratio <= OURS_TARGET if is_target else None, kind="target")
    memory = {m: r.memory for m, r in timed.items()}
    memory_rows(report, size.name, memory, target=not smoke)
    for w in watches:
        if len(w.step_ends) == steps:  # the timed runs (warm-ups take one step)
            writer_rows(report, f"{size.name} {Path(w.path).stem}", w)

    used = time.perf_counter() - START
    if used > 0.75 * budget:
        report.add("real", f"{long_size.name}: memory runs", f"skipped: {used:.0f} s of the {budget:.0f} s budget used",
                   "", None)
        return {"size": asdict(result)}
    print(f"real: memory at {long_size.name} ({long_size.describe()}), one step ...", flush=True)
    bench.size = long_size  # the same weights: 960x960_10s has 960x960_5s's architecture
    long_memory, plain_long = {}, None
    for mode in CO.MODES:
        run = bench.run(mode, steps=1)
        long_memory[mode] = run["gpu_peak"]
        if mode == "plain":
            plain_long = run
        elif mode != "naive":
            try:
                CO.check_identity(plain_long, run, mode)
                report.add("identity", f"{long_size.name}: {mode} vs plain latents", "bit-identical", "bit-identical", True)
            except C.BenchFailure as e:
                report.add("identity", f"{long_size.name}: {mode} vs plain latents", str(e)[:160], "bit-identical", False)
        if run["path"]:
            os.remove(run["path"])
        print(f"  {mode}: {run['seconds']:.2f} s", flush=True)
    memory_rows(report, long_size.name, long_memory, target=not smoke)
    del bench
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"size": asdict(result), "long_memory": long_memory}


@contextlib.contextmanager
def normal_draws_on(device: str):
    """model.build_random with its normal draws made on the GPU: the same rules per
    parameter, other random numbers, and 11.7B of them in seconds instead of the minute
    or more the CPU generator takes (a large part of this check's budget otherwise).
    On the CPU (--smoke) it only swaps the generator."""
    import torch

    cpu_randn, gen = torch.randn, torch.Generator(device=device).manual_seed(0)

    def randn(*shape, generator=None, **kw):
        return cpu_randn(*shape, generator=gen, device=device, **kw)

    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = cpu_randn


def memory_rows(report: Report, label: str, memory: dict, target: bool) -> None:
    if memory.get("plain") is None:
        report.add("real", f"{label}: GPU memory", "not measured on the CPU", "", None)
        return
    report.add("real", f"{label}: plain max_memory_allocated", C.human_bytes(memory["plain"]), "", None)
    for mode in ("ours", "ours+fusion", "naive"):
        extra = memory[mode] - memory["plain"]
        is_target = target and mode != "naive"
        report.add("real", f"{label}: {mode} extra memory", f"{extra / 2**20:+,.0f} MiB",
                   "<= 1 GiB" if is_target else "", extra <= EXTRA_TARGET if is_target else None, kind="target")


# ----------------------------------------------------------------------------- main


def versions(device: str) -> dict:
    import importlib.metadata as md

    import torch

    v = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device}
    if device == "cuda":
        v["gpu"] = torch.cuda.get_device_name(0)
    for dist in ("flash_attn", "flash_attn_3"):
        with contextlib.suppress(md.PackageNotFoundError):
            v[dist] = md.version(dist)
    return v


def print_report(report: Report, facts: dict, v: dict, seconds: dict) -> None:
    def verdict(c: Check) -> str:
        if c.ok is None:
            return ""
        return "ok" if c.ok else ("MISS" if c.kind == "target" else "FAIL")

    order = list(dict.fromkeys(c.section for c in report.checks))
    rows = sorted(report.checks, key=lambda c: order.index(c.section))  # stable: run order within a section
    C.print_table("gpu_check", ["section", "check", "value", "limit", ""],
                  [(c.section, c.name, c.value, c.limit, verdict(c)) for c in rows],
                  caption=C.describe_machine(facts) + "; " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print("section seconds: " + ", ".join(f"{k} {s:.1f}" for k, s in seconds.items()))
    for c in report.failed():
        print(f"FAILED: {c.section}: {c.name}: {c.value} (limit {c.limit})")
    for c in report.missed():
        print(f"missed target: {c.section}: {c.name}: {c.value} (target {c.limit})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, math and CPU SDPA only (CI)")
    ap.add_argument("--only", default="backends,maps,identity,real", help="comma-separated sections")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds at real size (median reported)")
    ap.add_argument("--out", metavar="DIR", default=os.environ.get("OUT"), help="folder for gpu_check.json ($OUT)")
    ap.add_argument("--budget", type=float, default=420.0,
                    help="seconds; the 960x960_10s memory runs are skipped when less than a quarter of it is left")
    args = ap.parse_args()
    sections = {s.strip() for s in args.only.split(",")}
    unknown = sections - {"backends", "maps", "identity", "real"}
    if unknown:
        print(f"unknown section(s) {', '.join(sorted(unknown))}; choose from backends, maps, identity, real",
              file=sys.stderr)
        return 2

    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU is visible; run with --smoke on a CPU-only machine", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # OpenMP barriers crawl on a busy CI machine
    report, seconds, details = Report(), {}, {}
    facts, v = C.machine_facts(), versions(device)
    print(f"gpu_check on {device}: {', '.join(f'{k} {val}' for k, val in v.items())}", flush=True)

    def status() -> int:
        return 1 if report.failed() else (3 if report.missed() else 0)

    def save() -> None:  # after every section: a run stopped at its time limit still leaves its results
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            payload = {"status": status(), "machine": facts, "versions": v, "seconds": seconds,
                       "checks": [asdict(c) for c in report.checks], "details": details,
                       "failed": [asdict(c) for c in report.failed()], "missed": [asdict(c) for c in report.missed()]}
            (Path(args.out) / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")

    def section(name, fn):
        t0 = time.perf_counter()
        print(f"== {name} (at {t0 - START:.0f} s)", flush=True)
        try:
            with torch.no_grad():
                res = fn()
            if res is not None:
                details[name] = res
        except Exception as e:  # noqa: BLE001 - one section failing must not hide the others
            traceback.print_exc()
            report.add(name, "section ran to the end", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}", "", False)
        seconds[name] = time.perf_counter() - t0
        save()

    if sections & {"identity", "real"}:
        name = solver()
        report.add("setup", "sampler", name + ("" if name == "unipc" else " (diffusers is not installed: carry its "
                                               "wheel to run the default unipc)"), "", None)
    if sections & {"backends", "maps"}:
        section("kernels", lambda: check_backends_and_maps(report, SMOKE if args.smoke else OVI, device, sections))
    if "identity" in sections:
        section("identity", lambda: check_identity(report, ["tiny"] if args.smoke else ["tiny", "medium"], device,
                                                   1 if args.smoke else 2))
    if "real" in sections:
        section("real", lambda: check_real(report, device, args.smoke, 1 if args.smoke else max(1, args.repeat),
                                           args.budget))

    print_report(report, facts, v, seconds)
    if args.out:
        print(f"wrote {Path(args.out) / 'gpu_check.json'}")
    print({0: "gpu_check: all checks passed, all targets met", 1: "gpu_check: FAILED",
           3: "gpu_check: all checks passed; a performance target was missed"}[status()])
    return status()


if __name__ == "__main__":
    raise SystemExit(main())
