"""The toy world: coloured shapes that move, bounce and beep, with the truth about every clip.

A scene is one or two objects of distinct colours and shapes (a disc, a flat bar, a cross:
silhouettes that differ in most of their pixels, so drawing an object needs its shape word).
Each has a motion (left, right, up, down, still, bounce) and maybe a beep (its shape's own
tone over an interval); a bouncing object clicks whenever it touches its floor. A clip is 17 frames at 24 fps
(0.71 s) and 22 audio latents of 32 ms; positions live in the unit square (y down, x
right) so one scene renders at any pixel size. The caption follows Ovi's convention:

    "a red circle moves left while a blue bar stays still. <AUDCAP>the circle beeps<ENDAUDCAP>"

Pure numpy: the evaluation reads captions back (`parse_caption`) without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ovi_attn_capture.model import registry
from ovi_attn_render.contract.geometry import FPS, audio_token_of_time, pixel_frame_count

LATENT_FRAMES = registry.get("toy").video_latent_frames  # 5
FRAMES = pixel_frame_count(LATENT_FRAMES)  # 17 pixel frames
AUDIO_LATENTS = registry.get("toy").audio_latents  # 22 * 512 samples at 16 kHz = 0.704 s

COLOURS = {  # name -> RGB; far apart so a decoded pixel's colour names its object
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 245),
    "yellow": (235, 220, 40),
}
SHAPES = ("circle", "bar", "cross")
# Half height and half width of each shape, in radii. Similar areas (3.1-3.3 r^2) but any two
# silhouettes differ in 55-80% of an object's pixels: an earlier circle/square/triangle set
# differed in a few 4-pixel sub-cells, so the video tower never had to read the shape word and
# shape words landed on either object alike (pointing 0.47 / 0.47, data/toy/README.md).
EXTENT = {"circle": (1.0, 1.0), "bar": (0.5, 1.6), "cross": (1.2, 1.2)}
CROSS_ARM = 0.42  # half width of the cross's arms, in radii
MOTIONS = {  # motion -> caption words
    "left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down",
    "still": "stays still", "bounce": "bounces",
}
TONE_CHANNEL = {"circle": 3, "bar": 8, "cross": 13}  # audio codec channel of each shape's beep
BEEP_AMPLITUDE = 0.5
CLICK_AMPLITUDE = 0.04  # per channel: a click is every channel at once, for one latent
WORDS = ["a", "the", "while", "and", "moves", "stays", "still", "bounces", "left", "right", "up", "down",
         "beeps", "clicks", "silence", *COLOURS, *SHAPES]


@dataclass
class WorldObject:
    colour: str
    shape: str
    motion: str
    radius: float  # unit-square units; the shape's EXTENT is in these
    path: np.ndarray  # [FRAMES, 2] centre (y, x) per frame, unit-square units
    beep: tuple[int, int] | None = None  # audio latents [start, end) of the beep
    clicks: list[int] = field(default_factory=list)  # audio latents of bounce contacts


@dataclass
class Scene:
    objects: list[WorldObject]

    @property
    def caption(self) -> str:
        return caption_of(self.objects)


# ----------------------------------------------------------------------------- captions


def caption_of(objects: list[WorldObject]) -> str:
    video = " while ".join(f"a {o.colour} {o.shape} {MOTIONS[o.motion]}" for o in objects)
    sounds = [f"the {o.shape} beeps" for o in objects if o.beep is not None]
    sounds += [f"the {o.shape} clicks" for o in objects if o.motion == "bounce"]
    return f"{video}. <AUDCAP>{' and '.join(sounds) or 'silence'}<ENDAUDCAP>"


_OBJECT_RE = re.compile(r"\ba (\w+) (\w+) (moves left|moves right|moves up|moves down|stays still|bounces)\b")
_SOUND_RE = re.compile(r"\bthe (\w+) (beeps|clicks)\b")


@dataclass
class CaptionObject:
    colour: str
    shape: str
    motion: str
    sounds: list[str]  # "beeps" / "clicks"


def parse_caption(text: str) -> list[CaptionObject]:
    """The objects a caption names (case-insensitive), in order; unknown words are skipped."""
    low = text.lower()
    motion_of = {v: k for k, v in MOTIONS.items()}
    objects = [CaptionObject(c, s, motion_of[m], []) for c, s, m in _OBJECT_RE.findall(low)
               if c in COLOURS and s in SHAPES]
    for shape, sound in _SOUND_RE.findall(low):
        for o in objects:
            if o.shape == shape:
                o.sounds.append(sound)
    return objects


# ----------------------------------------------------------------------------- sampling


def _latent_of_time(seconds: float) -> int:
    return min(AUDIO_LATENTS - 1, audio_token_of_time(seconds))


def _path(rng: np.random.Generator, motion: str, half: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Centre path [FRAMES, 2] keeping an object of half extents `half` (y, x) inside the frame for
    one motion, and bounce-contact audio latents."""
    n = np.arange(FRAMES) / (FRAMES - 1)  # 0..1 over the clip
    lo = half + 0.02
    hi = 1 - lo
    clicks: list[int] = []
    if motion == "still":
        y, x = rng.uniform(lo, hi)
        return np.stack([np.full(FRAMES, y), np.full(FRAMES, x)], 1), clicks
    if motion == "bounce":
        height = rng.uniform(0.3, 0.4)
        floor = rng.uniform(lo[0] + height, hi[0])
        x = rng.uniform(lo[1], hi[1])
        period = rng.uniform(8, 12)  # frames between contacts
        phase = rng.uniform(0, period)
        frames = np.arange(FRAMES)
        y = floor - height * np.abs(np.cos(np.pi * (frames + phase) / period))
        k = np.arange(-1, 4)
        contacts = (k + 0.5) * period - phase  # frames where the cosine is zero
        clicks = sorted({_latent_of_time(c / FPS) for c in contacts if 0 <= c <= FRAMES - 1})
        return np.stack([y, np.full(FRAMES, x)], 1), clicks
    axis, sign = {"left": (1, -1), "right": (1, 1), "up": (0, -1), "down": (0, 1)}[motion]
    distance = min(rng.uniform(0.3, 0.42), hi[axis] - lo[axis])  # a long bar has less room
    start = np.array(rng.uniform(lo, hi))
    start[axis] = rng.uniform(lo[axis] + distance, hi[axis]) if sign < 0 else rng.uniform(lo[axis], hi[axis] - distance)
    path = np.repeat(start[None], FRAMES, 0)
    path[:, axis] += sign * distance * n
    return path, clicks


