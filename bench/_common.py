"""Shared helpers of the benchmarks: machine facts, child processes, tables, synthetic captures.

Torch-free on purpose: render_latency and file_size must run where only the render side is
installed. Each benchmark is a script (`python bench/NAME.py`), so this module also puts
the repository root on sys.path, the way `python -m` from the root would.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class BenchFailure(RuntimeError):
    """A measurement could not be made (a child failed, an invariant broke): exit non-zero."""


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_facts() -> dict:
    """Where and when the numbers came from (printed under every table)."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_ram_gib(), 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "commit": _commit(),
    }


def describe_machine(facts: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in facts["load_avg"])
    return (f"{facts['date_utc']}; {facts['cpu']}, {facts['cores']} cores, {facts['ram_gib']:.0f} GiB RAM; "
            f"load average {load}; commit {facts['commit']}; python {facts['python']}")


# ----------------------------------------------------------------------------- child processes


@dataclass
class ChildRun:
    """One finished child process: wall time, its own peak RSS, exit status and output."""

    args: list[str]
    seconds: float
    max_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system time of the child (robust to other load on the machine)


def run_child(args: Sequence[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 600.0) -> ChildRun:
    """Run a command and measure it: wall time from fork to reap, and the peak RSS of THIS
    child alone (os.wait4's rusage; RUSAGE_CHILDREN would be the max over all children).

    Output goes to temporary files, so a chatty child can never block on a full pipe."""
    import tempfile

    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    full_env.update(env or {})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(args), cwd=str(cwd or ROOT), env=full_env, stdout=out, stderr=err)
        deadline = t0 + timeout
        while True:  # poll wait4 so a hung child cannot hang the benchmark
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        return ChildRun(list(args), seconds, usage.ru_maxrss * 1024, proc.returncode, out.read(), err.read(),
                        usage.ru_utime + usage.ru_stime)


# Runs a module as `python -m` would and writes its own peak RSS (VmHWM) to argv[1] at exit.
# Needed because os.wait4's ru_maxrss of an exec'd child starts at the PARENT's RSS at fork
# (Linux carries the forked mm's high-water mark into the exec'd process), so a benchmark
# that holds a big array would inflate every child's number. VmHWM belongs to the new image.
_PEAK_WRAPPER = (
    "import atexit, runpy, sys\n"
    "report, module = sys.argv[1], sys.argv[2]\n"
    "def _hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            open(report, 'w').write(str(int(line.split()[1]) * 1024))\n"
    "atexit.register(_hwm)\n"
    "sys.argv = [module] + sys.argv[3:]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def run_module_child(module: str, args: Sequence[str], report: str, **kw) -> ChildRun:
    """run_child of `python -m module args`, with max_rss_bytes the child's own VmHWM."""
    if os.path.exists(report):
        os.remove(report)
    run = run_child([sys.executable, "-c", _PEAK_WRAPPER, report, module, *args], **kw)
    try:
        run.max_rss_bytes = int(Path(report).read_text())
    except (OSError, ValueError):
        pass  # no /proc: keep wait4's figure
    return run


def check_child(run: ChildRun, what: str) -> ChildRun:
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-12:]
        raise BenchFailure(f"{what} failed with exit code {run.returncode}:\n  " + "\n  ".join(tail))
    return run


# ----------------------------------------------------------------------------- numbers and tables


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{int(n)} B"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> None:
    """A rich table on stdout (wide enough never to wrap in a log file)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption or None, caption_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    Console(width=max(200, Console().width), highlight=False).print(table)


def verdict(value: float, target: float) -> str:
    """'ok' or 'MISS by x%' for a value that must stay <= target."""
    if value != value:  # NaN
        return "n/a"
    return "ok" if value <= target else f"MISS by {100 * (value / target - 1):.0f}%"


def save_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def main_guard(fn) -> int:
    """Run a benchmark's main; a BenchFailure prints one line and exits 1."""
    try:
        fn()
    except BenchFailure as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- synthetic captures

WORDS = ["man", "dog", "red", "ball", "runs", "park", "green", "tree", "sun", "sky", "woman", "laughs",
         "car", "street", "night", "rain", "guitar", "sings", "blue", "river", "bird", "flies"]


@dataclass
class SyntheticSpec:
    """Sizes of a synthetic capture; the defaults are the released 960x960_5s model's."""

    grid: tuple[int, int, int] = (31, 30, 30)  # latent frames, token rows, token cols
    steps: int = 50
    layers: int = 30
    groups: int = 16  # word groups + <eos> + <pad>
    audio_tokens: int = 157
    video_frames: int = 121
    video_size: tuple[int, int] = (960, 960)
    audio_seconds: float = 5.0
    kinds: tuple[str, ...] = ("text_video", "text_audio")
    map_dtype: str = "int16"  # a key of format.MAP_ENCODINGS (format.DEFAULT_MAP_ENCODING)
    checksums: bool = True  # Fletcher-32 (False only to measure what it costs)

    @property
    def words(self) -> list[str]:
        n = self.groups - 2
        return [WORDS[i % len(WORDS)] + ("" if i < len(WORDS) else f"#{i // len(WORDS) + 1}") for i in range(n)]


