"""`ovi-attn render | compare | info`: the Typer layer over reader.py and views.py.

Kept light to import: typer and rich here; numpy, h5py and OpenCV load when a command
runs, matplotlib only in the views that plot.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.common.options import number, whole_number

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

VIEW_HELP = ("steps (default: GIF over steps at one frame), frames, grid, layers, audio, sync, mask (-o x.npz: "
             "the masks as data), diff, sheet (every group side by side, one scale), query (where a query point "
             "looks: GIF over frames, --over steps over steps, or PNG frames x layers), track (query points followed through the clip: MP4)")


# ---------------------------------------------------------------------- output names
def _token_slug(label: str) -> str:
    """A group label as a file-name part: words joined by '-' ("moves left" -> moves-left);
    a label with other characters ("man#2", ",", "<eos>") keeps its letters and digits plus a
    short hash of the exact label, so no two labels share a name."""
    words = str(label).split(" ")
    if all(w and w.isalnum() for w in words):
        return "-".join(words)
    readable = "-".join(x for x in re.split(r"[^0-9A-Za-z]+", "".join(c if c.isalnum() else " " for c in label)) if x)
    return f"{readable or 'tok'}-{hashlib.sha1(str(label).encode()).hexdigest()[:6]}"


def output_name(stems: list[str], c) -> str:
    """`<run>_<view>_<token>_f<frame>[_s<steps>][_l<layers>]...` without the suffix, from the
    canonical options (views.canonical): every option that changes the picture and differs
    from its default is in the name, so distinct pictures get distinct names."""
    parts = ["_vs_".join(stems), c.view]
    if c.tokens:
        parts.append("+".join(_token_slug(t) for t in c.tokens))
    if c.queries:
        parts.append("q" + "+".join(_token_slug(q) for q in c.queries))
    if c.view == "track" and c.track != "soft":
        parts.append(c.track)
    if c.view == "query" and c.over != "frames":
        parts.append(f"over-{c.over}")
    if c.frame is not None:
        parts.append(f"f{c.frame}")
    for flag, value in (("fr", c.frames), ("s", c.steps), ("l", c.layers), ("h", c.heads)):
        if value is not None:
            parts.append(flag + str(value))
    if c.branch != "cond" and c.view != "diff":
        parts.append(c.branch)
    if c.view == "audio" and c.by != "step":
        parts.append(f"by-{c.by}")
    if c.background != "waveform":
        parts.append(f"bg-{c.background}")
    if c.threshold is not None:
        parts.append(f"thr{c.threshold}")
    if c.norm != "global":
        parts.append(f"norm-{c.norm}")
    if c.renorm:
        parts.append("renorm")
    if c.reduce != "mean":
        parts.append(c.reduce)
    if len(c.tokens) > 1 and c.layout != "overlay":
        parts.append(c.layout)
    if c.cmap:
        parts.append("cmap-" + re.sub(r"[^0-9A-Za-z]+", "-", c.cmap))
    if c.alpha != 0.5:
        parts.append(f"a{c.alpha:g}")
    if c.upsample != "nearest":
        parts.append(c.upsample)
    if c.size != 512:
        parts.append(f"px{c.size}")
    if c.fps is not None:
        parts.append(f"fps{c.fps:g}")
    return "_".join(parts)


def output_path(caps, o, out: Optional[Path], fmt: Optional[str], force: bool, allowed: tuple[str, ...]) -> str:
    """The one place that decides where a render is written: `-o file.ext` exactly (a name
    with a suffix is a file, never a folder), else `-o DIR` or the first input's folder plus
    a name made from the run and the canonical selection. Refuses to overwrite without --force."""
    from ovi_attn_render.views import draw
    from ovi_attn_render.views import video as views

    if fmt is not None:
        fmt = fmt.lower().lstrip(".")
        if fmt not in allowed:
            raise UserError(f"--view {o.view} writes {', '.join(allowed)}, not {fmt}; pick one of those.")
    if out is not None and out.suffix and not out.is_dir():
        ext = out.suffix.lower().lstrip(".")
        if ext not in allowed:
            raise UserError(f"-o {out} ends in {out.suffix}, which --view {o.view} does not write; end the name in "
                            f"{' or '.join('.' + a for a in allowed)}, or give a folder without a suffix.")
        if fmt is not None and fmt != ext:
            raise UserError(f"--format {fmt} contradicts the output file {out.name}; drop one of them.")
        path = out
    else:
        folder = Path(out) if out is not None else Path(caps[0].path).resolve().parent
        if out is not None and not folder.exists():
            folder.mkdir(parents=True)
        if not folder.is_dir():
            raise UserError(f"-o {out} is not a folder; give a folder or a file name ending in "
                            f"{' or '.join('.' + a for a in allowed)}.")
        ext = fmt or allowed[0]
        path = folder / (output_name([Path(c.path).stem for c in caps], views.canonical(caps[0], o, ext)) + "." + ext)
    draw.check_output(str(path), force)
    if ext == "npz" and path.with_suffix("").exists() and not force:
        raise UserError(f"{path.with_suffix('')} already exists; pass --force to overwrite its masks or -o to "
                        f"write elsewhere.")
    return str(path)


@contextmanager
def _in_file(cap, compare: bool):
    """compare: say which of the two files a problem is in."""
    try:
        yield
    except UserError as e:
        if not compare:
            raise
        raise UserError(f"in {Path(cap.path).name}: {e}") from None


# ---------------------------------------------------------------------- render / compare
def _print_result(drawn, notes_done: set) -> None:
    for note in drawn.notes:
        if note not in notes_done:
            err.print(f"[yellow]note:[/] {note}")
            notes_done.add(note)


def _compare_pictures(paths: list[str], titles: list[str], out: str, fps: float) -> None:
    """Side by side, frame by frame, two pictures already written (PNG or GIF)."""
    import imageio.v3 as iio
    import numpy as np

    from ovi_attn_render.views import draw

    def load(p: str) -> np.ndarray:  # [N, H, W, 3]
        a = iio.imread(p, index=None) if p.endswith(".gif") else iio.imread(p)[None]
        return a[..., :3] if a.shape[-1] in (3, 4) else np.repeat(a[..., None], 3, -1)

    a, b = (load(p) for p in paths)
    count = max(len(a), len(b))

    def frame_at(i: int) -> np.ndarray:
        sides = []
        for arr, title in zip((a, b), titles):
            img = arr[min(i, len(arr) - 1)]
            sides.append(draw.vstack([draw.caption_bar([title], img.shape[1]), img]))
        return draw.hstack(sides, gap=6)

    if out.endswith(".gif"):
        draw.write_gif(out, frame_at, count, fps)
    else:
        draw.write_png(out, frame_at(count - 1))


def render_file(cap, opts, target: str):
    """views.render into `target`, atomically (a temporary name beside it, renamed when
    whole: a kill or an error never leaves a torn or 0-byte picture, --force never loses
    the old one), with HDF5 read errors as one sentence naming the file."""
    from ovi_attn_render.common import atomic
    from ovi_attn_render.views import video as views
    from ovi_attn_render.contract.reader import reading

    with reading(cap.path), atomic.replacing(target) as tmp:
        drawn = views.render(cap, opts, tmp)
        # Side files a view names after its output (mask: `<out>_area.png`) take the final name too.
        tmp_stem, target_stem = os.path.splitext(tmp)[0], os.path.splitext(target)[0]
        paths = []
        for p in drawn.paths:
            if p != tmp and p.startswith(tmp_stem):
                final = target_stem + p[len(tmp_stem):]
                if os.path.isdir(p):  # the mask export's frame PNGs: earlier frames go, a user's files stay
                    from ovi_attn_render.views.masks import move_export_folder

                    move_export_folder(p, final)
                else:
                    os.replace(p, final)
                p = final
            paths.append(target if p == tmp else p)
    drawn.paths = paths
    return drawn


def _say_state(cap) -> None:
    """One line for a capture whose status says running: is its writer alive or dead?"""
    if cap.status == "running":
        err.print(f"[yellow]note:[/] {Path(cap.path).name} is {cap.state()}.")


def run_render(paths: list[Path], opts, out: Optional[Path], fmt: Optional[str], force: bool) -> list[str]:
    """Render one capture, or two side by side (compare). Returns the paths written."""
    from ovi_attn_render.common import atomic
    from ovi_attn_render.views import video as views
    from ovi_attn_render.contract.reader import open_capture, reading

    views.check_options(opts)
    allowed = views.VIEW_FORMATS[opts.view]
    if len(paths) == 2:
        allowed = tuple(x for x in allowed if x in ("gif", "png"))
        if not allowed:
            raise UserError(f"compare cannot draw --view {opts.view}; compare writes GIF or PNG views.")
    caps = [open_capture(p) for p in paths]
    compare = len(caps) == 2
    try:
        for cap in caps:  # unknown tokens or frames in either file, before anything is drawn
            with _in_file(cap, compare):
                views.canonical(cap, opts, (fmt or allowed[0]).lower().lstrip("."))
        target = output_path(caps, opts, out, fmt, force, allowed)
        notes: set = set()
        for cap in caps:
            _say_state(cap)
        if len(caps) == 1:
            drawn = render_file(caps[0], opts, target)
            _print_result(drawn, notes)
            for p in drawn.paths:
                console.print(f"[green]wrote[/] {p}", soft_wrap=True)  # a path is never wrapped
            console.print(f"  drew {drawn.summary}")
            return drawn.paths
        ext = os.path.splitext(target)[1]
        with tempfile.TemporaryDirectory(prefix="ovi-attn-compare-") as tmp:
            sides = []
            for k, cap in enumerate(caps):
                with _in_file(cap, compare), reading(cap.path):
                    drawn = views.render(cap, opts, os.path.join(tmp, f"side{k}{ext}"))
                _print_result(drawn, notes)
                console.print(f"  {Path(cap.path).name}: drew {drawn.summary}")
                sides.append(drawn.paths[0])
            with atomic.replacing(target) as part:
                _compare_pictures(sides, [Path(c.path).name for c in caps], part, opts.fps or 8.0)
        console.print(f"[green]wrote[/] {target}", soft_wrap=True)
        return [target]
    finally:
        for c in caps:
            c.close()


def _make_render_command(compare: bool):
    """The same options for `render` (one capture) and `compare` (two)."""

    def command(
        paths: List[Path] = typer.Argument(..., metavar="A.h5 B.h5" if compare else "CAPTURE.h5",
                                           help="Two capture files." if compare else "The capture file."),
        view: str = typer.Option("steps", "--view", "-v", help=VIEW_HELP),
        token: Optional[List[str]] = typer.Option(None, "--token", "-t",
                                                  help="Token group, as capture selects it: man, man#2, #5, #3-4 "
                                                       "or a label; repeat for several."),
        frame: Optional[int] = typer.Option(None, "--frame", "-f", metavar="<int>", parser=whole_number("--frame", "60"),
                                            help="Pixel frame of the decoded video, -1 the last (default: the middle one)."),
        frames: Optional[str] = typer.Option(None, "--frames", help="Pixel frames, e.g. 0,60,120, 0:121:4 or every 4."),
        steps: Optional[str] = typer.Option(None, "--steps", help="Sampler steps, e.g. 0:50:5, 10-19, -1 or every 5."),
        layers: Optional[str] = typer.Option(None, "--layers", help="Blocks, e.g. 10-19,25 or -1."),
        heads: Optional[str] = typer.Option(None, "--heads", help="Heads (captures with heads: all)."),
        branch: str = typer.Option("cond", "--branch", help="cond or uncond."),
        reduce: str = typer.Option("mean", "--reduce", help="mean or max over layers and heads."),
        norm: str = typer.Option("global", "--norm", help="global, step, frame or absolute colour scaling."),
        renorm: bool = typer.Option(False, "--renorm", help="Divide by the mass on real tokens (1 - <eos> - <pad>)."),
        cmap: Optional[str] = typer.Option(None, "--cmap", help="Colormap (default inferno)."),
        alpha: float = typer.Option(0.5, "--alpha", metavar="<float>", parser=number("--alpha", "0.5"),
                                    help="Overlay opacity, 0..1."),
        upsample: str = typer.Option("nearest", "--upsample", help="nearest or bilinear."),
        layout: str = typer.Option("overlay", "--layout", help="Several tokens: overlay or side."),
        threshold: Optional[str] = typer.Option(None, "--threshold", help="Mask view: 0..1 or otsu (default)."),
        size: int = typer.Option(512, "--size", metavar="<int>", parser=whole_number("--size", "512"),
                                 help="Longest side of the drawn frame, pixels (sheet: each panel half of it)."),
        fps: Optional[float] = typer.Option(None, "--fps", metavar="<float>", parser=number("--fps", "8"), help="Animation rate (default 8 over steps, clip fps over frames)."),
        by: str = typer.Option("step", "--by", help="Audio view: one strip per step or per layer."),
        background: str = typer.Option("waveform", "--background", help="Audio view: waveform or spectrogram."),
        query: Optional[List[str]] = typer.Option(None, "--query", "-q",
                                                  help="Query point label (views query, track); repeat for several."),
        track: str = typer.Option("soft", "--track", help="Track view: soft (soft-argmax) or argmax."),
        over: str = typer.Option("frames", "--over", help="Query view's GIF: over the clip's frames or over the "
                                                          "sampler steps (at --frame, default the query's own)."),
        out: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder, or exact file (.gif/.mp4/.png/.svg)."),
        fmt: Optional[str] = typer.Option(None, "--format", help="gif, mp4, png or svg (default depends on the view)."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    ) -> None:
        from ovi_attn_render.views.video import Options

        want = 2 if compare else 1
        if len(paths) != want:
            raise UserError(f"{'compare' if compare else 'render'} takes {want} capture file"
                            f"{'s' if want > 1 else ''}, got {len(paths)}.")
        if fps is not None and not 0 < fps <= 120:
            raise UserError(f"--fps {fps:g} is out of range; give a rate between 0 and 120 frames per second.")
        if size is not None and size < 16:
            raise UserError(f"--size {size} is too small; give the longest side in pixels, 16 or more.")
        opts = Options(view=view, tokens=list(token or []), frame=frame, frames=frames, steps=steps, layers=layers,
                       heads=heads, branch=branch, reduce=reduce, norm=norm, renorm=renorm, cmap=cmap, alpha=alpha,
                       upsample=upsample, layout=layout, threshold=threshold, size=size, fps=fps, by=by,
                       background=background, queries=list(query or []), track=track, over=over)
        run_render(paths, opts, out, fmt, force)

    command.__doc__ = ("Draw the same view of two runs side by side (different prompts, seeds or models)."
                       if compare else
                       "Draw attention maps of a capture: GIF over steps by default, or another --view.")
    return command


# ---------------------------------------------------------------------- info
def _seconds(v) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "not finished"
    return f"{x:.1f} s" if x == x else "not finished"  # NaN until the capture finishes


def info(path: Path = typer.Argument(..., help="The capture file (.h5)."),
         tokens: bool = typer.Option(True, "--tokens/--no-tokens", help="Print the token table.")) -> None:
    """Print what a capture holds: prompt, model, sizes, status, captured maps, tokens."""
    from rich.markup import escape
    from rich.table import Table

    from ovi_attn_render.contract.reader import open_capture, reading
    from ovi_attn_render.contract.selection import describe_values
    from ovi_attn_render.common.units import format_bytes

    with open_capture(path) as cap, reading(cap.path):
        a = cap.attrs
        F, h, w = cap.grid
        status = cap.state() + (f" ({cap.steps_done} of {len(cap.steps)} captured steps written)" if cap.partial
                                else f" ({cap.steps_done} steps)")
        colour = "green" if not cap.partial else "yellow"
        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        rows = [
            ("file", f"{escape(cap.path)} ({format_bytes(os.path.getsize(cap.path))})"),
            ("status", f"[{colour}]{status}[/]"),
            ("format", _describe_format(cap)),
            ("prompt", str(a.get("prompt", ""))),
            ("model", f"{a.get('model', '?')}  mode {a.get('mode', '?')}  solver {a.get('solver', '?')}  "
                      f"shift {a.get('shift', '?')}"),
            ("seed", str(a.get("seed", "?"))),
            ("guidance", f"video {a.get('video_guidance_scale', '?')}  audio {a.get('audio_guidance_scale', '?')}  "
                         f"slg layer {a.get('slg_layer', '?')}"),
            ("video", f"{cap.num_pixel_frames} frames {cap.frame_size[0]}x{cap.frame_size[1]} at {cap.fps:g} fps; "
                      f"token grid {F}x{h}x{w} (latent frames x rows x cols)"),
            ("audio", f"{cap.audio_tokens} tokens x {1000 * cap.samples_per_token / cap.sample_rate:g} ms at "
                      f"{cap.sample_rate} Hz"),
            ("captured", f"{', '.join(cap.variables()) or 'nothing'}; {a.get('map_dtype', '?')}; heads "
                         f"{cap.heads_mode}; branches {', '.join(cap.branches)}"),
            ("steps", f"{describe_values(cap.steps)} of {a.get('num_steps', '?')} (readable "
                      f"{describe_values(cap.readable_steps)})"),
            ("layers", f"{describe_values(cap.layers)} of {a.get('num_layers', '?')}"),
            ("groups", ", ".join(f"{g}" for g in cap.groups)),
            ("generation", _seconds(a.get("generation_seconds"))),
            ("started", f"{a.get('started_at', '?')}  finished {a.get('finished_at', '') or '-'}"),
        ]
        if cap.queries:
            rows.insert(-2, ("queries", "; ".join(_describe_query(q) for q in cap.queries)))
        cut = int(a.get("text_tokens_cut", 0) or 0)
        if cut:
            rows.insert(3, ("prompt cut", f"[yellow]the last {cut} tokens were past the text encoder's limit; "
                                          f"the model never saw them[/]"))
        if cap.partial:
            rows.append(("note", "[yellow]partial capture: render draws the steps written; the decoded clip "
                                 "is missing until the capture finishes.[/]"))
        for k, v in rows:
            t.add_row(k, v)
        console.print(t)
        if tokens:
            from ovi_attn_render.contract.token_groups import render_token_table

            render_token_table(cap.token_table(), console, title="token table (positive prompt)")


def _describe_query(q) -> str:
    """One query point in words: 'face (frame 60, cell 13,40)', 'man (token man at step 10: cell 5,7)'."""
    if q.tower == "audio":
        return f"{q.label} (audio {q.time:g} s, token {q.audio_token})"
    cell = f"cell {q.y},{q.x}" if q.y >= 0 else "not found yet"
    if q.token:
        return f"{q.label} (peak of {q.token} at frame {q.pixel_frame}, step {q.step}: {cell})"
    return f"{q.label} (frame {q.pixel_frame}, {cell})"


def _describe_format(cap) -> str:
    """Which format version the file is, and how its maps are stored."""
    a = cap.attrs
    if cap.format_version < 2:
        return f"version {cap.format_version} (HDF5, {a.get('map_dtype', '?')} maps, no checksums)"
    checks = "Fletcher-32 checksums" if a.get("checksums") == "fletcher32" else "no checksums"
    return f"version {cap.format_version} (netCDF-4, {a.get('Conventions', '?')}; {a.get('map_dtype', '?')} maps, {checks})"


def register(app: typer.Typer) -> None:
    """Add render, compare and info to the `ovi-attn` app."""
    app.command("render")(_make_render_command(compare=False))
    app.command("compare")(_make_render_command(compare=True))
    app.command("info")(info)
