"""The one registry of map kinds: what each map variable of a capture file holds.

A user captures *kinds* (`kinds: [text_video, audio_video]` in a prompt file); each kind
writes one or more *map variables* (audio_video writes the temporal `audio_video` map and
the spatial `audio_video_spatial` map). Everything the writer, the size estimate, the
reader and the docs need to know about a variable lives in its `MapKind` row, so a new
kind is one more row (a self-attention kind, say, adds a `query` dim to its `dims`).

Torch-free: capture and render import it alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MapKind:
    """One map variable of the capture file."""

    name: str  # the variable's name in the file
    kind: str  # the capture kind (as users name it) that writes this variable
    dims: tuple[str, ...]  # the variable's dims in the file, outermost first
    value_dims: tuple[str, ...]  # dims of the values capture hands to write_map for one (branch, step, layer)
    chunk_trailing: int  # how many trailing dims one chunk spans (1 per chunk for the rest)
    description: str  # the variable's CF long_name
    value_max: float | None = 1.0  # largest value (probabilities: 1); None: no fixed range to pack into
    query_tower: str | None = None  # self-attention of query points of this tower: written when the prompt
                                    # file lists such `queries:`, not chosen through capture.kinds

    def __post_init__(self):
        per_write = {"branch", "step", "layer"}  # the position write_map is given
        if set(self.value_dims) != set(self.dims) - per_write:
            raise ValueError(f"map kind {self.name}: value_dims {self.value_dims} are not its dims {self.dims} "
                             f"less branch, step and layer")
        if not 1 <= self.chunk_trailing <= len(self.dims):
            raise ValueError(f"map kind {self.name}: chunk_trailing {self.chunk_trailing} is out of range")


# One token's maps at one latent frame come first (token, frame outside step and layer) so
# that render's commonest read, a token at a frame across steps and layers, walks adjacent
# chunks of HDF5's chunk index instead of one index node per map. One chunk holds one 2-D
# map (one latent frame of one token, step, layer, head, branch).
_ROWS = (
    MapKind("text_video", "text_video",
            dims=("branch", "token", "frame", "step", "layer", "head", "y", "x"),
            value_dims=("token", "head", "frame", "y", "x"), chunk_trailing=2,
            description="softmax probability each video token puts on the token group (sum over the group's keys)"),
    MapKind("text_audio", "text_audio",
            dims=("branch", "token", "step", "layer", "head", "audio_time"),
            value_dims=("token", "head", "audio_time"), chunk_trailing=1,
            description="softmax probability each audio token puts on the token group"),
    MapKind("video_audio", "video_audio",
            dims=("branch", "step", "layer", "head", "frame", "audio_time"),
            value_dims=("head", "frame", "audio_time"), chunk_trailing=2,
            description="for each video latent frame, its attention over audio tokens (mean over the frame's "
                        "spatial tokens)"),
    MapKind("audio_video", "audio_video",
            dims=("branch", "step", "layer", "head", "audio_time", "frame"),
            value_dims=("head", "audio_time", "frame"), chunk_trailing=2,
            description="for each audio token, its attention mass on each video latent frame (sum over spatial "
                        "tokens)"),
    # Sums the attention of all audio tokens (up to La), so it has no fixed range to pack into.
    MapKind("audio_video_spatial", "audio_video",
            dims=("branch", "frame", "step", "layer", "head", "y", "x"),
            value_dims=("head", "frame", "y", "x"), chunk_trailing=2,
            description="where the audio looks: attention of all audio tokens summed, per video token",
            value_max=None),
    # Self-attention rows of query points: one chunk is one query's map over the whole clip.
    MapKind("video_self", "video_self",
            dims=("branch", "query", "step", "layer", "head", "frame", "y", "x"),
            value_dims=("query", "head", "frame", "y", "x"), chunk_trailing=3,
            description="video self-attention of the query point: its softmax probability on every video token",
            query_tower="video"),
    MapKind("audio_self", "audio_self",
            dims=("branch", "audio_query", "step", "layer", "head", "audio_time"),
            value_dims=("audio_query", "head", "audio_time"), chunk_trailing=1,
            description="audio self-attention of the query time: its softmax probability on every audio token",
            query_tower="audio"),
)

MAP_KINDS: dict[str, MapKind] = {k.name: k for k in _ROWS}  # variable name -> its row, in file order

# Capture kinds as users name them, in the order prompt files and help text list them.
CAPTURE_KINDS: tuple[str, ...] = tuple(dict.fromkeys(k.kind for k in _ROWS if k.query_tower is None))

# Self-attention kinds -> the tower whose query points they follow (written when `queries:` lists some).
SELF_KINDS: dict[str, str] = {k.kind: k.query_tower for k in _ROWS if k.query_tower is not None}


def variables_of(kind: str) -> tuple[str, ...]:
    """The map variables a capture kind writes."""
    return tuple(k.name for k in MAP_KINDS.values() if k.kind == kind)


def capture_kind_of(var: str) -> str:
    """The capture kind that writes `var` (the kind to ask for when a file lacks it)."""
    return MAP_KINDS[var].kind if var in MAP_KINDS else var
