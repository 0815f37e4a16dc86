"""Ctrl-C and kill during a capture: stop cleanly, or at once on a second signal.

Before the capture file exists, SIGINT or SIGTERM stops at once (nothing to keep). Once it
exists, the first signal only asks: generation stops at the next layer or step boundary
(`check` raises there), the writer flushes and marks the file `interrupted`. A second
signal exits at once with os._exit: no cleanup that could wait on the writer thread or
on HDF5's lock; the file is readable as after a kill -9 (every flush leaves it whole).
"""

from __future__ import annotations

import os
import signal
import threading

from ovi_attn_render.common.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    def __init__(self):
        self.signum: int | None = None
        self.deferred = False  # True once the capture file exists
        self.at_once_note = ""  # what the second signal prints before exiting
        self.now_note = "before the capture file was created; nothing was written"
        self._old: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def defer(self, at_once_note: str) -> None:
        """From now on a first signal is deferred to the next `check`."""
        self.deferred, self.at_once_note = True, at_once_note

    def now(self, note: str) -> None:
        """From now on a signal stops at once again (raises Interrupted saying `note`)."""
        self.deferred, self.now_note = False, note

    def _handle(self, signum, frame) -> None:
        if not self.deferred:
            self.signum = signum
            raise Interrupted(f"{signal.Signals(signum).name} {self.now_note}.", signum)
        if self.signum is not None:  # the second one: leave now
            os.write(2, f"\n{signal.Signals(signum).name} again: exiting at once; {self.at_once_note}\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, f"\n{signal.Signals(signum).name}: stopping at the next layer and keeping the steps "
                    f"written (send it again to exit at once)\n".encode())

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise StopNow at a boundary if a signal asked to stop."""
        if self.signum is not None:
            raise StopNow(self.signum)


class StopNow(Exception):
    """Raised inside generation at the boundary after a deferred signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