REAL = SyntheticSpec()
QUICK = SyntheticSpec(grid=(5, 8, 8), steps=4, layers=3, groups=5, audio_tokens=20, video_frames=17,
                      video_size=(256, 256), audio_seconds=0.64)


def synthetic_layout(spec: SyntheticSpec):
    """A CaptureLayout whose prompt is the spec's words, one token each, then EOS."""
    from ovi_attn_render.contract.format import CaptureLayout
    from ovi_attn_render.contract.geometry import SAMPLE_RATE
    from ovi_attn_render.contract.token_groups import Token, TokenTable, group_members

    words = [WORDS[i % len(WORDS)] for i in range(spec.groups - 2)]  # the prompt: one token a word
    text = " ".join(words)
    tokens, pos = [], 0
    for i, w in enumerate(words):
        tokens.append(Token(i, 1000 + i, "▁" + w, pos, pos + len(w), w, i))
        pos += len(w) + 1
    tokens.append(Token(len(words), 1, "</s>", len(text), len(text), "", -1))
    table = TokenTable.of(text, tokens, spec.words)  # the groups as capture resolves them: man, ..., man#2
    sample_rate = SAMPLE_RATE
    return CaptureLayout(
        grid=spec.grid, audio_tokens=spec.audio_tokens, steps=list(range(spec.steps)),
        layers=list(range(spec.layers)), groups=table.labels, group_kinds=[g.kind for g in table.groups],
        group_members=group_members(table.groups, len(tokens)), tokens=table.tokens, kinds=list(spec.kinds), branches=("cond",), heads=1,
        map_dtype=spec.map_dtype, checksums=spec.checksums, num_steps=spec.steps, num_layers=spec.layers,
        video_frames=spec.video_frames, video_size=spec.video_size,
        audio_samples=int(spec.audio_seconds * sample_rate), audio_sample_rate=sample_rate,
        attrs={"prompt": text, "model": "synthetic", "seed": 0, "solver": "unipc", "mode": "t2v"},
    )


