"""Score captured attention maps against the ground truth of the toy world, end to end.

For each held-out prompt the REAL capture path runs (`capture.run_capture` writes an .h5
file), then the file is read back with `ovi_attn_render.contract.reader.open_capture`, so the
whole chain (probe, maps, writer, file layout, reader geometry, frame mapping) is under
test. The truth comes from the clip the model generated: each object the caption names
is found by its colour in the decoded frames stored in the file, and each beep by its
tone in the decoded waveform (the audio codec's analysis).

Scores, per captured step and layer (cond branch, head mean):
    pointing  the map's peak token cell is on the object (it covers >= 10% of the cell),
              for every pixel frame, read at the latent frame the reader maps it to;
              `chance` is the same score for a uniformly random cell
    iou       IoU of the map thresholded at half its peak (token cells) with the object
    audio     the peak of the "<shape> beeps" phrase's text->audio map falls inside the
              detected beep (chance: the beep's share of the clip)
    track     self-attention as a point tracker: every token cell of pixel frame 0 is a
              query point (`queries:`, video_self maps); for each moving object, the query
              on its centre there is followed through the clip (soft-argmax of its
              attention per latent frame) and scored by the mean distance, in latent
              cells, to the object's true centre in every frame (target <= 1 cell;
              `still` is the distance of a track that never moves, for comparison)

Run it as `ovi-attn eval data/toy/eval.yaml` (toy/commands.py).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ovi_attn_capture.toy.world import BEEP_AMPLITUDE, COLOURS, TONE_CHANNEL, parse_caption

HIT_COVERAGE = 0.1  # a cell "is on" an object when the object covers at least this share of it
MIN_OBJECT_PIXELS = 200  # fewer matching pixels in a frame (a fifth of an object): the object is not there
TRACK_QUERY_FRAME = 0  # the first frame: the track runs over the whole clip from it
COLOUR_DISTANCE = 120.0  # farthest RGB distance from the palette colour that still counts as the object


@dataclass
class EvalSettings:
    prompts: list[str]
    steps: int = 30
    seed: int = 1000
    video_guidance_scale: float = 3.0  # the toy model's best (4.0 over-saturates it)
    audio_guidance_scale: float = 3.0
    final_steps: float = 0.2


def load_eval_file(path: str | Path) -> EvalSettings:
    import yaml

    from ovi_attn_render.common.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"evaluation file {p} does not exist; use data/toy/eval.yaml as a template.")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    prompts = [str(item["prompt"]) if isinstance(item, dict) else str(item) for item in data.get("prompts", [])]
    if not prompts:
        raise UserError(f"{p} lists no prompts; add a `prompts:` list of `- prompt: \"...\"` entries.")
    keys = {k: data[k] for k in ("steps", "seed", "video_guidance_scale", "audio_guidance_scale", "final_steps")
            if k in data}
    return EvalSettings(prompts=prompts, **keys)


# ----------------------------------------------------------------------------- ground truth from a file


def colour_masks(frames: np.ndarray, colour: str) -> np.ndarray:
    """uint8 frames [T, H, W, 3] -> bool [T, H, W]: pixels nearer the named colour than to any other
    palette colour or the black background (and not far from it)."""
    names = [*COLOURS, "background"]
    palette = np.asarray([*COLOURS.values(), (0, 0, 0)], np.float32)  # [K, 3]
    distance = np.linalg.norm(frames.astype(np.float32)[..., None, :] - palette, axis=-1)  # [T, H, W, K]
    k = names.index(colour)
    return (distance.argmin(-1) == k) & (distance[..., k] < COLOUR_DISTANCE)


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """bool [H, W] -> float [h, w]: the share of each token cell the object covers."""
    h, w = grid
    H, W = mask.shape
    return mask.reshape(h, H // h, w, W // w).mean(axis=(1, 3))


def beep_latents(waveform: np.ndarray, shape: str) -> np.ndarray:
    """bool [La]: audio latents where the shape's tone sounds (above half the beep's amplitude)."""
    import torch

    from ovi_attn_capture.toy.codec import AudioCodec

    amp = AudioCodec.amplitudes(AudioCodec().encode(torch.from_numpy(waveform))).numpy()
    return amp[:, TONE_CHANNEL[shape]] > 0.5 * BEEP_AMPLITUDE


@dataclass
class Misalignment:
    """A deliberate error in laying maps over frames; the defaults (none) are right. Tests set one
    to prove that the scores notice (the clip geometry itself is contract.geometry)."""

    transpose: bool = False  # swap the map's y and x
    frame_shift: int = 0  # read the latent frame this far from the one the reader names


@dataclass
class FileScores:
    """Scores of one capture file: per object word, arrays over (step, layer)."""

    path: str
    prompt: str
    # word -> {"pointing", "other", "iou": [S, L], "chance", "found": float, "class": str, "objects": int}
    video: dict = field(default_factory=dict)
    audio: dict = field(default_factory=dict)  # phrase -> {"hit": [S, L], "chance": float}
    track: dict = field(default_factory=dict)  # moving object's shape -> {"soft", "argmax": [S, L], "still": float}


def score_file(path: str | Path, misalignment: Misalignment = Misalignment()) -> FileScores:
    """Read one capture file and score every object word and beep phrase it holds."""
    from ovi_attn_render.contract.reader import open_capture

    with open_capture(str(path)) as cap:
        prompt = str(cap.attrs["prompt"])
        objects = parse_caption(prompt)
        frames = np.stack([cap.frame(n) for n in range(cap.num_pixel_frames)])  # [T, H, W, 3]
        F, h, w = cap.grid
        out = FileScores(str(path), prompt)
        all_masks = [colour_masks(frames, obj.colour) for obj in objects]  # [T, H, W] each
        for i, obj in enumerate(objects):
            others = [m for j, m in enumerate(all_masks) if j != i]
            for word, word_class in ((obj.shape, "shape"), (obj.colour, "colour")):
                if word not in cap.groups:
                    continue
                maps = cap.text_video(cap.token_index(word)).isel(head=0).transpose(
                    "step", "layer", "frame", "y", "x").values  # [S, L, F, h, w]
                scored = _score_video(cap, maps, all_masks[i], (h, w), misalignment, others)
                out.video[word] = {**scored, "class": word_class, "objects": len(objects)}
        if "video_self" in cap.variables():
            for obj, masks in zip(objects, all_masks):
                if obj.motion != "still":
                    scored = _score_track(cap, masks)
                    if scored is not None:
                        out.track[obj.shape] = scored
        if "text_audio" in cap.variables():
            waveform = cap.waveform()
            for obj in objects:
                phrase = f"{obj.shape} beeps"
                if "beeps" not in obj.sounds or phrase not in cap.groups:
                    continue
                truth = beep_latents(waveform, obj.shape)
                maps = cap.text_audio(cap.token_index(phrase)).isel(head=0).transpose(
                    "step", "layer", "audio_time").values  # [S, L, La]
                peak = maps.argmax(-1)
                out.audio[phrase] = {"hit": truth[peak].astype(float) if truth.any() else np.zeros(peak.shape),
                                     "chance": float(truth.mean()), "found": float(truth.any())}
    return out


def _score_video(cap, maps: np.ndarray, masks: np.ndarray, grid, misalignment: Misalignment,
                 others: list[np.ndarray] = ()) -> dict:
    """maps [S, L, F, h, w], masks [T, H, W] -> pointing and IoU [S, L] averaged over frames with the
    object; `other` [S, L]: the share of those frames whose peak is on another object instead
    (others: their [T, H, W] masks); the rest of the misses fell on the background."""
    S, L, F = maps.shape[:3]
    h, w = grid
    hits, elsewhere, ious, chance, found = [], [], [], [], 0
    for n in range(len(masks)):
        f = min(max(cap.latent_frame(n) + misalignment.frame_shift, 0), F - 1)
        if masks[n].sum() < MIN_OBJECT_PIXELS:
            continue
        found += 1
        m = maps[:, :, f]  # [S, L, h, w]
        if misalignment.transpose:
            m = np.swapaxes(m, -1, -2)
        cover = cell_coverage(masks[n], (h, w))  # [h, w]
        on = cover >= HIT_COVERAGE
        peak = m.reshape(S, L, -1).argmax(-1)  # [S, L]
        hits.append(on.reshape(-1)[peak])
        on_other = np.zeros(h * w, bool)
        for other in others:
            on_other |= (cell_coverage(other[n], (h, w)) >= HIT_COVERAGE).reshape(-1)
        elsewhere.append(on_other[peak] & ~on.reshape(-1)[peak])
        chosen = m >= 0.5 * m.max(axis=(-1, -2), keepdims=True)  # [S, L, h, w] cells
        pixel_cells = np.kron(chosen, np.ones((masks.shape[1] // h, masks.shape[2] // w), bool))
        inter = (pixel_cells & masks[n]).sum(axis=(-1, -2))
        union = (pixel_cells | masks[n]).sum(axis=(-1, -2))
        ious.append(inter / np.maximum(union, 1))
        chance.append(on.mean())
    if not hits:
        return {"pointing": np.zeros((S, L)), "other": np.zeros((S, L)), "iou": np.zeros((S, L)), "chance": 0.0,
                "found": 0.0}
    return {"pointing": np.mean(hits, 0), "other": np.mean(elsewhere, 0), "iou": np.mean(ious, 0),
            "chance": float(np.mean(chance)), "found": found / len(masks)}


def _centre_cells(mask: np.ndarray, grid) -> np.ndarray:
    """bool [H, W] -> the object's centroid (y, x) in token-cell units."""
    ys, xs = np.nonzero(mask)
    return np.array([(ys.mean() + 0.5) * grid[0] / mask.shape[0], (xs.mean() + 0.5) * grid[1] / mask.shape[1]])


