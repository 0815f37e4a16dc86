"""How fast `ovi-attn info` and `render` answer on a capture of real size.

Writes, through the real `CaptureFileWriter`, a synthetic capture of the released
960x960_5s size (50 steps x 30 layers x 16 groups x 31 x 30 x 30 int16 maps, 121 decoded 960x960
frames, 5 s of audio; about 1.7 GB), then runs each command as its own process, the way a
user runs it (`python -m ovi_attn_render.cli ...`, start-up included):

- wall time: once with the file evicted from the page cache (cold; posix_fadvise
  DONTNEED, checked with fincore) and `--repeat` times warm (median);
- peak RSS of that process alone (its VmHWM, written at exit by a `python -m` wrapper:
  os.wait4's figure would start from this benchmark's own RSS, see _common.run_module_child);
- bytes read from the .h5: a separate run of the same command in a process whose
  `h5py.File` opens the capture through a counting file object (HDF5's fileobj driver),
  so only reads of the capture file count, not imports; compared with the bytes of the
  subset the view draws (maps at 2 bytes, decoded frames, audio).

    .venv/bin/python bench/render_latency.py               # real size
    .venv/bin/python bench/render_latency.py --quick       # toy size, smoke test
    .venv/bin/python bench/render_latency.py --file X.h5   # reuse a capture written before
    .venv/bin/python bench/render_latency.py --profile gif # cProfile one command
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import _common as C

TOKEN = "man"  # the first word group of the synthetic prompt


@dataclass
class Command:
    name: str
    args: list[str]  # after `python -m ovi_attn_render.cli`
    target_s: float | None  # end-to-end wall-time target, None: reported only
    subset_bytes: int  # bytes of the data the view draws (0: metadata only)
    output: str | None  # the file it must write


@dataclass
class Result:
    name: str
    cold_s: float | None
    warm_s: float
    warm_all: list[float]
    max_rss: int
    bytes_read: int
    reads: int
    subset_bytes: int
    cached_before_cold: float | None
    target_s: float | None


def commands(h5: str, spec: C.SyntheticSpec, out_dir: str, pixel_frame: int) -> list[Command]:
    """The five measured commands and the bytes each one needs to draw."""
    from ovi_attn_render.contract.geometry import SAMPLE_RATE

    F, h, w = spec.grid
    map_b = h * w * _map_itemsize(spec)  # one stored map
    frame_b = spec.video_size[0] * spec.video_size[1] * 3
    S, L = spec.steps, spec.layers
    grid_steps = min(S, 10)  # the grid view's default: 10 steps spread over the run
    audio_b = int(spec.audio_seconds * SAMPLE_RATE) * 4
    o = lambda name: os.path.join(out_dir, name)  # noqa: E731
    at = ["--token", TOKEN, "--frame", str(pixel_frame), "--force"]
    return [
        Command("info", ["info", h5], 1.0, 0, None),
        Command("gif (steps)", ["render", h5, *at, "-o", o("steps.gif")], 2.0, S * L * map_b + frame_b,
                o("steps.gif")),
        Command("grid", ["render", h5, "--view", "grid", *at, "-o", o("grid.png")], 3.0,
                grid_steps * L * map_b + frame_b, o("grid.png")),
        Command("layers", ["render", h5, "--view", "layers", *at, "-o", o("layers.png")], 3.0,
                3 * S * L * map_b, o("layers.png")),  # the token, <eos> and <pad>
        Command("frames mp4", ["render", h5, "--view", "frames", "--token", TOKEN, "--force", "-o", o("frames.mp4")],
                None, L * F * map_b + spec.video_frames * frame_b + audio_b, o("frames.mp4")),
    ]


def _map_itemsize(spec: C.SyntheticSpec) -> int:
    import numpy as np

    from ovi_attn_render.contract.format import MAP_ENCODINGS

    return np.dtype(MAP_ENCODINGS[spec.map_dtype].dtype).itemsize


# ----------------------------------------------------------------------------- counting reads


class CountingFile(io.FileIO):
    """A raw file that counts the bytes HDF5 reads through it."""

    bytes_read = 0
    reads = 0

    def readinto(self, b) -> int:
        n = super().readinto(b)
        CountingFile.bytes_read += n or 0
        CountingFile.reads += 1
        return n

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        CountingFile.bytes_read += len(data)
        CountingFile.reads += 1
        return data


def count_reads_child(h5: str, report: str, cli_args: list[str]) -> int:
    """Run the CLI in this process with every open of `h5` routed through CountingFile
    (and text_video read in the dim order of $OVI_BENCH_TEXT_VIDEO_DIMS, if set)."""
    import h5py

    alt = os.environ.get(C.ALT_DIMS_ENV)
    if alt:
        C.set_text_video_dims(alt.split(","))  # for the life of this process

    target = os.path.realpath(h5)
    real_file = h5py.File

    class CountedFile(real_file):
        def __init__(self, name, mode="r", *a, **kw):
            if isinstance(name, (str, os.PathLike)) and os.path.realpath(name) == target and mode == "r":
                kw.pop("locking", None)  # not an option of the fileobj driver
                name = CountingFile(target, "r")
            super().__init__(name, mode, *a, **kw)

    h5py.File = CountedFile
    from ovi_attn_render.cli import main

    rc = main(cli_args)
    Path(report).write_text(json.dumps({"bytes_read": CountingFile.bytes_read, "reads": CountingFile.reads}))
    return rc


# ----------------------------------------------------------------------------- measuring


def cli(args: list[str], tmp: str) -> C.ChildRun:
    """`python -m ovi_attn_render.cli args` in its own process; its own peak RSS (VmHWM)."""
    return C.run_module_child("ovi_attn_render.cli", args, os.path.join(tmp, "peak_rss"))


def count_reads(cmd: Command, h5: str, tmp: str, dims: Sequence[str] | None = None) -> dict:
    """Bytes and read calls `cmd` makes on the capture, in a process that counts them."""
    report = os.path.join(tmp, "reads.json")
    env = {C.ALT_DIMS_ENV: ",".join(dims)} if dims else None
    counted = C.run_child([sys.executable, __file__, "--count-reads", h5, report, "--", *cmd.args], env=env)
    C.check_child(counted, f"{cmd.name} (counting reads)")
    reads = json.loads(Path(report).read_text())
    if cmd.subset_bytes and reads["bytes_read"] == 0:
        raise C.BenchFailure(f"{cmd.name}: no read of the capture was counted; the counting hook missed it")
    return reads | {"run": counted}


def measure(cmd: Command, h5: str, repeat: int, cold: bool, tmp: str) -> Result:
    cached, cold_s = None, None
    if cold:
        C.drop_from_page_cache(h5)
        cached = C.cached_fraction(h5)
        cold_s = C.check_child(cli(cmd.args, tmp), cmd.name).seconds
    warm = [C.check_child(cli(cmd.args, tmp), cmd.name) for _ in range(repeat)]
    reads = count_reads(cmd, h5, tmp)
    if cmd.output and not os.path.getsize(cmd.output):
        raise C.BenchFailure(f"{cmd.name} wrote an empty {cmd.output}")
    warm = warm or [reads["run"]]  # --quick: one run, the counting one, gives every number
    return Result(cmd.name, cold_s, C.median([r.seconds for r in warm]), [r.seconds for r in warm],
                  max(r.max_rss_bytes for r in warm), reads["bytes_read"], reads["reads"], cmd.subset_bytes,
                  cached, cmd.target_s)


def startup_seconds(repeat: int, tmp: str) -> float:
    """`ovi-attn --help`: the floor every command pays (interpreter, typer, rich)."""
    runs = [C.check_child(cli(["--help"], tmp), "--help") for _ in range(max(1, repeat))]
    return C.median([r.seconds for r in runs])


RSS_TARGET = 500 * 2**20
READ_TARGET = 2.0


def print_results(results: list[Result], spec: C.SyntheticSpec, stats: C.WriteStats | None, startup: float,
                  facts: dict, file_bytes: int) -> None:
    rows = []
    for r in results:
        ratio = r.bytes_read / r.subset_bytes if r.subset_bytes else float("nan")
        t = r.warm_s if r.cold_s is None else max(r.warm_s, r.cold_s)
        rows.append((
            r.name,
            "-" if r.cold_s is None else f"{r.cold_s:.2f}",
            f"{r.warm_s:.2f}",
            "-" if r.target_s is None else f"{r.target_s:g}",
            "-" if r.target_s is None else C.verdict(t, r.target_s),
            C.mib(r.max_rss), C.verdict(r.max_rss, RSS_TARGET),
            C.human_bytes(r.subset_bytes) if r.subset_bytes else "metadata",
            f"{C.human_bytes(r.bytes_read)} ({r.reads} reads)",
            "-" if ratio != ratio else f"{ratio:.2f}x",
            "-" if ratio != ratio else C.verdict(ratio, READ_TARGET),
        ))
    F, h, w = spec.grid
    title = (f"render_latency: {spec.steps} steps x {spec.layers} layers x {spec.groups} groups x {F}x{h}x{w} "
             f"{spec.map_dtype}, "
             f"{spec.video_frames} frames {spec.video_size[0]}x{spec.video_size[1]}; file {C.human_bytes(file_bytes)}; "
             f"start-up floor (`ovi-attn --help`) {startup:.2f} s")
    C.print_table(title, ["command", "cold s", "warm s (median)", "target s", "time vs target", "peak RSS",
                          "RSS vs 500 MiB", "subset drawn", "read from .h5", "read/subset", "read vs 2x"], rows,
                  caption=C.describe_machine(facts))
    if stats is not None:
        print(f"capture written in {stats.total_seconds:.1f} s ({stats.raw_bytes / 2**20 / stats.total_seconds:,.0f} "
              f"MiB/s); see bench/file_size.py")
    colds = [r.cached_before_cold for r in results if r.cached_before_cold is not None]
    if colds:
        print(f"cold runs: at most {100 * max(colds):.1f}% of the file was in the page cache before each")
    print("ratios: " + "; ".join(
        f"{r.name} {r.warm_s:.2f} s / {r.target_s:g} s = {r.warm_s / r.target_s:.2f}" for r in results if r.target_s)
        + "; " + "; ".join(f"{r.name} read/subset {r.bytes_read / r.subset_bytes:.2f}" for r in results
                           if r.subset_bytes))


def compare_layout(spec: C.SyntheticSpec, cmds: list[Command], results: list[Result], tmp: str) -> list[tuple]:
    """Bytes read by the map views if text_video kept `step, layer` outermost (the layout
    format version 1 replaced): the same synthetic capture, written and read in that order."""
    alt = os.path.join(tmp, "step_major.h5")
    print(f"writing the same capture with text_video dims {', '.join(C.STEP_MAJOR_DIMS)} ...", flush=True)
    with C.text_video_dims(C.STEP_MAJOR_DIMS):
        C.write_synthetic_capture(alt, spec)
    rows = []
    for cmd, res in zip(cmds, results):
        if cmd.name not in ("gif (steps)", "grid", "layers"):
            continue
        alt_cmd = Command(cmd.name, [alt if a == cmd.args[1] else a for a in cmd.args], None, cmd.subset_bytes, None)
        reads = count_reads(alt_cmd, alt, tmp, C.STEP_MAJOR_DIMS)
        rows.append((cmd.name, C.human_bytes(cmd.subset_bytes),
                     f"{C.human_bytes(res.bytes_read)} ({res.bytes_read / cmd.subset_bytes:.2f}x, {res.reads} reads)",
                     f"{C.human_bytes(reads['bytes_read'])} ({reads['bytes_read'] / cmd.subset_bytes:.2f}x, "
                     f"{reads['reads']} reads)"))
    os.remove(alt)
    C.print_table("layout: bytes read from the .h5, format 1 (token, frame outermost) vs step, layer outermost",
                  ["command", "subset drawn", f"format 1 ({', '.join(MAP_DIMS_TEXT_VIDEO())})",
                   f"step-major ({', '.join(C.STEP_MAJOR_DIMS)})"], rows)
    return rows


def MAP_DIMS_TEXT_VIDEO() -> tuple[str, ...]:  # noqa: N802 - reads like the constant it returns
    from ovi_attn_render.contract.kinds import MAP_KINDS

    return MAP_KINDS["text_video"].dims


def profile(cmd: Command, top: int = 30) -> None:
    run = C.run_child([sys.executable, "-m", "cProfile", "-s", "cumulative", "-m", "ovi_attn_render.cli", *cmd.args])
    C.check_child(run, f"profile of {cmd.name}")
    lines = run.stdout.splitlines()
    start = next((i for i, l in enumerate(lines) if "ncalls" in l), 0)
    print("\n".join(lines[start:start + top + 1]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--count-reads":  # child mode, see count_reads_child
        h5, report, sep, *rest = sys.argv[2:]
        raise SystemExit(count_reads_child(h5, report, rest))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy size, one run each (smoke test)")
    ap.add_argument("--file", help="an existing capture written by this benchmark (--keep) to reuse")
    ap.add_argument("--keep", metavar="PATH", help="write the synthetic capture here and keep it")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs per command (median reported)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache run")
    ap.add_argument("--only", help="comma-separated command names to run (info, gif, grid, layers, frames)")
    ap.add_argument("--profile", metavar="NAME", help="cProfile one command (info, gif, grid, layers, frames) and stop")
    ap.add_argument("--compare-layout", action="store_true",
                    help="also count the bytes the map views would read with step, layer outermost")
    ap.add_argument("--out", metavar="JSON", help="also save the numbers as JSON")
    args = ap.parse_args()
    spec = C.QUICK if args.quick else C.REAL
    repeat = 0 if args.quick else max(1, args.repeat)
    cold = not (args.quick or args.no_cold)
    facts = C.machine_facts()
    with tempfile.TemporaryDirectory(prefix="ovi-attn-bench-") as tmp:
        stats = None
        if args.file:
            h5 = args.file
        else:
            h5 = args.keep or os.path.join(tmp, "synthetic_960x960_5s.h5")
            print(f"writing a synthetic capture to {h5} ...", flush=True)
            stats = C.write_synthetic_capture(h5, spec)
        pixel_frame = spec.video_frames // 2
        cmds = commands(h5, spec, tmp, pixel_frame)
        if args.profile:
            profile(next(c for c in cmds if c.name.startswith(args.profile)))
            return
        if args.only:
            wanted = [w.strip() for w in args.only.split(",")]
            cmds = [c for c in cmds if any(c.name.startswith(w) for w in wanted)]
        startup = startup_seconds(repeat, tmp)
        results = []
        for cmd in cmds:
            print(f"measuring {cmd.name} ...", flush=True)
            results.append(measure(cmd, h5, repeat, cold, tmp))
        print_results(results, spec, stats, startup, facts, os.path.getsize(h5))
        layout_rows = compare_layout(spec, cmds, results, tmp) if args.compare_layout else None
    C.save_json(args.out, {"spec": asdict(spec), "results": [asdict(r) for r in results], "layout": layout_rows,
                           "startup_s": startup, "write": asdict(stats) if stats else None, "machine": facts})


if __name__ == "__main__":
    raise SystemExit(C.main_guard(main))
