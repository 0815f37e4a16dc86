"""Sizes as people read them: decimal units everywhere (1 MB = 10^6 bytes, 1 GB = 10^9),
so capture's estimate, its summary and `info` print the same number for one file."""

from __future__ import annotations

_UNITS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def format_bytes(n: float) -> str:
    """2_048_000 -> '2.0 MB'; below 1 kB the exact count ('512 B')."""
    for unit, scale in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} B"