def _score_track(cap, masks: np.ndarray) -> dict | None:
    """Follow the query on the object's centre at TRACK_QUERY_FRAME: mean distance (cells) to the true centre
    over the frames where the object is seen, per (step, layer); None if it is not at frame 0."""
    from ovi_attn_render.views.query import distance_to, track

    F, h, w = cap.grid
    n0 = TRACK_QUERY_FRAME
    if len(masks) <= n0 or masks[n0].sum() < MIN_OBJECT_PIXELS:
        return None
    start = _centre_cells(masks[n0], (h, w))
    cell = (min(h - 1, int(start[0])), min(w - 1, int(start[1])))
    queries = cap.tower_queries("video")
    at = [i for i, q in enumerate(queries) if q.pixel_frame == n0 and (q.y, q.x) == cell]
    if not at:
        return None
    m = cap.video_self(at[0]).isel(head=0).transpose("step", "layer", "frame", "y", "x")  # [S, L, F, h, w]
    seen = [n for n in range(len(masks)) if masks[n].sum() >= MIN_OBJECT_PIXELS]
    truth = np.stack([_centre_cells(masks[n], (h, w)) for n in seen])  # [N, 2]
    latent = [cap.latent_frame(n) for n in seen]
    out = {}
    for method in ("soft", "argmax"):
        points = track(m, method).isel(frame=latent)  # (step, layer, frame -> the seen pixel frames, axis)
        out[method] = distance_to(points, truth).mean(-1)  # [S, L]
    out["still"] = float(np.sqrt(((truth - start) ** 2).sum(-1)).mean())
    return out


