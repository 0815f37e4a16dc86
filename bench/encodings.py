"""The map encodings side by side at real size: what format 2's default was chosen from.

For each candidate, writes the synthetic 960x960_5s capture of bench/file_size.py (50 steps x
30 layers x 16 groups x 31 x 30 x 30 text-to-video maps, text-to-audio maps, 121 decoded
960x960 frames, 5 s of audio) through the real `CaptureFileWriter`, then measures:
- file size, the size capture estimates before it starts, write ms per captured step;
- max |stored - float32| over one token's maps at the last step (the encoding's error);
- warm render latencies of bench/render_latency.py's commands (info, steps GIF, grid,
  layers; median of --repeat runs, each its own process) and bytes read against the subset;
- one token's GIF-over-steps selection through xarray: no dask, dask with the on-disk
  chunks (`chunks={}`), dask with format.DASK_CHUNKS.

Times are wall and CPU seconds (user + system of the process): on a shared machine the
wall time carries everyone else's load, the CPU time much less, so the ratios use CPU time.

Candidates: `format 1` (float16, no checksums: today's layout before format 2), `int16`
(the default: CF-packed), `int16, no checksum` (what Fletcher-32 costs), `float32-deflate`
(shuffle + zlib 1), `float32`. Ratios are against the format-1 column, measured in the same run.

    .venv/bin/python bench/encodings.py                 # real size, ~1.5-3 GB per file, one at a time
    .venv/bin/python bench/encodings.py --quick         # toy size (smoke test)
    .venv/bin/python bench/encodings.py --only int16,format1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import _common as C
import render_latency as R

CANDIDATES = {  # name -> (map encoding, Fletcher-32)
    "format1": ("float16", False),
    "int16": ("int16", True),
    "int16-nochecksum": ("int16", False),
    "float32-deflate": ("float32-deflate", True),
    "float32": ("float32", True),
}
LATENCY_COMMANDS = ("info", "gif (steps)", "grid", "layers")
XARRAY_WAYS = ("no dask", "chunks={}", "DASK_CHUNKS", "default engine, DASK_CHUNKS")


@dataclass
class Candidate:
    name: str
    file_bytes: int
    estimated_bytes: int
    write_ms_per_step: float
    write_cpu_ms_per_step: float
    create_s: float
    max_abs_error: float
    latency_s: dict  # command -> warm median seconds (wall)
    latency_cpu_s: dict  # command -> warm median CPU seconds of the process
    read_ratio: dict  # command -> bytes read / subset bytes
    xarray_s: dict  # "no dask", "chunks={}", "DASK_CHUNKS" -> seconds to select one token at one frame


def encoding_error(path: str, spec: C.SyntheticSpec) -> float:
    """max |read - float32 written| over every group's maps at the last step and layer."""
    import numpy as np

    from ovi_attn_render.contract.reader import open_capture

    worst = 0.0
    with open_capture(path) as cap:
        for g in range(spec.groups):
            _, exact = C.expected_map(spec, g, spec.steps - 1, spec.layers - 1)
            got = cap.text_video(g, steps=[spec.steps - 1], layers=[spec.layers - 1]).isel(step=0, layer=0, head=0)
            got = got.transpose("frame", "y", "x").values  # [F, h, w]
            worst = max(worst, float(np.abs(got - exact).max()))
    return worst


def xarray_selection(path: str, frame: int, netcdf_legal: bool) -> dict:
    """Seconds to open the file with xarray and pull one token's maps at one latent frame
    over all steps and layers (what the steps GIF draws), per way of opening it. The engine
    is h5netcdf for all (comparable; netCDF-C crashes on float16), plus xarray's default
    engine (netcdf4 where netCDF4 is installed) with DASK_CHUNKS on netCDF-legal files."""
    import warnings

    import xarray as xr

    from ovi_attn_render.contract.format import DASK_CHUNKS

    out = {}
    ways = [("no dask", {"engine": "h5netcdf"}), ("chunks={}", {"engine": "h5netcdf", "chunks": {}}),
            ("DASK_CHUNKS", {"engine": "h5netcdf", "chunks": DASK_CHUNKS})]
    if netcdf_legal:
        ways.append(("default engine, DASK_CHUNKS", {"chunks": DASK_CHUNKS}))
    for label, kw in ways:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DASK_CHUNKS splits the small fusion maps' chunks along frame
            t0 = time.perf_counter()
            with xr.open_dataset(path, **kw) as ds:
                values = ds.text_video.isel(branch=0, token=0, frame=frame).values  # [step, layer, head, y, x]
            out[label] = time.perf_counter() - t0
        if values.size == 0:
            raise C.BenchFailure(f"xarray ({label}) selected nothing")
    return out


