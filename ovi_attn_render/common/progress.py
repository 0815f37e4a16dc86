"""Progress of long work (capture's denoising, eval's prompts, renders of many frames).

On a terminal: a rich bar. Elsewhere (a log file, a pipe, CI) a bar prints nothing useful
until the end, so instead one plain line goes to stderr every `OVI_ATTN_PROGRESS_SECONDS`
seconds (default 10), and a last line when the work ends:

    denoising: 12/30 steps (40%), 3.1 s elapsed, about 4.6 s left, 360 maps
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_SECONDS = 10.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("OVI_ATTN_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


class Progress:
    """`with Progress("denoising", 30, "steps") as p: p.update(done, maps=n)`.

    console: a rich Console to draw the bar on (its file decides TTY or not); stream: where
    plain lines go (default stderr). transient: remove the bar when done (renders)."""

    def __init__(self, label: str, total: int, unit: str = "steps", *, enabled: bool = True, console=None,
                 stream=None, transient: bool = False):
        self.label, self.total, self.unit, self.enabled = label, int(total), unit, enabled
        self.console, self.transient = console, transient
        self.stream = stream if stream is not None else (console.file if console is not None else sys.stderr)
        self.done, self.fields = 0, {}
        self.bar = None

    def _is_terminal(self) -> bool:
        if self.console is not None:
            return bool(self.console.is_terminal)
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> "Progress":
        if not self.enabled:
            return self
        self.start = self.last_line = time.monotonic()
        self.lines = 0
        if self._is_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self.bar = RichProgress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[extra]}"), TimeRemainingColumn(),
                                    console=self.console or Console(file=self.stream), transient=self.transient)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, extra="")
        return self

    def _extra(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in self.fields.items())

    def line(self) -> str:
        """The plain progress line for the current state."""
        elapsed = time.monotonic() - self.start
        text = f"{self.label}: {self.done}/{self.total} {self.unit}"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {elapsed:.1f} s elapsed"
        if 0 < self.done < self.total:
            text += f", about {elapsed / self.done * (self.total - self.done):.1f} s left"
        return text + (f", {self._extra()}" if self.fields else "")

    def update(self, done: int, **fields) -> None:
        if not self.enabled:
            return
        self.done = int(done)
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, extra=self._extra())
            return
        now = time.monotonic()
        if now - self.last_line >= _interval() and self.done < self.total:
            self._print()
            self.last_line = now

    def advance(self, n: int = 1, **fields) -> None:
        self.update(self.done + n, **fields)

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.lines += 1

    def __exit__(self, *exc) -> bool:
        if not self.enabled:
            return False
        if self.bar is not None:
            self.bar.__exit__(*exc)
        elif exc[0] is None and (self.lines or time.monotonic() - self.start >= _interval()):
            self._print()  # the end, once anything was said (or the work took a while)
        return False
