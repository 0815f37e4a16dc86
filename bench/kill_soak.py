"""Kill captures with SIGKILL at random moments over all phases and check what is left.

One reference capture of the toy model runs to completion first (its duration sets the
range of kill times, its maps are what every killed run's completed steps must equal).
Then each trial starts `ovi-attn capture` in its own process and kills it -9 after a
random delay: during start-up and model load, in the first milliseconds after the file
appears (every fifth trial waits for the file, then kills within 50 ms), during steps,
while the clip and the MP4 are written, or after it finished. Every third trial is a
forced capture onto a copy of the reference file.

Checks, printed as counts:
- readable or absent: the output path holds no file, or one that opens in h5py, xarray
  and ovi-attn's reader (and so does a forced run's partial file, if any);
- completed steps intact: every step below steps_done equals the reference bit for bit;
- old file intact under --force: the old file is byte for byte what it was, unless the
  run completed and replaced it with a complete capture.

    .venv/bin/python bench/kill_soak.py --trials 25
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT = """\
prompt: "a red circle moves left while a blue bar stays still. <AUDCAP>the circle beeps<ENDAUDCAP>"
video_negative_prompt: ""
audio_negative_prompt: ""
model: toy
seed: 5
steps: {steps}
capture:
  tokens: [circle, bar, red]
  kinds: [text_video, text_audio, video_audio, audio_video]
"""


@dataclass
class Trial:
    index: int
    forced: bool
    delay: float  # seconds after start (or after the file appeared, for `after_appear`)
    after_appear: bool
    phase: str = ""  # what the kill hit, as read from the files it left
    readable: bool = False
    steps_intact: bool | None = None  # None: no file with steps to compare
    old_intact: bool | None = None  # forced trials only
    note: str = ""


def capture_command(prompt: Path, out: Path, force: bool) -> list[str]:
    cmd = [sys.executable, "-m", "ovi_attn_render.cli", "capture", str(prompt), "-o", str(out), "--no-progress"]
    return cmd + (["--force"] if force else [])


def environment() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OVI_ATTN_TEST_HOOK", None)
    return env


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status_of(path: Path) -> tuple[str, int]:
    with h5py.File(path, "r", locking=False) as f:
        s = f.attrs["status"]
        return (s.decode() if isinstance(s, bytes) else str(s)), int(f.attrs["steps_done"])


def opens_everywhere(path: Path) -> int:
    """steps_done of a file that opens in h5py, xarray and our reader; raises otherwise."""
    import xarray as xr

    from ovi_attn_render.contract.reader import open_capture

    done = status_of(path)[1]
    xr.open_dataset(path, engine="h5netcdf").close()
    with open_capture(path) as cap:
        if cap.steps_done != done:
            raise AssertionError(f"reader sees {cap.steps_done} steps, h5py {done}")
        if done:
            cap.text_video(0, steps=list(range(done)))
    return done


def steps_equal(path: Path, ref: Path, done: int) -> bool:
    from ovi_attn_render.contract.kinds import MAP_KINDS

    with h5py.File(path, "r", locking=False) as f, h5py.File(ref, "r") as r:
        for var in MAP_KINDS:  # every map variable, in file order
            if var not in r:
                continue
            sl = (slice(None),) * MAP_KINDS[var].dims.index("step") + (slice(0, done),)
            if not np.array_equal(f[var][sl], r[var][sl], equal_nan=True):
                return False
    return True


def run_reference(folder: Path, prompt: Path) -> tuple[Path, float, float]:
    """A complete capture; returns (file, seconds until the file appeared, total seconds)."""
    out = folder / "reference.h5"
    t0 = time.time()
    proc = subprocess.Popen(capture_command(prompt, out, False), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    appeared = None
    while proc.poll() is None:
        if appeared is None and out.exists():
            appeared = time.time() - t0
        time.sleep(0.005)
    total = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the reference capture failed (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
    return out, appeared if appeared is not None else total / 2, total


def run_trial(t: Trial, folder: Path, prompt: Path, ref: Path, steps: int) -> Trial:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "run.h5"
    partial = folder / "run.partial.h5"
    old = None
    if t.forced:
        shutil.copy(ref, out)
        old = digest(out)
    proc = subprocess.Popen(capture_command(prompt, out, t.forced), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if t.after_appear:
        watch = partial if t.forced else out
        deadline = time.time() + 600
        while not watch.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)
    time.sleep(t.delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        checked = []
        for path in (out, partial):
            if path.exists():
                checked.append((path, opens_everywhere(path)))
        t.readable = True
    except Exception as e:  # noqa: BLE001 - what the soak counts
        t.readable, t.note = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return t
    new = [(p, d) for p, d in checked if not (t.forced and p == out and digest(p) == old)]
    if new:
        t.steps_intact = all(steps_equal(p, ref, d) for p, d in new)
    if t.forced:
        same = digest(out) == old if out.exists() else False
        replaced = out.exists() and not same and status_of(out) == ("complete", steps)
        t.old_intact = same or replaced
    t.phase = describe_phase(out, partial, t.forced, old, steps)
    return t


def describe_phase(out: Path, partial: Path, forced: bool, old: str | None, steps: int) -> str:
    path = partial if forced and partial.exists() else out
    if forced and not partial.exists() and out.exists() and digest(out) == old:
        return "before the file (old kept)"
    if not path.exists():
        return "before the file"
    status, done = status_of(path)
    if status == "complete":
        return "after completion" + (" (+mp4)" if out.with_suffix(".mp4").exists() else "")
    if done == 0:
        return "file, no step yet"
    return "during steps" if done < steps else "all steps, clip pending"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=25)
    ap.add_argument("--steps", type=int, default=6, help="sampler steps of the toy capture")
    ap.add_argument("--jobs", type=int, default=2, help="trials at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ovi-attn-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        prompt = work / "toy.yaml"
        prompt.write_text(PROMPT.format(steps=args.steps))
        ref, appeared, total = run_reference(work, prompt)
        print(f"reference capture: file appeared after {appeared:.1f} s, done after {total:.1f} s "
              f"({args.steps} steps); killing at random moments in 0..{1.1 * total:.1f} s")
        trials = []
        for i in range(args.trials):
            after_appear = i % 5 == 4
            delay = rng.uniform(0, 0.05) if after_appear else rng.uniform(0, 1.1 * total)
            trials.append(Trial(i, forced=i % 3 == 2, delay=delay, after_appear=after_appear))
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda t: run_trial(t, work / f"trial{t.index:02d}", prompt, ref, args.steps),
                                 trials))
        for t in done:
            when = f"+{t.delay * 1000:.0f} ms after the file appeared" if t.after_appear else f"at {t.delay:.1f} s"
            print(f"  trial {t.index:2d}{' --force' if t.forced else '        '} killed {when:<32} "
                  f"{t.phase:<28} {'ok' if t.readable and t.steps_intact is not False and t.old_intact is not False else 'FAIL'}"
                  f" {t.note}")
        readable = sum(t.readable for t in done)
        with_steps = [t for t in done if t.steps_intact is not None]
        forced = [t for t in done if t.forced]
        print(f"readable or absent: {readable}/{len(done)}")
        print(f"completed steps intact: {sum(t.steps_intact for t in with_steps)}/{len(with_steps)}")
        replaced = sum(t.phase.startswith("after completion") for t in forced)
        print(f"old file intact under --force: {sum(bool(t.old_intact) for t in forced)}/{len(forced)} "
              f"({replaced} of them had completed and replaced it with the new capture)")
        failed = readable < len(done) or any(t.steps_intact is False for t in done) or \
            any(t.old_intact is False for t in forced)
        if failed:
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
