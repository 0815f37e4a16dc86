"""Background writer: maps leave the GPU asynchronously and reach the file off the hot path.

The probe calls `put` with small reduced tensors still on the device. On CUDA each one is
copied into pinned host memory with `non_blocking=True` and tagged with an event; the
writer thread waits for the event, then writes. The sampler never waits for the disk,
unless the writer falls more than `max_pending` maps behind (bounded memory).

Failure and exit: the thread never raises; it keeps the first error (a full disk, say),
drains the queue so the producer never blocks, and the producer's next call raises
WriterFailed. While idle it flushes a heartbeat every HEARTBEAT_SECONDS, so readers can
tell a live capture from a dead one. `close` joins with a bound and says whether it did.
"""

from __future__ import annotations

import errno
import queue
import threading

import numpy as np
import torch

from ovi_attn_render.common import hooks
from ovi_attn_render.contract.format import CaptureFileWriter, CaptureLayout
from ovi_attn_render.contract.liveness import HEARTBEAT_SECONDS

_STOP = object()


class WriterFailed(RuntimeError):
    """The writer thread hit an error (kept in `.error`); generation must stop."""

    def __init__(self, error: BaseException):
        super().__init__(f"the capture writer failed: {error}")
        self.error = error


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC or a quota, as the OS or HDF5 (whose messages carry the errno text) report it."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


class AsyncCaptureWriter:
    def __init__(self, path, layout: CaptureLayout, max_pending: int = 4096):
        self.file = CaptureFileWriter(path, layout)
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.closed = False  # the file was closed (with the status asked for, if error is None)
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

    def set_query_cell(self, query: int, y: int, x: int) -> None:
        """An adaptive query was found (the probe, during generation): record its cell."""
        self.queue.put(("query", query, y, x))

    def write_clip(self, frames: np.ndarray | None, waveform: np.ndarray | None) -> None:
        self.queue.put(("clip", frames, waveform))

    def set_attrs(self, **attrs) -> None:
        self.queue.put(("attrs", attrs))

    def close(self, status: str = "complete", timeout: float | None = None) -> bool:
        """Drain the queue, then close the file with `status`; wait at most `timeout` seconds.
        Returns whether the thread finished (the file is closed); an error it met on the way
        stays in `.error` (the file then says `failed`, or `failed: disk full`)."""
        try:
            self.queue.put((_STOP, status), timeout=timeout)
        except queue.Full:
            return False
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise WriterFailed(self.error) from self.error

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        f = self.file
        while True:
            try:
                item = self.queue.get(timeout=HEARTBEAT_SECONDS)
            except queue.Empty:  # generation is busy (a long step, decoding): say we are alive
                if self.error is None:
                    try:
                        f.heartbeat()
                    except BaseException as e:  # noqa: BLE001
                        self.error = e
                continue
            if item[0] is _STOP:
                status = item[1]
                if self.error is not None and status == "complete":
                    status = "failed"
                if self.error is not None and is_disk_full(self.error):
                    status = "failed: disk full"
                try:
                    f.close(status)  # in-place attributes: works on a full disk
                except BaseException as e:  # noqa: BLE001 - reported to the producer
                    self.error = self.error or e
                self.closed = True
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
            hooks.at(f"write-step-{steps_done}")
            f.set_timestep(step_pos, timestep, sigma)
            f.finish_step(steps_done)
        elif tag == "clip":
            _, frames, waveform = item
            hooks.at("write-clip")
            if frames is not None:
                f.write_video(frames)
            if waveform is not None:
                f.write_audio(waveform)
            f.heartbeat()
        elif tag == "attrs":
            f.set_attrs(**item[1])
        elif tag == "query":
            f.set_query_cell(*item[1:])
