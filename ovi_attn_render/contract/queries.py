"""Query points as a capture file records them (the `query` and `audio_query` dimensions).

Capture places the prompt file's `queries:` on the token grid (ovi_attn_capture.pipeline.
queries) into these records; the file stores one coordinate variable per field, and the
reader hands them back the same way. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PlacedQuery:
    """A query on the token grid. Adaptive queries have y = x = -1 until they are found."""

    label: str
    tower: str
    pixel_frame: int = -1  # video: the decoded frame asked for
    latent_frame: int = -1
    y: int = -1  # token row / column on the latent grid
    x: int = -1
    pixel_y: float = math.nan  # where the point is in pixels (the cell centre when adaptive)
    pixel_x: float = math.nan
    token: str | None = None
    step: int | None = None
    audio_token: int = -1  # audio: the audio token
    time: float = math.nan  # audio: seconds

    @property
    def adaptive(self) -> bool:
        return self.token is not None


def cell_centre(cell: int, cells: int, pixels: int) -> float:
    """Pixel position of a token cell's centre along one axis."""
    return (cell + 0.5) * pixels / cells
