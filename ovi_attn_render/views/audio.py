"""Audio views of a capture: text-to-audio strips (`--view audio`) and audio/video
alignment from the fusion maps (`--view sync`).

Array in, picture out: the reader hands these functions plain numpy arrays and they
write a PNG or SVG. Time is always in seconds, from the model's own grids:
- audio token l covers waveform samples [spt*l, spt*(l+1)) (spt = 512 at 16 kHz: 32 ms);
- latent frame f covers pixel frames 4f-3 .. 4f at 24 fps (frame 0 alone), so it spans
  [(4f-3)/24, (4f+1)/24) s for f >= 1 and [0, 1/24) s for f = 0.

matplotlib is imported inside the drawing functions and figures are drawn by Agg
outside pyplot (see `agg_figure`), so importing this module stays cheap, needs no
display and never switches a notebook's backend. Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import (FPS, PIXEL_FRAME_STRIDE, SAMPLE_RATE, SAMPLES_PER_TOKEN, audio_token_edges,
                                               latent_frame_edges)

FIGURE_SUFFIXES = (".png", ".svg")  # what savefig writes for these views
PROBABILITY_LABEL = "attention probability"
NOT_COMPUTED_COLOUR = "#808080"  # NaN cells: a map never computed (e.g. SLG-skipped layer)


# Time grids (audio_token_edges, latent_frame_edges): contract/geometry.py.

def agg_figure(**kwargs):
    """A matplotlib Figure with its own Agg canvas, outside pyplot: no global backend
    switch, nothing to close, safe in notebooks and threads."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _centres(edges: np.ndarray) -> np.ndarray:
    return 0.5 * (edges[:-1] + edges[1:])


# ---------------------------------------------------------------------------------------
# Spectrogram (numpy STFT)