# ----------------------------------------------------------------------------- the table


@dataclass
class EvalTable:
    steps: list[int]  # captured sampler steps
    layers: list[int]
    pointing: np.ndarray  # [S, L], mean over (prompt, object word) with the object present
    iou: np.ndarray  # [S, L]
    audio: np.ndarray  # [S, L] text->audio hits, or empty when no beeps
    chance: float
    audio_chance: float
    found: float  # share of (object word, frame) pairs whose object was found in the clip
    final: list[int]  # the step positions averaged for the headline
    files: list[FileScores]
    track: dict = field(default_factory=dict)  # "soft" / "argmax" -> [S, L] mean distance (cells); "still": float

    def at_final(self, values: np.ndarray) -> np.ndarray:
        """[L]: mean over the final steps."""
        return values[self.final].mean(0) if values.size else np.zeros(len(self.layers))

    @property
    def best_layer(self) -> int:
        return int(np.argmax(self.at_final(self.pointing)))

    def headline(self) -> dict:
        pointing = self.at_final(self.pointing)
        b = self.best_layer
        return {"pointing_best_layer": float(pointing[b]), "best_layer": int(self.layers[b]),
                "pointing_layer_mean": float(pointing.mean()), "iou_best_layer": float(self.at_final(self.iou)[b]),
                "audio_best_layer": float(self.at_final(self.audio).max()) if self.audio.size else None,
                "chance": self.chance, "audio_chance": self.audio_chance, "objects_found": self.found,
                "final_steps": [int(self.steps[i]) for i in self.final], **self.track_headline(),
                "classes": self.classes()}

    def classes(self) -> list[dict]:
        """Per (word class, objects in the clip): where the peak falls at the best layer and over the
        layers' mean (final steps), with the chance of a random cell landing on the word's object."""
        b = self.best_layer
        rows = []
        for word_class in ("colour", "shape"):
            for n in (1, 2):
                scored = [v for f in self.files for v in f.video.values()
                          if v["found"] > 0 and v.get("class") == word_class and v.get("objects") == n]
                if not scored:
                    continue
                own = self.at_final(np.mean([v["pointing"] for v in scored], 0))  # [L]
                other = self.at_final(np.mean([v["other"] for v in scored], 0))
                rows.append({"class": word_class, "objects": n, "words": len(scored), "own": float(own[b]),
                             "other": float(other[b]), "background": float(1 - own[b] - other[b]),
                             "own_layer_mean": float(own.mean()),
                             "chance": float(np.mean([v["chance"] for v in scored]))})
        return rows

    def track_headline(self) -> dict:
        """The tracking score: mean distance (latent cells) at the layer that tracks best."""
        if not self.track:
            return {}
        soft, argmax = self.at_final(self.track["soft"]), self.at_final(self.track["argmax"])
        b = int(np.argmin(soft))
        return {"track_distance_best_layer": float(soft[b]), "track_best_layer": int(self.layers[b]),
                "track_argmax_distance": float(argmax[b]), "track_still_distance": self.track["still"],
                "tracks": self.track["count"]}

    def to_json(self) -> dict:
        return {"headline": self.headline(), "steps": self.steps, "layers": self.layers,
                "pointing": self.pointing.round(4).tolist(), "iou": self.iou.round(4).tolist(),
                "audio": self.audio.round(4).tolist(),
                "track": {k: (v.round(4).tolist() if isinstance(v, np.ndarray) else v) for k, v in self.track.items()},
                "files": [{"path": f.path, "prompt": f.prompt,
                           "video": {w: {"pointing_final": float(np.mean(v["pointing"][self.final])),
                                         "other_final": float(np.mean(v["other"][self.final])),
                                         "class": v["class"], "objects": v["objects"],
                                         "chance": v["chance"], "found": v["found"]} for w, v in f.video.items()},
                           "audio": {p: {"hit_final": float(np.mean(v["hit"][self.final])), "chance": v["chance"]}
                                     for p, v in f.audio.items()},
                           "track": {o: {"soft_final": self.at_final(v["soft"]).round(4).tolist(),
                                         "still": v["still"]} for o, v in f.track.items()}} for f in self.files]}


