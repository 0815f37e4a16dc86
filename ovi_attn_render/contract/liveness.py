"""Is the process writing a capture still alive? Told from the file alone (torch-free).

The writer records its host, pid, the pid's start time and a heartbeat (the time of
every flush, at least every HEARTBEAT_SECONDS while it waits). A reader on the same host
checks the pid (and that it is the same process, not a reuse of the number); on another
host only the heartbeat's age can speak.
"""

from __future__ import annotations

import math
import os
import socket
import time

HEARTBEAT_SECONDS = 30.0  # the writer flushes a heartbeat at least this often while alive
STALE_SECONDS = 600.0  # no heartbeat for this long: stopped, even where the pid cannot be checked


def process_start_ticks(pid: int) -> int:
    """When process `pid` started, in clock ticks since boot (Linux /proc); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
    except (OSError, ValueError, IndexError):
        return 0


def process_alive(pid: int, start_ticks: int = 0) -> bool:
    """Whether `pid` runs on this host and, when its start time was recorded, is that process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not start_ticks or process_start_ticks(pid) in (0, start_ticks)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def describe_writer(attrs: dict, now: float | None = None) -> tuple[bool, str]:
    """For a file whose status is `running`: (alive, "running, last write 3 s ago") or
    (False, "stopped without finishing (no write for 10 min; process 1234 on this host is gone)")."""
    now = time.time() if now is None else now
    beat = _number(attrs.get("heartbeat"))
    pid = int(_number(attrs.get("writer_pid")) or 0)
    host = str(attrs.get("writer_host", "") or "")
    age = now - beat if beat else math.inf
    since = f"last write {_ago(age)} ago" if beat else "no heartbeat recorded"
    if host and pid and host == socket.gethostname():
        if process_alive(pid, int(_number(attrs.get("writer_start_ticks")) or 0)):
            return True, f"running, {since}"
        gone = f"process {pid} on this host is gone"
        return False, f"stopped without finishing ({'no write for ' + _ago(age) if beat else since}; {gone})"
    if age > STALE_SECONDS:
        where = f"process {pid} on {host}" if host else "its writer"
        return False, (f"stopped without finishing (no write for {_ago(age)}; {where} cannot be checked "
                       f"from here)" if beat else f"stopped without finishing ({since})")
    return True, f"running on {host or 'another host'}, {since}"


def _number(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0
