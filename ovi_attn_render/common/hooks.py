"""Test hooks: let a test stop a real process at a chosen phase (then signal or kill it), or
inject a full disk there. Off unless OVI_ATTN_TEST_HOOK is set; costs one dict lookup.

    OVI_ATTN_TEST_HOOK="pause@created,enospc@step-3"   OVI_ATTN_TEST_HOOK_DIR=/tmp/x

`pause@P`: at phase P, create DIR/P and wait (up to 10 min) until DIR/P.go exists.
`enospc@P`: at phase P, raise OSError(ENOSPC) as a full disk would.
Phases: loaded (weights loaded, no file yet), checked (size and free space checked, just
before creation), created (file under its temporary name),
appeared (file at its path), step-N (after captured step N was queued), write-step-N (the
writer thread, before it flushes step N), clip (before the
decoded clip is written), complete (file closed complete), before-replace (a finished
temporary file about to be renamed into place: render outputs, the clip MP4, forced captures).
"""

from __future__ import annotations

import errno
import os
import time

_SPEC = os.environ.get("OVI_ATTN_TEST_HOOK", "")
_ACTIONS = dict(reversed(item.split("@", 1)) for item in _SPEC.split(",") if "@" in item) if _SPEC else {}


def at(phase: str) -> None:
    if not _ACTIONS:
        return
    action = _ACTIONS.get(phase)
    if action == "pause":
        folder = os.environ.get("OVI_ATTN_TEST_HOOK_DIR", ".")
        open(os.path.join(folder, phase), "w").close()
        deadline = time.time() + 600
        while not os.path.exists(os.path.join(folder, phase + ".go")) and time.time() < deadline:
            time.sleep(0.01)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {phase})")
