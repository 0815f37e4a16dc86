"""How fast `ovi-attn view` answers on a capture of real size, beside `ovi-attn render`.

Writes the synthetic capture of bench/render_latency.py (released 960x960_5s size, 1.6 GB,
through the real CaptureFileWriter), starts the viewer as its own process
(`python -m ovi_attn_render.cli view FILE --no-browser --port 0`) and drives it:

- server: wall time of the real HTTP routes for slider moves (a new step, a new layer),
  new frames and tokens, a clicked patch, the mini-grid; p50 and p95 over random moves;
- browser (Debian's chromium through Playwright, when both are there): first meaningful
  paint (server up -> the page's first map drawn; file evicted from the page cache
  first, then again warm in a fresh server) and the time a slider move takes to draw in
  the page (set -> canvas updated, measured inside the page), p50 and p95;
- the server's peak RSS (VmHWM) and the bytes it read (rchar) over the whole session;
- the CLI beside it: `ovi-attn render` (GIF over the steps) and `--view grid`, own processes.

    .venv/bin/python bench/view_latency.py               # real size
    .venv/bin/python bench/view_latency.py --quick       # toy size, smoke test
    .venv/bin/python bench/view_latency.py --file X.h5   # reuse a capture (render_latency --keep)
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass

import _common as C

from ovi_attn_render.viewer.process import CHROMIUM, CHROMIUM_ARGS, ViewerProcess

TOKEN = "man"
TARGETS = {"first paint s": 1.5, "slider p95 ms (server)": 100.0, "slider p95 ms (browser)": 200.0,
           "peak RSS MiB": 500.0}


@dataclass
class Timing:
    name: str
    count: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    target_ms: float | None


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def timing(name: str, seconds: list[float], target_ms: float | None = None) -> Timing:
    ms = [1000 * s for s in seconds]
    return Timing(name, len(ms), percentile(ms, 50), percentile(ms, 95), max(ms), target_ms)


def proc_value(pid: int, file: str, key: str) -> int:
    for line in open(f"/proc/{pid}/{file}"):
        if line.startswith(key):
            return int(line.split()[1])
    raise C.BenchFailure(f"no {key} in /proc/{pid}/{file}")


def timed_get(server: ViewerProcess, path: str, params) -> float:
    t0 = time.perf_counter()
    status, _, body = server.get(path, params)
    dt = time.perf_counter() - t0
    if status != 200:
        raise C.BenchFailure(f"{path} {params} answered {status}: {body[:200]!r}")
    return dt


def server_moves(server: ViewerProcess, spec: C.SyntheticSpec, frame: int, rounds: int, rng: random.Random) -> list:
    """Random slider moves through the HTTP API, the way the page asks for them."""
    base = {"token": TOKEN, "frame": frame}
    timed_get(server, "/api/map", base)  # the page's first request: fills the token's stack
    steps = [timed_get(server, "/api/map", {**base, "step": rng.randrange(spec.steps)}) for _ in range(rounds)]
    layers = [timed_get(server, "/api/map", {**base, "step": rng.randrange(spec.steps),
                                             "layers": str(rng.randrange(spec.layers))}) for _ in range(rounds)]
    ranges = []
    for _ in range(rounds):
        a = rng.randrange(spec.layers)
        ranges.append(timed_get(server, "/api/map", {**base, "layers": f"{a}-{min(spec.layers - 1, a + 5)}"}))
    n_frames = max(2, rounds // 4)
    F = spec.grid[0]
    frames = [timed_get(server, "/api/map", {**base, "frame": min(spec.video_frames - 1, 4 * (1 + (k * 7) % (F - 1)))})
              for k in range(n_frames)]
    words = spec.words
    tokens = [timed_get(server, "/api/map", {**base, "token": words[(k + 1) % len(words)]}) for k in range(n_frames)]
    frame_png = [timed_get(server, "/api/frame", {"frame": rng.randrange(spec.video_frames)}) for _ in range(n_frames)]
    h, w = spec.grid[1:]
    patches = [timed_get(server, "/api/patch", {**base, "y": rng.randrange(h), "x": rng.randrange(w)})
               for _ in range(max(2, rounds // 8))]
    grid = [timed_get(server, "/api/grid", base) for _ in range(3)]
    return [timing("new step", steps, TARGETS["slider p95 ms (server)"]),
            timing("new layer (one)", layers, TARGETS["slider p95 ms (server)"]),
            timing("new layer range", ranges, TARGETS["slider p95 ms (server)"]),
            timing("new latent frame (reads S x L maps)", frames), timing("new token (reads S x L maps)", tokens),
            timing("decoded frame PNG", frame_png), timing("clicked patch (G x S x L cells)", patches),
            timing("layers x steps grid PNG", grid)]


def browser_available() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is missing"


def first_paint(browser, h5: str, cold: bool) -> tuple[float, float, float, ViewerProcess, object]:
    """(server start s, server up -> first map drawn s, in-page navigation start -> drawn s,
    server, page): a fresh server each time; the browser tab exists before the server starts."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto("about:blank")
    if cold:
        C.drop_from_page_cache(h5)
    server = ViewerProcess([h5])
    start_s = server.t_up - server.t_start
    page.goto(server.url)
    page.wait_for_function("window.ovi && window.ovi.painted", timeout=60000, polling=5)
    painted = time.perf_counter() - server.t_up
    in_page = page.evaluate("ovi.paintedAt") / 1000  # performance.now() counts from navigation start
    if errors:
        raise C.BenchFailure(f"the page logged errors: {errors[:3]}")
    return start_s, painted, in_page, server, page