def _mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """[n_mels, n_fft//2 + 1] triangular filters evenly spaced on the HTK mel scale from
    0 Hz to Nyquist, and their centre frequencies in Hz."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bin_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # [n_freq]
    corner_hz = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))  # [n_mels+2]
    lower, centre, upper = corner_hz[:-2, None], corner_hz[1:-1, None], corner_hz[2:, None]
    rising = (bin_hz[None] - lower) / (centre - lower)
    falling = (upper - bin_hz[None]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None), corner_hz[1:-1]


def spectrogram(
    waveform: np.ndarray,
    sample_rate: int,
    n_fft: int = 512,
    hop: int = 128,
    n_mels: int | None = None,
    top_db: float = 80.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectrogram in dB relative to its loudest cell, clipped at -top_db.

    Returns (db [freq, time], times [time] in s at frame centres, freqs [freq] in Hz).
    Frames are centred (the signal is zero-padded by n_fft//2 on both sides) and
    Hann-windowed. With n_mels, the power goes through an HTK-mel triangular filterbank
    and `freqs` are the filters' centre frequencies. A silent clip is -top_db everywhere.
    """
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim == 2:  # [channels, samples]: mix down
        x = x.mean(axis=0)
    x = np.pad(x.reshape(-1), n_fft // 2)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # [T, n_fft]
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann: the frames overlap-add flat
    power = np.abs(np.fft.rfft(frames * window, axis=1)).T ** 2  # [n_freq, T]
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    if n_mels:
        bank, freqs = _mel_filterbank(n_mels, n_fft, sample_rate)
        power = bank @ power  # [n_mels, T]
    times = np.arange(power.shape[1]) * hop / sample_rate

    tiny = 1e-20
    ref = power.max(initial=0.0)
    if ref <= tiny:
        return np.full(power.shape, -top_db), times, freqs
    db = 10.0 * np.log10(np.maximum(power, tiny) / ref)
    return np.maximum(db, -top_db), times, freqs


# ---------------------------------------------------------------------------------------
# --view audio: text-to-audio strips


def normalise_strips(strips: np.ndarray, norm: str) -> tuple[np.ndarray, float, float, str]:
    """Colour scaling for the strips: (image, vmin, vmax, colour bar label).

    global:   one scale for all rows, 0 .. the largest probability shown;
    row:      each row divided by its own maximum (compare shapes, not levels);
    absolute: the probability scale 0 .. 1 (compare across files).
    NaN (never computed) stays NaN and is drawn grey.
    """
    image = np.asarray(strips, dtype=np.float64)
    if norm == "global":
        top = np.nanmax(image) if np.isfinite(image).any() else np.nan
        return image, 0.0, float(top) if np.isfinite(top) and top > 0 else 1.0, PROBABILITY_LABEL
    if norm == "absolute":
        return image, 0.0, 1.0, PROBABILITY_LABEL
    if norm == "row":
        finite = np.where(np.isfinite(image), image, -np.inf)
        row_max = finite.max(axis=1, keepdims=True)  # [R, 1]; -inf for an all-NaN row
        scale = np.where(row_max > 0, row_max, 1.0)
        return image / scale, 0.0, 1.0, PROBABILITY_LABEL + " / row max"
    raise UserError(f"unknown --norm '{norm}'; use global, row or absolute.")


def _check_figure_suffix(out_path: Path, view: str) -> None:
    if out_path.suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(
            f"--view {view} cannot write '{out_path.suffix or out_path.name}' files; "
            f"give an output path ending in {' or '.join(FIGURE_SUFFIXES)}."
        )


def _waveform_envelope(waveform: np.ndarray, sample_rate: int, columns: int = 2000):
    """(times, low, high): per-column min and max of the waveform, so a 5 s clip draws as
    2000 vertical spans instead of 80,000 points (small SVGs, same picture)."""
    x = np.asarray(waveform, dtype=np.float64).reshape(-1)
    per = max(1, int(np.ceil(x.size / columns)))
    n = x.size // per * per
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    blocks = x[:n].reshape(-1, per)  # [columns, per]
    times = (np.arange(blocks.shape[0]) + 0.5) * per / sample_rate
    return times, blocks.min(axis=1), blocks.max(axis=1)


def _colours_with_grey(cmap: str):
    import matplotlib

    return matplotlib.colormaps[cmap].with_extremes(bad=NOT_COMPUTED_COLOUR)


def audio_strip_figure(
    waveform: np.ndarray | None,
    sample_rate: int,
    strips: np.ndarray,
    strip_labels: list[str],
    *,
    samples_per_token: int = SAMPLES_PER_TOKEN,
    title: str = "",
    background: str = "waveform",
    cmap: str = "inferno",
    norm: str = "global",
    caption: str = "",
):
    """The figure behind `render_audio_strip` (returned open, for tests and notebooks).

    strips: [R, La] probabilities, one row per step or layer; strip_labels: R names.
    Returns (fig, strip_ax, image_shown [R, La], extent (left, right, bottom, top) in
    seconds / row units).
    """
    strips = np.atleast_2d(np.asarray(strips, dtype=np.float64))  # [R, La]
    rows, num_tokens = strips.shape
    if len(strip_labels) != rows:
        raise ValueError(f"{len(strip_labels)} strip labels for {rows} strips")
    if background not in ("waveform", "spectrogram"):
        raise UserError(f"unknown audio background '{background}'; use waveform or spectrogram.")
    image, vmin, vmax, bar_label = normalise_strips(strips, norm)

    edges = audio_token_edges(num_tokens, sample_rate, samples_per_token)
    has_audio = waveform is not None and np.asarray(waveform).size > 0
    clip_end = np.asarray(waveform).reshape(-1).size / sample_rate if has_audio else 0.0
    t_end = max(edges[-1], clip_end)

    strip_height = min(max(1.0, 0.22 * rows), 8.0)  # inches: readable rows, bounded page
    fig = agg_figure(figsize=(11, 1.9 + strip_height + 1.0), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.9, strip_height], width_ratios=[1, 0.02])
    top_ax = fig.add_subplot(grid[0, 0])
    strip_ax = fig.add_subplot(grid[1, 0], sharex=top_ax)

    if not has_audio:
        top_ax.text(0.5, 0.5, "no decoded audio in this file", ha="center", va="center",
                    transform=top_ax.transAxes, color="0.4")
        top_ax.set_yticks([])
    elif background == "waveform":
        t, low, high = _waveform_envelope(waveform, sample_rate)
        top_ax.fill_between(t, low, high, color="0.25", linewidth=0.0)
        top_ax.set_ylabel("waveform")
        top_ax.set_ylim(-1.05, 1.05)
    else:
        db, times, freqs = spectrogram(waveform, sample_rate)
        hop_s = times[1] - times[0] if times.size > 1 else 0.0
        bin_hz = freqs[1] - freqs[0]
        top_ax.imshow(db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                      extent=(times[0] - hop_s / 2, times[-1] + hop_s / 2,
                              freqs[0] - bin_hz / 2, freqs[-1] + bin_hz / 2))
        top_ax.set_ylabel("frequency (Hz)")
    top_ax.tick_params(labelbottom=False)

    extent = (float(edges[0]), float(edges[-1]), rows - 0.5, -0.5)
    shown = strip_ax.imshow(image, aspect="auto", interpolation="nearest", extent=extent,
                            cmap=_colours_with_grey(cmap), vmin=vmin, vmax=vmax)
    tick_every = max(1, int(np.ceil(rows / 24)))  # at most ~24 labels stay readable
    strip_ax.set_yticks(range(0, rows, tick_every), [strip_labels[i] for i in range(0, rows, tick_every)])
    strip_ax.set_xlim(0.0, t_end)
    strip_ax.set_xlabel(f"time (s); one column = one audio token ({1000 * samples_per_token / sample_rate:g} ms)")
    fig.colorbar(shown, cax=fig.add_subplot(grid[:, 1]), label=bar_label)
    if title:
        fig.suptitle(title)
    if caption:
        fig.supxlabel(caption, fontsize=8, color="0.3")
    return fig, strip_ax, image, extent


