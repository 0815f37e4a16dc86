"""The capture files a viewer serves: opened once at start, reopened when a running capture grows.

HDF5 caches a file's metadata for the life of an open handle, so a reader that keeps one
handle would never see the writer's new `steps_done`. A `Source` therefore reopens its
file when its size or modification time changes (cheap: attributes and coordinates only)
while the capture is not finished. Whether a `running` file's writer lives is decided by
contract.liveness (the check `info` and `render` use) when the file has a heartbeat, else by
how long ago the file was last written.
"""

from __future__ import annotations

import os
import threading
import time

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.liveness import describe_writer
from ovi_attn_render.contract.reader import Capture, open_capture

FINISHED = ("complete",)
STALE_SECONDS = 600.0  # a file without a heartbeat and no write for this long: the run stopped


class Source:
    """One capture file of the command line; `cap` is always a readable, consistent handle."""

    def __init__(self, index: int, path: str):
        self.index = index
        self.given = str(path)  # as typed: what the page's `ovi-attn render` command line shows
        self.path = os.path.abspath(path)
        self.name = os.path.basename(path)
        self.lock = threading.RLock()  # one reader of the handle at a time; reopen swaps it
        self.cap: Capture = open_capture(self.path)  # a damaged or foreign file: the CLI's sentence
        self._stamp = self._file_stamp()
        self.generation = 0  # grows at every reopen; part of every cache key

    def _file_stamp(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_size, st.st_mtime_ns

    def refresh(self) -> bool:
        """Reopen when a not-finished capture's file changed. Returns whether it did."""
        if self.cap.status in FINISHED and not self.cap.partial:
            return False  # a finished file never changes: no lock, no stat
        with self.lock:
            try:
                stamp = self._file_stamp()
            except OSError:
                return False  # gone for a moment (a rename): keep the handle we have
            if stamp == self._stamp:
                return False
            # Close first: HDF5 shares one file object (and its stale metadata cache) between
            # handles of a file that is already open, so a second open would see nothing new.
            self.cap.close()
            for attempt in range(5):
                try:
                    self.cap = open_capture(self.path)
                    break
                except UserError:  # caught mid-write: try again in a moment
                    if attempt == 4:
                        raise
                    time.sleep(0.05)
            self._stamp = stamp
            self.generation += 1
            return True

    def status(self) -> dict:
        """What the page's status line says: complete, running (step k of n) or stopped."""
        cap = self.cap
        total = len(cap.steps)
        done = cap.steps_done
        age = max(0.0, time.time() - self._stamp[1] / 1e9)  # the file's own last write
        if cap.status in FINISHED:
            state, text = "complete", f"complete, {done} steps"
        elif cap.status != "running":
            state, text = "stopped", f"stopped ({cap.status}), {done} of {total} steps"
        elif "heartbeat" in cap.attrs:  # the writer records itself: ask the one liveness check info uses
            alive, said = describe_writer(cap.attrs)
            state = "running" if alive else "stopped"
            text = f"running, step {done} of {total}" if alive else f"{said}, {done} of {total} steps"
        elif age < STALE_SECONDS:  # a file without a heartbeat (format 1): judge by its last write
            state, text = "running", f"running, step {done} of {total}"
        else:
            state, text = "stopped", f"stopped (no write for {age / 60:.0f} min), {done} of {total} steps"
        return {"file": self.index, "state": state, "text": text, "steps_done": done, "steps_total": total,
                "status_attr": cap.status, "seconds_since_write": round(age, 1), "generation": self.generation}

    def close(self) -> None:
        with self.lock:
            self.cap.close()


def open_sources(paths: list[str]) -> list[Source]:
    """Open every file named on the command line; the first bad one stops the start."""
    sources: list[Source] = []
    try:
        for i, p in enumerate(paths):
            sources.append(Source(i, p))
    except UserError:
        for s in sources:
            s.close()
        raise
    return sources