def half_extent(shape: str, radius: float) -> np.ndarray:
    """(y, x) half sizes of a shape's bounding box at this radius, unit-square units."""
    return np.asarray(EXTENT[shape]) * radius


def _apart(a: WorldObject, b: WorldObject, margin: float = 0.06) -> bool:
    """Bounding boxes at least `margin` apart (along y or x) in every frame."""
    gap = np.abs(a.path - b.path) - half_extent(a.shape, a.radius) - half_extent(b.shape, b.radius)  # [FRAMES, 2]
    return bool((gap.max(axis=1) >= margin).all())


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, exclude: set[str] = frozenset(),
                 beep_probability: float = 0.4) -> Scene:
    """A random scene of 1 or 2 objects (distinct colours and shapes) whose caption is not in `exclude`."""
    while True:
        n = n_objects or int(rng.integers(1, 3))
        colours = rng.choice(list(COLOURS), n, replace=False)
        shapes = rng.choice(SHAPES, n, replace=False)
        objects: list[WorldObject] = []
        for colour, shape in zip(colours, shapes):
            motion = str(rng.choice(list(MOTIONS)))
            for _ in range(20):  # place it away from the objects already there
                r = float(rng.uniform(0.13, 0.16))
                path, clicks = _path(rng, motion, half_extent(str(shape), r))
                obj = WorldObject(str(colour), str(shape), motion, r, path, None, clicks)
                if all(_apart(obj, o) for o in objects):
                    break
            else:
                break
            if rng.random() < beep_probability:
                length = int(rng.integers(6, 11))
                start = int(rng.integers(0, AUDIO_LATENTS - length + 1))
                obj.beep = (start, start + length)
            objects.append(obj)
        if len(objects) == n and caption_of(objects) not in exclude:
            return Scene(objects)


# ----------------------------------------------------------------------------- rendering


def _inside(shape: str, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Membership of offsets (in radii) from the centre; the three shapes have similar areas."""
    if shape == "circle":
        return dy**2 + dx**2 <= 1.0
    ey, ex = EXTENT[shape]
    box = (np.abs(dy) <= ey) & (np.abs(dx) <= ex)
    if shape == "bar":
        return box
    return box & ((np.abs(dy) <= CROSS_ARM) | (np.abs(dx) <= CROSS_ARM))  # cross: two arms


def object_masks(scene: Scene, size: int) -> np.ndarray:
    """bool [n_objects, FRAMES, size, size]: where each object is in every frame (later objects on top)."""
    centres = (np.arange(size) + 0.5) / size
    masks = np.zeros((len(scene.objects), FRAMES, size, size), bool)
    for i, o in enumerate(scene.objects):
        dy = (centres[None, :, None] - o.path[:, 0, None, None]) / o.radius  # [T, size, 1]
        dx = (centres[None, None, :] - o.path[:, 1, None, None]) / o.radius  # [T, 1, size]
        masks[i] = _inside(o.shape, dy, dx)
    for i in range(len(masks) - 1):  # occlusion: what a later object covers is not visible below it
        masks[i] &= ~masks[i + 1:].any(0)
    return masks


def render_frames(scene: Scene, size: int) -> np.ndarray:
    """float32 [3, FRAMES, size, size] in [-1, 1]: the objects on a black background."""
    video = np.full((3, FRAMES, size, size), -1.0, np.float32)
    for o, mask in zip(scene.objects, object_masks(scene, size)):
        rgb = np.asarray(COLOURS[o.colour], np.float32) / 127.5 - 1
        video[:, mask] = rgb[:, None]
    return video


def audio_amplitudes(scene: Scene, channels: int = 20) -> np.ndarray:
    """float32 [AUDIO_LATENTS, channels]: the amplitude of every codec tone in every audio latent."""
    amp = np.zeros((AUDIO_LATENTS, channels), np.float32)
    for o in scene.objects:
        if o.beep is not None:
            amp[o.beep[0]:o.beep[1], TONE_CHANNEL[o.shape]] = BEEP_AMPLITUDE
        for c in o.clicks:
            amp[c] = np.maximum(amp[c], CLICK_AMPLITUDE)
    return amp