def measure(name: str, spec: C.SyntheticSpec, tmp: str, repeat: int) -> Candidate:
    enc, checksums = CANDIDATES[name]
    spec = replace(spec, map_dtype=enc, checksums=checksums)
    path = os.path.join(tmp, f"{name}.nc")
    print(f"{name}: writing ...", flush=True)
    stats = C.write_synthetic_capture(path, spec)
    err = encoding_error(path, spec)
    pixel_frame = spec.video_frames // 2
    cmds = [c for c in R.commands(path, spec, tmp, pixel_frame) if c.name in LATENCY_COMMANDS]
    latency, cpu, ratio = {}, {}, {}
    for cmd in cmds:
        print(f"{name}: {cmd.name} ...", flush=True)
        runs = [C.check_child(R.cli(cmd.args, tmp), cmd.name) for _ in range(max(1, repeat))]
        latency[cmd.name] = C.median([r.seconds for r in runs])
        cpu[cmd.name] = C.median([r.cpu_seconds for r in runs])
        if cmd.subset_bytes:
            ratio[cmd.name] = R.count_reads(cmd, path, tmp)["bytes_read"] / cmd.subset_bytes
    from ovi_attn_render.contract.format import latent_frame_of

    from ovi_attn_render.contract.format import MAP_ENCODINGS

    xs = xarray_selection(path, int(latent_frame_of(pixel_frame)), MAP_ENCODINGS[enc].netcdf)
    os.remove(path)
    return Candidate(name, stats.file_bytes, stats.estimated_bytes, 1000 * stats.maps_seconds / stats.steps,
                     1000 * stats.maps_cpu_seconds / stats.steps, stats.create_seconds, err, latency, cpu, ratio, xs)


def print_results(results: list[Candidate], spec: C.SyntheticSpec, facts: dict) -> None:
    base = next((r for r in results if r.name == "format1"), results[0])

    def rel(v, b):
        return f"{v / b:.2f}x" if b else "-"

    rows = []
    for r in results:
        rows.append((
            r.name,
            f"{C.human_bytes(r.file_bytes)} ({rel(r.file_bytes, base.file_bytes)})",
            f"{r.estimated_bytes / r.file_bytes:.3f}",
            f"{r.write_ms_per_step:.0f} / {r.write_cpu_ms_per_step:.0f} "
            f"({rel(r.write_cpu_ms_per_step, base.write_cpu_ms_per_step)})",
            f"{r.max_abs_error:.2e}",
            *[f"{r.latency_s[c]:.2f} / {r.latency_cpu_s[c]:.2f} ({rel(r.latency_cpu_s[c], base.latency_cpu_s[c])})"
              for c in LATENCY_COMMANDS],
            ", ".join(f"{v:.2f}" for v in r.read_ratio.values()),
            " / ".join(f"{r.xarray_s[k]:.2f}" if k in r.xarray_s else "-" for k in XARRAY_WAYS),
        ))
    F, h, w = spec.grid
    C.print_table(
        f"encodings: {spec.steps} steps x {spec.layers} layers x {spec.groups} groups x {F}x{h}x{w}, "
        f"{spec.video_frames} frames {spec.video_size[0]}x{spec.video_size[1]}; ratios against format1",
        ["candidate", "file", "estimate/file", "write ms/step wall / CPU", "max |err| vs f32",
         *[f"{c} s wall / CPU" for c in LATENCY_COMMANDS], "read/subset (gif, grid, layers)",
         "xarray select s (h5netcdf: no dask / chunks={} / DASK_CHUNKS; default engine: DASK_CHUNKS)"], rows, caption=C.describe_machine(facts))
    print("ratios: " + "; ".join(
        f"{r.name} file {r.file_bytes / base.file_bytes:.3f}, write CPU "
        f"{r.write_cpu_ms_per_step / base.write_cpu_ms_per_step:.2f}, "
        + ", ".join(f"{c} CPU {r.latency_cpu_s[c] / base.latency_cpu_s[c]:.2f}" for c in LATENCY_COMMANDS)
        for r in results) + " (CPU time: robust to the other load of a shared machine; wall in the table)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy size, one run each (smoke test)")
    ap.add_argument("--only", help=f"comma-separated candidates ({', '.join(CANDIDATES)})")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs per render command (median reported)")
    ap.add_argument("--out", metavar="JSON", help="also save the numbers as JSON")
    args = ap.parse_args()
    spec = C.QUICK if args.quick else C.REAL
    repeat = 0 if args.quick else max(1, args.repeat)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CANDIDATES)
    bad = [n for n in names if n not in CANDIDATES]
    if bad:
        raise C.BenchFailure(f"unknown candidate {bad[0]}; known: {', '.join(CANDIDATES)}")
    facts = C.machine_facts()
    with tempfile.TemporaryDirectory(prefix="ovi-attn-bench-") as tmp:
        results = [measure(n, spec, tmp, repeat) for n in names]
    print_results(results, spec, facts)
    C.save_json(args.out, {"spec": asdict(spec), "results": [asdict(r) for r in results], "machine": facts})


if __name__ == "__main__":
    raise SystemExit(C.main_guard(main))
