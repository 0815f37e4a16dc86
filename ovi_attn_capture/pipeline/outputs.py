"""Where a capture writes, so that nothing already on disk is lost.

- The capture file appears at its path whole: its skeleton is created and flushed under a
  hidden temporary name in the same folder, then renamed (a kill before that leaves no
  file at the path, a kill after leaves one that opens).
- `--force` onto an existing capture writes the new one beside it as `<name>.partial.h5`
  and renames it over the old file only once it is complete: an interrupted or killed
  forced run leaves the old file as it was.
- The clip MP4 goes beside the capture with its name (`run.h5` -> `run.mp4`), refuses to
  overwrite without `--force` like the capture, and is written under a temporary name.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from ovi_attn_render.common import atomic

from ovi_attn_render.common import hooks
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.format import CaptureLayout

PARTIAL_SUFFIX = ".partial"


@dataclass
class OutputPlan:
    final: Path  # the capture's path
    writing: Path  # where it is written while it runs: `final`, or the partial file beside it
    clip: Path | None  # the clip MP4, None with --no-mp4

    @property
    def replaces(self) -> bool:
        """The new capture replaces an existing file only when it completes."""
        return self.writing != self.final


def plan_outputs(output: Path, force: bool, mp4: bool) -> OutputPlan:
    output = Path(output)
    if not output.parent.exists():
        raise UserError(f"the output folder {output.parent} does not exist; create it or choose another path with -o.")
    if output.suffix.lower() == ".mp4":
        raise UserError(f"the capture output {output} ends in .mp4; give an .h5 path (the clip MP4 is written beside it).")
    clip = output.with_suffix(".mp4") if mp4 else None
    for path in (output, clip):
        if path is not None and path.exists() and not force:
            raise UserError(f"{path} already exists; pass --force to overwrite it (the old file stays until the new "
                            f"capture completes) or choose another path with -o.")
    if output.is_dir():
        raise UserError(f"{output} is a folder; give the capture's file name with -o.")
    writing = output.with_name(output.stem + PARTIAL_SUFFIX + output.suffix) if output.exists() else output
    for path in (output, writing, clip):
        if path is not None:
            atomic.remove_stale(path)
    return OutputPlan(output, writing, clip)


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(f"the capture needs about {human(needed)} but {folder.resolve()} has {human(free)} free; "
                        f"free some space, capture fewer steps, layers or tokens, or write elsewhere with -o.")


def create_capture_file(path: Path, layout: CaptureLayout):
    """The capture's writer, its file created and flushed under a temporary name and then
    renamed to `path`. A full disk here is one sentence and leaves nothing behind."""
    from ovi_attn_capture.pipeline.writer import AsyncCaptureWriter, is_disk_full

    tmp = atomic.temp_name(path, "creating")
    try:
        writer = AsyncCaptureWriter(tmp, layout)
    except BaseException as e:
        atomic.discard(tmp)
        if is_disk_full(e):
            raise UserError(f"the disk filled up while creating {path} (it takes about "
                            f"{human(_estimate(layout))}, {human(shutil.disk_usage(path.parent).free)} were free "
                            f"after the attempt); free some space or write elsewhere with -o.") from None
        if isinstance(e, OSError):
            raise UserError(f"cannot create {path} ({str(e).splitlines()[0]}); check that its folder is writable "
                            f"or write elsewhere with -o.") from None
        raise
    try:
        hooks.at("created")
        os.replace(tmp, path)
        writer.file.path = str(path)
    except BaseException:
        writer.close("failed", timeout=30)
        atomic.discard(tmp)
        raise
    hooks.at("appeared")
    return writer


def _estimate(layout: CaptureLayout) -> int:
    from ovi_attn_render.contract.format import estimate_bytes

    return estimate_bytes(layout)


def human(n: float) -> str:
    """Decimal units, as everywhere (ovi_attn_render.common.units)."""
    from ovi_attn_render.common.units import format_bytes

    return format_bytes(n)


def shell_command(*words) -> str:
    """A command line to paste: every word shell-quoted."""
    return " ".join(shlex.quote(str(w)) for w in words)


def render_hint(path: Path, groups, *more: str) -> str:
    """`ovi-attn render PATH --token WORD ...`, shell-quoted, for the first real token group."""
    token = next((g for g in groups if not g.startswith("<")), groups[0] if groups else None)
    words = ["ovi-attn", "render", path] + (["--token", token] if token else []) + list(more)
    return shell_command(*words)
