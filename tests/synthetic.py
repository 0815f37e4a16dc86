"""Synthetic captures for the render tests, written through the real CaptureFileWriter.

The decoded video is plain grey (128) so any colour in a picture comes from the overlay,
and each token's map is hot on one known token cell of one latent frame, so a test can
say exactly which pixels must light up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ovi_attn_render.contract.format import DEFAULT_MAP_ENCODING, CaptureFileWriter, CaptureLayout
from ovi_attn_render.contract.geometry import pixel_frame_count
from ovi_attn_render.contract.token_groups import Token

GREY = 128
BASE = 0.01  # every map's value outside its hot cell


@dataclass
class Synth:
    grid: tuple[int, int, int] = (3, 8, 8)  # 9 pixel frames; 32x32 pixel cells at 256x256
    size: tuple[int, int] = (256, 256)
    steps: int = 4
    layers: tuple[int, ...] = (0, 1, 2)
    branches: tuple[str, ...] = ("cond",)
    # token -> (latent frame, y, x) of its hot cell
    hot: dict = field(default_factory=lambda: {"man": (1, 2, 5), "park": (1, 6, 1), "man#2": (2, 0, 0)})
    steps_done: int | None = None  # None: complete
    kinds: tuple[str, ...] = ("text_video", "text_audio", "video_audio", "audio_video")
    audio_tokens: int = 12
    heads: int = 1
    map_dtype: str = DEFAULT_MAP_ENCODING
    queries: tuple = ()  # PlacedQuery records; a video query's map is hot on query_path(q, f) in frame f


def query_path(q, f: int, w: int = 8) -> tuple[int, int]:
    """The cell a synthetic video query's attention sits on in latent frame f: one column to
    the right per frame from where the query is."""
    return q.y, (q.x + f) % w


def example_queries() -> tuple:
    """Two video query points and an audio one, as the query tests and the viewer's use them."""
    from ovi_attn_render.contract.queries import PlacedQuery

    return (PlacedQuery("hand", "video", 4, 1, 2, 1, 80.0, 48.0), PlacedQuery("dog", "video", 0, 0, 5, 3, 176.0, 112.0),
            PlacedQuery("bark", "audio", audio_token=4, time=0.128))


def hot_value(step: int) -> float:
    """The hot cell grows with the step, so global and per-step norms differ."""
    return 0.1 * (step + 1)


def synthetic_layout(s: Synth) -> CaptureLayout:
    """The layout write_synthetic creates its file with."""
    F, h, w = s.grid
    words = ["a", "man", "in", "a", "park", "man"]
    groups = ["man", "park", "man#2", "<eos>", "<pad>"]
    kinds = ["word", "word", "word", "eos", "pad"]
    T = len(words) + 1
    members = np.zeros((len(groups), T), np.uint8)
    members[0, 1] = members[1, 4] = members[2, 5] = members[3, 6] = 1
    text = " ".join(words)
    tokens, pos = [], 0
    for i, wd in enumerate(words):
        tokens.append(Token(i, 100 + i, "▁" + wd, pos, pos + len(wd), wd, i))
        pos += len(wd) + 1
    tokens.append(Token(len(words), 1, "</s>", len(text), len(text), "", -1))
    T_pix = pixel_frame_count(F)
    La = s.audio_tokens
    return CaptureLayout(
        grid=s.grid, audio_tokens=La, steps=list(range(s.steps)), layers=list(s.layers), groups=groups,
        group_kinds=kinds, group_members=members, tokens=tokens, kinds=list(s.kinds), branches=s.branches,
        heads=s.heads, map_dtype=s.map_dtype, num_steps=s.steps, num_layers=max(s.layers) + 1,
        timesteps=[999 - 250 * i for i in range(s.steps)], sigmas=[1 - 0.25 * i for i in range(s.steps)],
        video_frames=T_pix, video_size=s.size, audio_samples=La * 512, fps=24.0,
        attrs={"prompt": text, "model": "synthetic", "seed": 7, "generation_seconds": 1.5}, queries=list(s.queries),
    )