def build_table(files: list[FileScores], steps: list[int], layers: list[int], final_steps: float) -> EvalTable:
    video = [v for f in files for v in f.video.values() if v["found"] > 0]
    audio = [a for f in files for a in f.audio.values() if a["found"] > 0]
    S, L = len(steps), len(layers)
    n_final = max(1, math.ceil(final_steps * S))
    all_video = [v for f in files for v in f.video.values()]
    tracks = [t for f in files for t in f.track.values()]
    track = {"soft": np.mean([t["soft"] for t in tracks], 0), "argmax": np.mean([t["argmax"] for t in tracks], 0),
             "still": float(np.mean([t["still"] for t in tracks])), "count": len(tracks)} if tracks else {}
    return EvalTable(
        steps=list(steps), layers=list(layers),
        pointing=np.mean([v["pointing"] for v in video], 0) if video else np.zeros((S, L)),
        iou=np.mean([v["iou"] for v in video], 0) if video else np.zeros((S, L)),
        audio=np.mean([a["hit"] for a in audio], 0) if audio else np.zeros((0, L)),
        chance=float(np.mean([v["chance"] for v in video])) if video else 0.0,
        audio_chance=float(np.mean([a["chance"] for a in audio])) if audio else 0.0,
        found=float(np.mean([v["found"] for v in all_video])) if all_video else 0.0,
        final=list(range(S - n_final, S)), files=files, track=track)


