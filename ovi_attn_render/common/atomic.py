"""Files appear whole or not at all: write under a temporary name beside the target, then
rename over it (POSIX rename is atomic within a folder), so a kill at any moment leaves
either the old file or the new one at the path, never a torn one."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ovi_attn_render.common import hooks


def temp_name(path: str | os.PathLike, tag: str = "tmp") -> str:
    """`dir/.name.<pid>.<tag><ext>` beside `path`: hidden, the writer's pid in it, and the same
    suffix, since writers pick their format from it (GIF, MP4, PNG, HDF5)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{os.getpid()}.{tag}{ext}")


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on any
    failure (or exception, KeyboardInterrupt included) it is removed and `path` is untouched."""
    remove_stale(path)
    tmp = temp_name(path)
    try:
        yield tmp
        hooks.at("before-replace")
        os.replace(tmp, os.fspath(path))
    except BaseException:
        discard(tmp)
        raise


def remove_stale(path: str | os.PathLike) -> None:
    """Temporary files beside `path` left by runs whose process is gone (a kill -9 leaves them)."""
    from ovi_attn_render.contract.liveness import process_alive

    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    stem, ext = os.path.splitext(name)
    for tmp in Path(folder).glob(f".{stem}.*{ext}"):
        parts = tmp.name[len(stem) + 2:].split(".")
        if len(parts) >= 2 and parts[0].isdigit() and not process_alive(int(parts[0])):
            discard(tmp)


def discard(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
