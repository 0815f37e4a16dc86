"""Bytes on disk against raw bytes, and write throughput, of the capture file layout.

Writes a synthetic capture of the released 960x960_5s size (50 steps x 30 layers x 16
groups x 31 x 30 x 30 fp16 text-to-video maps, text-to-audio maps, 121 decoded 960x960
frames, 5 s of audio) through the real `CaptureFileWriter`, step by step as capture does,
then reports:
- raw bytes (what the arrays hold) against the file's size and its allocated blocks: the
  format's overhead (chunk index, coordinates, attributes);
- time to create the file (metadata plus early allocation with NaN fill of every map),
  to write the maps step by step (with the per-step flush), the decoded clip, and to close
  and fsync; throughput of each.

The layout is the one `format.py` chooses: one 2-D map per chunk, the default map encoding
(`--map-dtype` picks another), Fletcher-32 on every chunk (see docs/FORMAT.md).
bench/encodings.py compares the encodings side by side.

    .venv/bin/python bench/file_size.py            # real size, ~1.7 GB in a temp dir
    .venv/bin/python bench/file_size.py --quick    # toy size, for the smoke test
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import _common as C


def check_readback(stats: C.WriteStats, spec: C.SyntheticSpec) -> float:
    """Read one written map back through the reader and compare with what was written:
    a benchmark of a file that does not hold the right bytes would measure nothing.
    Returns the map's max |stored - float32| (the encoding's error)."""
    import numpy as np

    from ovi_attn_render.contract.reader import open_capture

    expected, exact = C.expected_map(spec, 0, spec.steps - 1, spec.layers - 1)  # group 0, last step and layer
    with open_capture(stats.path) as cap:
        if cap.status != "complete" or cap.steps_done != spec.steps:
            raise C.BenchFailure(f"the written file is {cap.status} with {cap.steps_done} steps")
        got = cap.text_video(0, steps=[spec.steps - 1], layers=[spec.layers - 1]).isel(step=0, layer=0, head=0)
        got = got.transpose("frame", "y", "x").values  # [F, h, w]
    if not np.array_equal(got, expected):
        raise C.BenchFailure(f"read-back of the last map differs from what was written by "
                             f"{float(np.abs(got - expected).max())}")
    return float(np.abs(got - exact).max())


def report(stats: C.WriteStats, spec: C.SyntheticSpec, facts: dict) -> dict:
    clip = stats.raw_bytes - stats.map_bytes
    per_step = stats.maps_seconds / stats.steps
    rows = [
        ("maps (raw)", C.human_bytes(stats.map_bytes), "", ""),
        ("decoded clip (raw)", C.human_bytes(clip), "", ""),
        ("raw total", C.human_bytes(stats.raw_bytes), "1.000", ""),
        ("file size", C.human_bytes(stats.file_bytes), f"{stats.file_bytes / stats.raw_bytes:.4f}",
         f"+{C.human_bytes(stats.file_bytes - stats.raw_bytes)} chunk index, checksums, metadata"),
        ("estimated before the run", C.human_bytes(stats.estimated_bytes), "",
         f"estimate/file = {stats.estimated_bytes / stats.file_bytes:.4f}"),
        ("on disk (blocks)", C.human_bytes(stats.disk_bytes), f"{stats.disk_bytes / stats.raw_bytes:.4f}", ""),
        ("create (early alloc, NaN fill)", f"{stats.create_seconds:.2f} s",
         "", f"{stats.map_bytes / 2**20 / max(stats.create_seconds, 1e-9):,.0f} MiB/s"),
        ("write maps, step by step", f"{stats.maps_seconds:.2f} s", "",
         f"{stats.map_bytes / 2**20 / max(stats.maps_seconds, 1e-9):,.0f} MiB/s; {1000 * per_step:.0f} ms per step"),
        ("write decoded clip", f"{stats.clip_seconds:.2f} s", "",
         f"{clip / 2**20 / max(stats.clip_seconds, 1e-9):,.0f} MiB/s"),
        ("close + fsync", f"{stats.close_seconds:.2f} s", "", ""),
        ("total", f"{stats.total_seconds:.2f} s", "",
         f"{stats.raw_bytes / 2**20 / max(stats.total_seconds, 1e-9):,.0f} MiB/s"),
    ]
    F, h, w = spec.grid
    title = (f"file_size: {spec.steps} steps x {spec.layers} layers x {spec.groups} groups x {F}x{h}x{w} "
             f"{spec.map_dtype}, {spec.video_frames} frames {spec.video_size[0]}x{spec.video_size[1]}, "
             f"{spec.audio_seconds:g} s audio; one map per chunk, checksums {'on' if spec.checksums else 'off'}")
    C.print_table(title, ["what", "bytes / time", "ratio to raw", "note"], rows, caption=C.describe_machine(facts))
    print(f"ratios: file/raw = {stats.file_bytes / stats.raw_bytes:.4f}, disk/raw = "
          f"{stats.disk_bytes / stats.raw_bytes:.4f}, estimate/file = {stats.estimated_bytes / stats.file_bytes:.4f}; "
          f"map write {1000 * per_step:.0f} ms per captured step")
    return {"spec": asdict(spec), "stats": asdict(stats), "machine": facts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy size (smoke test); numbers mean nothing")
    ap.add_argument("--keep", metavar="PATH", help="write the capture here and keep it (default: a temp dir)")
    ap.add_argument("--no-fsync", action="store_true", help="stop at the page cache (skip the final fsync)")
    ap.add_argument("--out", metavar="JSON", help="also save the numbers as JSON")
    ap.add_argument("--map-dtype", help="map encoding (format.MAP_ENCODINGS); default: the format's default")
    args = ap.parse_args()
    spec = C.QUICK if args.quick else C.REAL
    if args.map_dtype:
        spec = replace(spec, map_dtype=args.map_dtype)
    facts = C.machine_facts()
    with tempfile.TemporaryDirectory(prefix="ovi-attn-bench-") as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "synthetic.h5"
        stats = C.write_synthetic_capture(path, spec, fsync=not args.no_fsync)
        err = check_readback(stats, spec)
        payload = report(stats, spec, facts) | {"max_abs_error": err}
    C.save_json(args.out, payload)


if __name__ == "__main__":
    raise SystemExit(C.main_guard(main))