def browser_moves(page, spec: C.SyntheticSpec, rounds: int, seed: int) -> list[Timing]:
    """Slider moves drawn in the page: ovi.set() to the canvas updated, timed inside the page."""
    script = """async ([rounds, steps, layers, seed]) => {
        let x = seed; const rnd = (n) => { x = (x * 1103515245 + 12345) % 2147483648; return x % n; };
        const out = {step: [], layer: []};
        await ovi.set({layerMode: "all"});
        for (let i = 0; i < rounds; i++) {
            let t0 = performance.now(); await ovi.set({step: rnd(steps)}); out.step.push(performance.now() - t0);
            t0 = performance.now(); await ovi.set({layerMode: "one", layer: rnd(layers)}); out.layer.push(performance.now() - t0);
        }
        return out;
    }"""
    got = page.evaluate(script, [rounds, spec.steps, spec.layers, seed])
    target = TARGETS["slider p95 ms (browser)"]
    return [timing("browser: new step drawn", [v / 1000 for v in got["step"]], target),
            timing("browser: new layer drawn", [v / 1000 for v in got["layer"]], target)]


def cli_times(h5: str, frame: int, tmp: str) -> list[tuple[str, float]]:
    out = []
    for name, args in (("render GIF over steps", ["render", h5, "--token", TOKEN, "--frame", str(frame)]),
                       ("render --view grid", ["render", h5, "--view", "grid", "--token", TOKEN, "--frame", str(frame)])):
        run = C.check_child(C.run_module_child("ovi_attn_render.cli", [*args, "--force", "-o", tmp],
                                               os.path.join(tmp, "peak")), name)
        out.append((name, run.seconds))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy size, few moves (smoke test)")
    ap.add_argument("--file", help="an existing synthetic capture (render_latency.py --keep) to reuse")
    ap.add_argument("--rounds", type=int, default=40, help="random moves per kind")
    ap.add_argument("--no-browser", action="store_true", help="HTTP API only")
    ap.add_argument("--out", metavar="JSON", help="also save the numbers as JSON")
    args = ap.parse_args()
    spec = C.QUICK if args.quick else C.REAL
    rounds = 6 if args.quick else max(4, args.rounds)
    rng = random.Random(0)
    facts = C.machine_facts()
    no_browser = "--no-browser" if args.no_browser else browser_available()
    with tempfile.TemporaryDirectory(prefix="ovi-attn-bench-") as tmp:
        h5 = args.file
        if not h5:
            h5 = os.path.join(tmp, "synthetic_960x960_5s.h5")
            print(f"writing a synthetic capture to {h5} ...", flush=True)
            C.write_synthetic_capture(h5, spec)
        frame = spec.video_frames // 2
        paints, browser_rows, rss, read = [], [], None, None
        if no_browser is None:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for cold in (True, False):
                    print(f"first paint ({'cold' if cold else 'warm'}) ...", flush=True)
                    start_s, paint_s, in_page_s, server, page = first_paint(browser, h5, cold)
                    paints.append(("cold" if cold else "warm", start_s, paint_s, in_page_s))
                    if cold:
                        page.close()
                        server.stop()
                        continue
                    try:
                        rchar0 = proc_value(server.proc.pid, "io", "rchar")
                        print("browser slider moves ...", flush=True)
                        browser_rows = browser_moves(page, spec, rounds, 7)
                        print("server slider moves ...", flush=True)
                        server_rows = server_moves(server, spec, frame, rounds, rng)
                        rss = proc_value(server.proc.pid, "status", "VmHWM") * 1024
                        read = proc_value(server.proc.pid, "io", "rchar") - rchar0
                    finally:
                        page.close()
                        server.stop()
                browser.close()
        else:
            print(f"no browser ({no_browser}): HTTP API only", flush=True)
            with ViewerProcess([h5]) as server:
                rchar0 = proc_value(server.proc.pid, "io", "rchar")
                server_rows = server_moves(server, spec, frame, rounds, rng)
                rss = proc_value(server.proc.pid, "status", "VmHWM") * 1024
                read = proc_value(server.proc.pid, "io", "rchar") - rchar0
        print("CLI render beside it ...", flush=True)
        cli = cli_times(h5, frame, tmp)
        file_bytes = os.path.getsize(h5)
    rows = [(t.name, str(t.count), f"{t.p50_ms:.1f}", f"{t.p95_ms:.1f}", f"{t.max_ms:.1f}",
             "-" if t.target_ms is None else f"{t.target_ms:g}",
             "-" if t.target_ms is None else C.verdict(t.p95_ms, t.target_ms)) for t in server_rows + browser_rows]
    F, h, w = spec.grid
    C.print_table(f"view_latency: {spec.steps} steps x {spec.layers} layers x {spec.groups} groups x {F}x{h}x{w} fp16, "
                  f"{spec.video_frames} frames {spec.video_size[0]}x{spec.video_size[1]}; file {C.human_bytes(file_bytes)}",
                  ["request", "n", "p50 ms", "p95 ms", "max ms", "target p95 ms", "vs target"], rows,
                  caption=C.describe_machine(facts))
    summary = []
    for kind, start_s, paint_s, in_page_s in paints:
        summary.append((f"first meaningful paint ({kind} page cache)", f"{paint_s:.2f} s",
                        f"{TARGETS['first paint s']:g} s", C.verdict(paint_s, TARGETS["first paint s"]),
                        f"server up -> map drawn; {in_page_s:.2f} s of it in the page (navigation -> drawn); "
                        f"server start {start_s:.2f} s before it"))
    if rss is not None:
        summary.append(("server peak RSS (VmHWM)", C.mib(rss), "500 MiB", C.verdict(rss / 2**20, 500.0), ""))
        summary.append(("bytes the server read (rchar)", C.human_bytes(read), "-", "-",
                        f"{read / file_bytes:.3f} of the file"))
    for name, seconds in cli:
        summary.append((f"CLI: {name} (own process)", f"{seconds:.2f} s", "-", "-", "start-up included"))
    C.print_table("view vs render", ["what", "value", "target", "vs target", "note"], summary)
    step = next(t for t in server_rows if t.name == "new step")
    print("ratios: " + "; ".join(
        [f"server new-step p95 {step.p95_ms:.1f} ms / 100 ms = {step.p95_ms / 100:.2f}"]
        + [f"{t.name} p95 {t.p95_ms:.1f} ms / 200 ms = {t.p95_ms / 200:.2f}" for t in browser_rows]
        + [f"first paint {kind} {p:.2f} s / 1.5 s = {p / 1.5:.2f}" for kind, _, p, _ in paints]
        + [f"CLI {name} {sec:.2f} s / server new step {step.p50_ms / 1000:.3f} s = {sec / max(step.p50_ms / 1000, 1e-6):.0f}x"
           for name, sec in cli]))
    C.save_json(args.out, {"spec": asdict(spec), "server": [asdict(t) for t in server_rows],
                           "browser": [asdict(t) for t in browser_rows], "first_paint": paints, "peak_rss": rss,
                           "bytes_read": read, "cli": cli, "machine": facts, "browser_missing": no_browser})


if __name__ == "__main__":
    raise SystemExit(C.main_guard(main))