def print_table(table: EvalTable, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    head = table.headline()
    t = Table(title=f"toy model: maps vs ground truth, final steps {head['final_steps']}")
    t.add_column("layer", justify="right")
    for name in ("pointing", "IoU", "audio"):
        t.add_column(name, justify="right")
    pointing, iou, audio = table.at_final(table.pointing), table.at_final(table.iou), table.at_final(table.audio)
    for i, layer in enumerate(table.layers):
        t.add_row(str(layer), f"{pointing[i]:.3f}", f"{iou[i]:.3f}", f"{audio[i]:.3f}" if table.audio.size else "-")
    t.add_row("chance", f"{table.chance:.3f}", "", f"{table.audio_chance:.3f}" if table.audio.size else "-")
    console.print(t)
    per_step = Table(title="pointing per step (mean over layers | best layer)")
    per_step.add_column("step", justify="right")
    per_step.add_column("mean", justify="right")
    per_step.add_column("best", justify="right")
    for i, s in enumerate(table.steps):
        per_step.add_row(str(s), f"{table.pointing[i].mean():.3f}", f"{table.pointing[i].max():.3f}")
    console.print(per_step)
    classes = Table(title=f"where the peak falls, per word class (best layer {head['best_layer']}, final steps)")
    for name in ("word", "objects", "words", "on its object", "on the other", "on background", "layer mean",
                 "chance"):
        classes.add_column(name, justify="left" if name == "word" else "right")
    for r in head["classes"]:
        classes.add_row(r["class"], str(r["objects"]), str(r["words"]), f"{r['own']:.3f}",
                        f"{r['other']:.3f}" if r["objects"] > 1 else "-", f"{r['background']:.3f}",
                        f"{r['own_layer_mean']:.3f}", f"{r['chance']:.3f}")
    console.print(classes)
    if table.track:
        soft = table.at_final(table.track["soft"])
        console.print("track distance per layer (latent cells, soft-argmax, final steps): "
                      + ", ".join(f"{int(l)}: {d:.2f}" for l, d in zip(table.layers, soft))
                      + f"; a still point: {table.track['still']:.2f} (target <= 1)", highlight=False)
    audio = f", text->audio {head['audio_best_layer']:.3f} (chance {head['audio_chance']:.3f}, target 0.95)" \
        if head["audio_best_layer"] is not None else ""
    console.print(f"best layer {head['best_layer']}: pointing {head['pointing_best_layer']:.3f} "
                  f"(chance {head['chance']:.3f}, target 0.9), mean over layers {head['pointing_layer_mean']:.3f} "
                  f"(target 0.8), IoU {head['iou_best_layer']:.3f}{audio}; objects found in "
                  f"{head['objects_found']:.1%} of (object, frame) pairs (target 95%)", highlight=False)


# ----------------------------------------------------------------------------- running it


def capture_tokens(prompt: str) -> list[str]:
    """Selections to capture for a prompt: each object's shape and colour, and each beep phrase."""
    tokens = []
    for obj in parse_caption(prompt):
        tokens += [obj.shape, obj.colour]
        if "beeps" in obj.sounds:
            tokens.append(f"{obj.shape} beeps")
    return tokens


def grid_queries(frame: int) -> list:
    """One query point on every token cell of a pixel frame (the toy grid is 8 x 8), so that
    whatever the model draws where, a query sits on each object's centre in that frame."""
    from ovi_attn_capture.pipeline.queries import QuerySpec
    from ovi_attn_capture.model import registry
    from ovi_attn_render.contract.geometry import latent_size

    h, w = latent_size(registry.get("toy").native_size)  # the toy's video patch is 1: a token per latent cell
    return [QuerySpec(f"cell_{y}_{x}", "video", frame=frame, x=(x + 0.5) / w, y=(y + 0.5) / h)
            for y in range(h) for x in range(w)]


def run_spec(prompt: str, seed: int, steps: int, layers, settings: EvalSettings, device: str = "cpu",
             model: str = "toy"):
    """A validated-by-construction RunSpec for a toy model (the prompt file's keys, no file)."""
    from ovi_attn_capture.pipeline.prompt_file import CaptureSpec, RunSpec

    from ovi_attn_capture.toy.components import AUDIO_NEGATIVE_PROMPT, VIDEO_NEGATIVE_PROMPT

    capture = CaptureSpec(tokens=capture_tokens(prompt), layers=layers, steps="all",
                          kinds=["text_video", "text_audio"], branch="cond", heads="mean", dtype="float32")
    return RunSpec(queries=grid_queries(TRACK_QUERY_FRAME), prompt=prompt, video_negative_prompt=VIDEO_NEGATIVE_PROMPT,
                   audio_negative_prompt=AUDIO_NEGATIVE_PROMPT, seed=seed, model=model, steps=steps,
                   video_guidance_scale=settings.video_guidance_scale,
                   audio_guidance_scale=settings.audio_guidance_scale, dtype="float32", device=device,
                   capture=capture)


def earlier_evaluation(out: Path) -> list[Path]:
    """The files an earlier evaluation left in `out`: eval.json and its prompt_NN.h5 runs."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name == "eval.json" or re.fullmatch(r"prompt_\d+\.h5", p.name))


def evaluate(prompts: list[str], weights: str | Path | None = None, steps: int = 30, layers="all",
             out_dir: str | Path = "toy_eval", settings: EvalSettings | None = None, device: str = "cpu",
             console=None, misalignment: Misalignment = Misalignment(), force: bool = True,
             model: str = "toy") -> EvalTable:
    """Capture every prompt with a toy model into out_dir/prompt_NN.h5, score, print, and store
    the scores (out_dir/eval.json, and a `toy_eval` JSON attribute on each file).

    `model` is a toy of the registry (toy, toy_tracking), whose bundled file is used unless
    `weights` names another (a weights file, or a folder holding the model's file).

    An earlier evaluation in out_dir is replaced only with force (its runs all removed, so
    none is left stale beside the new ones). Progress goes to stderr (see progress.py)."""
    import h5py

    from ovi_attn_capture.pipeline.capture import resolve_device, run_capture
    from ovi_attn_render.contract.selection import resolve
    from ovi_attn_capture.components.text_encoder import clean_text

    from ovi_attn_capture.toy.components import load_toy_components, toy_files

    from ovi_attn_render.common.errors import UserError
    from ovi_attn_render.common.progress import Progress

    settings = settings or EvalSettings(prompts=list(prompts), steps=steps)
    if not prompts:
        raise UserError("no prompts to evaluate; give at least one.")
    out = Path(out_dir)
    dev = resolve_device(device)  # before anything is written: a bad device leaves no folder behind
    earlier = earlier_evaluation(out)
    if earlier and not force:
        raise UserError(f"{out} already holds an evaluation ({len(earlier)} files: eval.json, prompt_NN.h5); pass "
                        f"--force to replace it, or -o another folder.")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give -o a folder for the evaluation.")
    first = run_spec(prompts[0], settings.seed, steps, layers, settings, device, model)
    weights = toy_files(weights, model)["fusion"]  # the file scored, named in eval.json
    comp = load_toy_components(first, dev, say=lambda *a, **k: None, weights=weights)  # missing weights: no folder made
    out.mkdir(parents=True, exist_ok=True)
    for stale in earlier:  # force: no run of the earlier evaluation survives beside the new ones
        stale.unlink()
    files = []
    with Progress("evaluating", len(prompts), "prompts", enabled=console is not False) as progress:
        for i, prompt in enumerate(prompts):
            run = run_spec(prompt, settings.seed + i, steps, layers, settings, device, model)
            path = out / f"prompt_{i:02d}.h5"
            run_capture(run, path, force=True, console=None, progress=False, mp4=False,
                        comp=replace(comp, prompt_text=clean_text(prompt)))
            files.append(score_file(path, misalignment))
            progress.update(i + 1)
    table = build_table(files, list(range(steps)), resolve(layers, range(comp.model.num_layers), "layers",
                                                          what="toy layers", option="capture.layers"),
                        settings.final_steps)
    summary = {"model": model, "weights": str(weights), **table.to_json()}
    (out / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    for f, entry in zip(files, summary["files"]):
        with h5py.File(f.path, "a", locking=False) as h5:
            h5.attrs["toy_eval"] = json.dumps(entry)
    if console is not False:
        print_table(table, console)
    return table
