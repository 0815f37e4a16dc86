"""Background writer: maps leave the GPU asynchronously and reach the file off the hot path.

The probe calls `put` with small reduced tensors still on the device. On CUDA each one is
copied into pinned host memory with `non_blocking=True` and tagged with an event; the
writer thread waits for the event, then writes. The sampler never waits for the disk,
unless the writer falls more than `max_pending` maps behind (bounded memory).
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from ovi_attn_render.format import CaptureFileWriter, CaptureLayout

_STOP = object()


class AsyncCaptureWriter:
    def __init__(self, path, layout: CaptureLayout, max_pending: int = 4096):
        self.file = CaptureFileWriter(path, layout)
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ovi-attn-writer", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ producer side
    def put(self, var: str, branch: int, step: int, layer: int, values: torch.Tensor) -> None:
        self._raise_if_failed()
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.queue.put(("map", var, branch, step, layer, host, event))
        else:
            self.queue.put(("map", var, branch, step, layer, values.detach(), None))

    def step_done(self, steps_done: int, step_pos: int, timestep: float, sigma: float) -> None:
        """All maps of captured step `step_pos` were put: flush them and advance steps_done."""
        self._raise_if_failed()
        self.queue.put(("step", steps_done, step_pos, float(timestep), float(sigma)))

    def write_clip(self, frames: np.ndarray | None, waveform: np.ndarray | None) -> None:
        self.queue.put(("clip", frames, waveform))

    def set_attrs(self, **attrs) -> None:
        self.queue.put(("attrs", attrs))

    def close(self, status: str = "complete") -> None:
        """Drain the queue, then close the file with the given status."""
        self.queue.put((_STOP, status))
        self.thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the capture writer failed: {self.error}") from self.error

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        f = self.file
        while True:
            item = self.queue.get()
            if item[0] is _STOP:
                try:
                    f.close(item[1])
                except BaseException as e:  # noqa: BLE001 - reported to the producer
                    self.error = self.error or e
                return
            if self.error is not None:
                continue  # keep draining so the producer never blocks forever
            try:
                self._handle(f, item)
            except BaseException as e:  # noqa: BLE001
                self.error = e

    @staticmethod
    def _handle(f: CaptureFileWriter, item) -> None:
        tag = item[0]
        if tag == "map":
            _, var, branch, step, layer, values, event = item
            if event is not None:
                event.synchronize()
            f.write_map(var, branch, step, layer, values.float().numpy() if values.dtype == torch.bfloat16
                        else values.numpy())
        elif tag == "step":
            _, steps_done, step_pos, timestep, sigma = item
            f.set_timestep(step_pos, timestep, sigma)
            f.finish_step(steps_done)
        elif tag == "clip":
            _, frames, waveform = item
            if frames is not None:
                f.write_video(frames)
            if waveform is not None:
                f.write_audio(waveform)
            f.f.flush()
        elif tag == "attrs":
            f.set_attrs(**item[1])