def render_audio_strip(
    waveform: np.ndarray | None,
    sample_rate: int,
    strips: np.ndarray,
    strip_labels: list[str],
    *,
    out_path: str | Path,
    dpi: int = 120,
    **figure_options,
) -> Path:
    """Write the text-to-audio view: waveform (or spectrogram) on top, one heat strip per
    row of `strips` [R, La] below, sharing the time axis in seconds. PNG or SVG by suffix.
    `waveform` may be None or empty (a partial file): the top panel says so.
    figure_options: those of `audio_strip_figure` (title, background, cmap, norm, ...)."""
    out_path = Path(out_path)
    _check_figure_suffix(out_path, "audio")
    fig, *_ = audio_strip_figure(waveform, sample_rate, strips, strip_labels, **figure_options)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    return out_path


# ---------------------------------------------------------------------------------------
# --view sync: audio/video alignment from the fusion maps


def alignment_offset(
    video_audio: np.ndarray,
    *,
    fps: float = FPS,
    stride: int = PIXEL_FRAME_STRIDE,
    sample_rate: int = SAMPLE_RATE,
    samples_per_token: int = SAMPLES_PER_TOKEN,
) -> float:
    """Attention-weighted mean of (audio time - video time) in seconds.

    video_audio: [F, La] non-negative weights over (latent frame, audio token) pairs; each
    pair contributes weight * (centre of token l - centre of frame f). With `video_audio`
    rows (each a distribution) every frame counts equally; pass `audio_video.T` to let
    every audio token count equally. Positive: the attention looks at later audio than
    the frame shows. NaN entries are ignored; NaN if there is no weight at all.
    """
    weights = np.asarray(video_audio, dtype=np.float64)  # [F, La]
    frames, tokens = weights.shape
    t_video = _centres(latent_frame_edges(frames, fps, stride))  # [F]
    t_audio = _centres(audio_token_edges(tokens, sample_rate, samples_per_token))  # [La]
    offset = t_audio[None, :] - t_video[:, None]  # [F, La]
    ok = np.isfinite(weights)
    total = weights[ok].sum()
    if total <= 0:
        return float("nan")
    return float((weights[ok] * offset[ok]).sum() / total)


@dataclass
class SyncPanel:
    """One heat map of the sync view, as drawn."""

    name: str  # "video queries" or "audio queries"
    image: np.ndarray  # [F, La] what is coloured: row f = latent frame f, column l = audio token l
    audio_edges: np.ndarray  # [La + 1] x cell edges in seconds
    video_edges: np.ndarray  # [F + 1] y cell edges in seconds
    offset_s: float  # alignment_offset of this panel
    ax: object  # the matplotlib Axes


def _frame_axis_functions(video_edges: np.ndarray):
    """(seconds -> latent frame position, inverse) for a secondary axis: frame f's cell
    [edge_f, edge_f+1) maps to [f - 0.5, f + 0.5), piecewise linearly."""
    index_edges = np.arange(video_edges.size) - 0.5
    return (lambda t: np.interp(t, video_edges, index_edges),
            lambda p: np.interp(p, index_edges, video_edges))