def smooth_maps(spec: SyntheticSpec, seed: int = 0):
    """Per-group base maps [G, 1, F, h, w] float32: a soft blob per word that drifts over
    frames, a flat <eos> and <pad> (which take most of the mass, as in real captures)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    F, h, w = spec.grid
    G = spec.groups
    ys = np.arange(h)[None, :, None] / max(h - 1, 1)
    xs = np.arange(w)[None, None, :] / max(w - 1, 1)
    fs = np.arange(F)[:, None, None] / max(F - 1, 1)
    base = np.empty((G, 1, F, h, w), np.float32)
    for g in range(G - 2):
        cy, cx, vx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(-0.3, 0.3)
        width = rng.uniform(0.08, 0.2)
        blob = np.exp(-((ys - cy) ** 2 + (xs - cx - vx * fs) ** 2) / (2 * width**2))
        base[g, 0] = 0.002 + 0.05 * blob
    base[G - 2] = 0.15  # <eos>
    base[G - 1] = 0.6  # <pad>
    return base


@dataclass
class WriteStats:
    path: str
    raw_bytes: int  # what the arrays hold as stored: maps + frames + audio
    map_bytes: int
    estimated_bytes: int  # format.estimate_bytes: what capture prints before it starts
    file_bytes: int  # st_size
    disk_bytes: int  # allocated blocks
    create_seconds: float  # file creation: metadata + early allocation with NaN fill
    maps_seconds: float  # every write_map and finish_step (flush)
    maps_cpu_seconds: float  # the same, CPU time of this process (robust to other load)
    clip_seconds: float  # decoded frames and audio
    close_seconds: float
    steps: int

    @property
    def total_seconds(self) -> float:
        return self.create_seconds + self.maps_seconds + self.clip_seconds + self.close_seconds


def write_synthetic_capture(path: str | Path, spec: SyntheticSpec = REAL, fsync: bool = True) -> WriteStats:
    """Write a complete capture of `spec`'s size through the real CaptureFileWriter, step by
    step as capture does (all layers of a step, then finish_step), and time each phase.

    fsync at the end makes the numbers include getting the bytes to the disk, not only to
    the page cache (and lets a cold-cache reader evict the file)."""
    import numpy as np

    from ovi_attn_render.contract.format import CaptureFileWriter, big_variables, estimate_bytes

    layout = synthetic_layout(spec)
    base = smooth_maps(spec)
    rng = np.random.default_rng(1)
    amp = rng.uniform(0.5, 1.5, size=(spec.steps, spec.layers, spec.groups, 1, 1, 1, 1)).astype(np.float32)
    text_audio = rng.uniform(0, 0.1, size=(spec.groups, 1, spec.audio_tokens)).astype(np.float32)

    t0 = time.perf_counter()
    writer = CaptureFileWriter(path, layout)
    t1 = time.perf_counter()
    c1 = time.process_time()
    for s in range(spec.steps):
        for layer in range(spec.layers):
            if "text_video" in spec.kinds:
                writer.write_map("text_video", 0, s, layer, base * amp[s, layer])  # float32, as the probe sends
            if "text_audio" in spec.kinds:
                writer.write_map("text_audio", 0, s, layer, text_audio)
        writer.set_timestep(s, 999 - 20 * s, 1 - s / spec.steps)
        writer.finish_step(s + 1)
    t2 = time.perf_counter()
    maps_cpu = time.process_time() - c1
    writer.write_video(_synthetic_frames(spec))
    n = layout.audio_samples
    writer.write_audio(0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / layout.audio_sample_rate).astype(np.float32))
    writer.f.flush()
    t3 = time.perf_counter()
    writer.close("complete")
    if fsync:
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
    t4 = time.perf_counter()
    st = os.stat(path)
    stored = {v.name: int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in big_variables(layout)}
    map_bytes = sum(b for name, b in stored.items() if name not in ("video", "audio"))
    return WriteStats(str(path), sum(stored.values()), map_bytes, estimate_bytes(layout), st.st_size,
                      st.st_blocks * 512, t1 - t0, t2 - t1, maps_cpu, t3 - t2, t4 - t3, spec.steps)


def expected_map(spec: SyntheticSpec, group: int, step: int, layer: int):
    """What the reader must return for one text_video map of write_synthetic_capture:
    the float32 map written, through the encoding and back. [F, h, w] float32."""
    import numpy as np

    from ovi_attn_render.contract.format import MAP_ENCODINGS, decode

    base = smooth_maps(spec)
    amp = np.random.default_rng(1).uniform(0.5, 1.5, size=(spec.steps, spec.layers, spec.groups, 1, 1, 1, 1))
    values = base * amp.astype(np.float32)[step, layer]  # [G, 1, F, h, w]
    enc = MAP_ENCODINGS[spec.map_dtype].for_variable("text_video")
    return decode(enc.attrs("text_video"), enc.encode("text_video", values))[group, 0], values[group, 0]


def _synthetic_frames(spec: SyntheticSpec):
    """uint8 [T, H, W, 3]: a soft colour gradient that slides one column per frame."""
    import numpy as np

    H, W = spec.video_size
    y = np.linspace(0, 1, H, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, W, dtype=np.float32)[None, :]
    rgb = np.stack([60 + 120 * x + 0 * y, 80 + 100 * y + 0 * x, 140 - 60 * x * y], -1).astype(np.uint8)
    return np.stack([np.roll(rgb, 4 * t, axis=1) for t in range(spec.video_frames)])


ALT_DIMS_ENV = "OVI_BENCH_TEXT_VIDEO_DIMS"
STEP_MAJOR_DIMS = ("branch", "step", "layer", "token", "head", "frame", "y", "x")  # the layout format 1 replaced


def set_text_video_dims(dims: Sequence[str]) -> tuple[str, ...]:
    """Write or read text_video in another dimension order (a layout experiment): patches
    the map kinds registry, which the writer follows (the reader reads the order from the
    file). Returns the old order."""
    from dataclasses import replace

    from ovi_attn_render.contract.kinds import MAP_KINDS

    saved = MAP_KINDS["text_video"].dims
    if sorted(dims) != sorted(saved) or tuple(dims[-2:]) != ("y", "x"):
        raise BenchFailure(f"{dims} is not a permutation of {saved} ending in y, x")
    MAP_KINDS["text_video"] = replace(MAP_KINDS["text_video"], dims=tuple(dims))
    return saved


@contextlib.contextmanager
def text_video_dims(dims: Sequence[str]):
    """set_text_video_dims for the duration of a with-block."""
    saved = set_text_video_dims(dims)
    try:
        yield
    finally:
        set_text_video_dims(saved)


def drop_from_page_cache(path: str | Path) -> bool:
    """Evict one file's pages from the page cache (posix_fadvise DONTNEED; needs no root,
    works for clean pages). Returns whether the call was made."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except (OSError, AttributeError):
        return False
    finally:
        os.close(fd)


def cached_fraction(path: str | Path) -> float | None:
    """Fraction of the file's pages in the page cache (util-linux fincore), None if unknown."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)],
                             capture_output=True, text=True, timeout=30)
        res, size = (int(v) for v in out.stdout.split()[:2])
        return res / size if size else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None