def write_synthetic(path, s: Synth | None = None) -> Synth:
    s = s or Synth()
    F, h, w = s.grid
    layout = synthetic_layout(s)
    groups = list(layout.groups)
    T_pix, La = layout.video_frames, s.audio_tokens
    wr = CaptureFileWriter(path, layout)
    done = s.steps if s.steps_done is None else s.steps_done
    for b, branch in enumerate(s.branches):
        for st in range(done):
            for li, _ in enumerate(s.layers):
                tv = np.full((len(groups), s.heads, F, h, w), BASE, np.float32)
                tv[3] = 0.2  # <eos>
                tv[4] = 0.3  # <pad>
                for g, name in enumerate(groups):
                    if name in s.hot:
                        f, y, x = s.hot[name]
                        # uncond: half as hot, so cond - uncond is positive on the cell
                        tv[g, :, f, y, x] = hot_value(st) * (1.0 if branch == "cond" else 0.5)
                wr.write_map("text_video", b, st, li, tv)
                if "text_audio" in s.kinds:
                    ta = np.full((len(groups), s.heads, La), BASE, np.float32)
                    ta[0, :, 3] = hot_value(st)  # 'man' hot on audio token 3
                    wr.write_map("text_audio", b, st, li, ta)
                if "video_audio" in s.kinds:
                    va = np.full((s.heads, F, La), 0.01, np.float32)
                    for f in range(F):
                        va[:, f, min(La - 1, int(f * La / F))] = 1.0
                    wr.write_map("video_audio", b, st, li, va)
                if "audio_video" in s.kinds:
                    av = np.full((s.heads, La, F), 1.0 / F, np.float32)
                    wr.write_map("audio_video", b, st, li, av)
                    wr.write_map("audio_video_spatial", b, st, li, np.full((s.heads, F, h, w), 0.5, np.float32))
                _write_queries(wr, s, b, st, li)
            wr.set_timestep(st, 999 - 250 * st, 1 - 0.25 * st)
            wr.finish_step(st + 1)
    if s.steps_done is None:
        wr.write_video(np.full((T_pix, *s.size, 3), GREY, np.uint8))
        t = np.arange(La * 512) / 16000
        wr.write_audio(0.5 * np.sin(2 * np.pi * 440 * t))
        wr.close("complete")
    else:
        wr.f.close()  # killed mid-run: status stays running
    return s


def _write_queries(wr, s: Synth, b: int, st: int, li: int) -> None:
    """Query maps that sum to 1 over the clip: most of the mass on the query's path."""
    F, h, w = s.grid
    video = [q for q in s.queries if q.tower == "video"]
    audio = [q for q in s.queries if q.tower == "audio"]
    if video:
        vs = np.full((len(video), s.heads, F, h, w), 0.2 / (F * h * w), np.float32)
        for i, q in enumerate(video):
            for f in range(F):
                y, x = query_path(q, f, w)
                vs[i, :, f, y, x] += 0.8 / F
        wr.write_map("video_self", b, st, li, vs)
    if audio:
        La = s.audio_tokens
        a = np.full((len(audio), s.heads, La), 0.4 / La, np.float32)
        for i, q in enumerate(audio):
            a[i, :, q.audio_token] += 0.5
            # a smaller bump that moves with the step and layer (never onto the query's own
            # token), so a reader that mixes up steps or layers reads other numbers
            a[i, :, (q.audio_token + 1 + (st + 2 * li) % (La - 1)) % La] += 0.1
        wr.write_map("audio_self", b, st, li, a)


def cell_box(y: int, x: int, size=(256, 256), grid_hw=(8, 8)) -> tuple[slice, slice]:
    """Pixel rows/cols of token cell (y, x) in a frame drawn at `size`."""
    ch, cw = size[0] // grid_hw[0], size[1] // grid_hw[1]
    return slice(y * ch, (y + 1) * ch), slice(x * cw, (x + 1) * cw)
