"""Clip files: the decoded video (and its audio track) written as an MP4.

Shared by capture (the clip beside the capture file) and render (the animated views), so it
lives below both: PyAV only, imported when a file is written.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ovi_attn_render.contract.geometry import SAMPLE_RATE


def write_mp4(path: str, frame_at: Callable[[int], np.ndarray], count: int, fps: float,
              audio: np.ndarray | None = None, sample_rate: int = SAMPLE_RATE) -> None:
    """H.264 (yuv420p) MP4, with an AAC track when audio (float32 mono) is given."""
    import av
    from fractions import Fraction

    first = frame_at(0)
    H, W = first.shape[:2]
    H2, W2 = H + H % 2, W + W % 2  # yuv420p needs even sizes
    with av.open(path, "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(round(fps * 1000), 1000))
        vs.width, vs.height, vs.pix_fmt = W2, H2, "yuv420p"
        vs.options = {"crf": "20", "preset": "veryfast"}
        aus = out.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
        for i in range(count):
            rgb = first if i == 0 else frame_at(i)
            if (H2, W2) != (H, W):
                rgb = np.pad(rgb, ((0, H2 - H), (0, W2 - W), (0, 0)))
            for pkt in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if aus is not None:
            a = np.ascontiguousarray(np.clip(audio, -1, 1).astype(np.float32)[None, :])
            af = av.AudioFrame.from_ndarray(a, format="fltp", layout="mono")
            af.sample_rate = sample_rate
            for pkt in aus.encode(af):
                out.mux(pkt)
            for pkt in aus.encode():
                out.mux(pkt)