def sync_figure(
    video_audio: np.ndarray | None,
    audio_video: np.ndarray | None,
    *,
    fps: float = FPS,
    stride: int = PIXEL_FRAME_STRIDE,
    sample_rate: int = SAMPLE_RATE,
    samples_per_token: int = SAMPLES_PER_TOKEN,
    title: str = "",
    cmap: str = "inferno",
):
    """The figure behind `render_sync` (returned open): (fig, [SyncPanel, ...]).

    Both axes are in seconds: x = audio time (token cells), y = video time (latent frame
    cells; a right-hand axis numbers the latent frames). The dashed line is audio time =
    video time, the alignment a synchronised clip should show.
    """
    panels_in = []
    if video_audio is not None:
        panels_in.append(("video queries", "each latent frame's attention over audio tokens (rows sum to 1)",
                          np.asarray(video_audio, dtype=np.float64)))
    if audio_video is not None:
        panels_in.append(("audio queries", "each audio token's attention over latent frames (columns sum to 1)",
                          np.asarray(audio_video, dtype=np.float64).T))
    if not panels_in:
        raise UserError("--view sync needs fusion maps, but this file has neither video_audio nor audio_video; "
                        "capture with kinds video_audio or audio_video.")

    fig = agg_figure(figsize=(6.2 * len(panels_in), 5.6), layout="constrained")
    axes = fig.subplots(1, len(panels_in), squeeze=False)
    colours = _colours_with_grey(cmap)
    panels: list[SyncPanel] = []
    for ax, (name, subtitle, image) in zip(axes[0], panels_in):
        frames, tokens = image.shape
        audio_edges = audio_token_edges(tokens, sample_rate, samples_per_token)
        video_edges = latent_frame_edges(frames, fps, stride)
        finite = image[np.isfinite(image)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        mesh = ax.pcolormesh(audio_edges, video_edges, np.ma.masked_invalid(image), cmap=colours,
                             vmin=0.0, vmax=vmax, shading="flat", rasterized=True)
        t_end = max(audio_edges[-1], video_edges[-1])
        ax.plot([0.0, t_end], [0.0, t_end], linestyle="--", color="#39d0ff", linewidth=1.2,
                label="audio time = video time")
        ax.set_xlim(0.0, audio_edges[-1])
        ax.set_ylim(0.0, video_edges[-1])
        ax.set_xlabel("audio time (s)")
        ax.set_ylabel("video time (s)")
        frame_axis = ax.secondary_yaxis("right", functions=_frame_axis_functions(video_edges))
        frame_axis.set_ylabel("latent frame")
        frame_axis.set_yticks(range(0, frames, max(1, frames // 10)))

        offset = alignment_offset(image, fps=fps, stride=stride, sample_rate=sample_rate,
                                  samples_per_token=samples_per_token)
        ax.set_title(f"{name}: {subtitle}\nmean offset audio - video: {1000 * offset:+.0f} ms", fontsize=9)
        ax.legend(loc="upper left", fontsize=8, framealpha=0.6)
        fig.colorbar(mesh, ax=ax, label=PROBABILITY_LABEL, location="bottom", shrink=0.8)
        panels.append(SyncPanel(name, image, audio_edges, video_edges, offset, ax))

    if title:
        fig.suptitle(title)
    fig.supxlabel(
        f"Axes in seconds. Audio token l spans [{samples_per_token} l, {samples_per_token} (l+1)) samples at "
        f"{sample_rate / 1000:g} kHz; latent frame f spans pixel frames {stride}f-{stride - 1}..{stride}f at "
        f"{fps:g} fps (frame 0 alone). Offset = attention-weighted mean of (token centre - frame centre).",
        fontsize=7, color="0.3")
    return fig, panels


def render_sync(
    video_audio: np.ndarray | None,
    audio_video: np.ndarray | None,
    *,
    out_path: str | Path,
    dpi: int = 120,
    **figure_options,
) -> Path:
    """Write the sync view: video_audio [F, La] and/or audio_video [La, F] as heat maps of
    video time (y) against audio time (x), the diagonal audio time = video time dashed,
    each panel titled with its alignment_offset. PNG or SVG by suffix.
    figure_options: those of `sync_figure` (fps, stride, sample_rate, title, cmap, ...)."""
    out_path = Path(out_path)
    _check_figure_suffix(out_path, "sync")
    fig, _ = sync_figure(video_audio, audio_video, **figure_options)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    return out_path
