"""The toy world model: codecs, tokenizer, training forward, and capture scored against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ovi_attn_capture.model import registry
from ovi_attn_capture.toy import TOY_DIR, world
from ovi_attn_capture.toy.codec import AudioCodec, VideoCodec
from ovi_attn_capture.toy.evaluate import (Misalignment, build_table, cell_coverage, colour_masks, evaluate,
                                          load_eval_file, score_file)


def _bundled(model: str) -> bool:
    return registry.toy_weights_file(model).is_file()


BUNDLED = _bundled("toy")


def _scene(seed: int = 3, n: int = 2) -> world.Scene:
    return world.sample_scene(np.random.default_rng(seed), n, beep_probability=1.0)


def test_video_codec_keeps_objects_where_they_are():
    scene = _scene()
    video = torch.from_numpy(world.render_frames(scene, 128))
    latent = VideoCodec().encode(video)
    assert latent.shape == (48, 5, 8, 8)
    decoded = VideoCodec().decode(latent)
    assert decoded.shape == video.shape
    frames = ((decoded.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    truth = world.object_masks(scene, 128)
    for obj, mask in zip(scene.objects, truth):
        found = colour_masks(frames, obj.colour)
        # latent frame f holds the mean of pixel frames 4f-3..4f: where the object is most of that time
        for n in (0, 4, 8, 12, 16):
            held = mask[max(n - 3, 1) if n else 0: n + 1].mean(0) >= 0.5
            iou = (found[n] & held).sum() / (found[n] | held).sum()
            assert iou > 0.5, (obj.colour, n, iou)


def test_audio_codec_round_trip_finds_the_beep():
    scene = _scene()
    amp = torch.from_numpy(world.audio_amplitudes(scene))
    wave = AudioCodec().decode(AudioCodec.normalise(amp))
    assert wave.shape == (world.AUDIO_LATENTS * 512,)
    back = AudioCodec.amplitudes(AudioCodec().encode(wave))
    beeper = next(o for o in scene.objects if o.beep is not None)
    channel = world.TONE_CHANNEL[beeper.shape]
    inside = back[beeper.beep[0] + 1: beeper.beep[1] - 1, channel]
    assert inside.min() > 0.8 * world.BEEP_AMPLITUDE
    outside = torch.cat([back[: max(beeper.beep[0] - 1, 0), channel], back[beeper.beep[1] + 1:, channel]])
    assert outside.numel() == 0 or outside.max() < 0.1 * world.BEEP_AMPLITUDE


def test_tokenizer_keeps_words_whole():
    from ovi_attn_capture.toy.text import build_tokenizer
    from ovi_attn_capture.components.text_encoder import TextEncoder

    enc = TextEncoder(build_tokenizer(), None)
    tokens = enc.tokenize("A red circle moves left. <AUDCAP>the circle beeps<ENDAUDCAP>")
    assert [t.piece for t in tokens][:5] == ["▁a", "▁red", "▁circle", "▁moves", "▁left"]
    assert tokens[-1].piece == "</s>" and enc.pad_id == 0
    assert enc.tokenize("")[-1].piece == "</s>"


def test_training_forward_matches_the_model():
    from ovi_attn_capture.toy import train
    from ovi_attn_capture.toy.text import fresh_text_encoder

    cfg = train.TrainConfig(num_layers=2)
    model = train.build_model(cfg).eval()
    for tower in (model.video_model, model.audio_model):  # not zero, so the heads are compared too
        torch.nn.init.normal_(tower.head.head.weight, std=0.02)
    scenes = [_scene(1, 1), _scene(2, 2)]
    video, audio = train.scene_latents(scenes, 64)
    texts = fresh_text_encoder().encode([scenes[0].caption, ""])
    t = torch.tensor([250.0, 900.0])
    with torch.no_grad():
        batch_v, batch_a = train.forward_batch(model, video, audio, t, texts, texts)
        for i in range(2):
            ref_v, ref_a = model(video[i], audio[i], t[i:i + 1], texts[i], texts[i])
            torch.testing.assert_close(batch_v[i], ref_v, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batch_a[i], ref_a, atol=1e-5, rtol=1e-4)


# Four held-out prompts of data/toy/eval.yaml (one and two objects, every object moves, so a
# wrong frame mapping shows too), seeds 1000-1003 in this order. Measured at 16 steps: best
# layer 0.94 (chance 0.14), 0.27 with the maps transposed, 0.69 two latent frames off.
PROMPTS = [
    "a yellow circle moves left. <AUDCAP>the circle beeps<ENDAUDCAP>",
    "a blue bar moves up. <AUDCAP>the bar beeps<ENDAUDCAP>",
    "a green circle moves left while a red bar moves right. <AUDCAP>the circle beeps<ENDAUDCAP>",
    "a green cross moves up while a yellow circle moves down. <AUDCAP>the cross beeps and the circle beeps<ENDAUDCAP>",
]
FLOOR = 0.8  # chance is ~0.15 on the 8 x 8 token grid


def _evaluate_bundled(model: str, tmp_path_factory, prompts=PROMPTS, steps=16, settings=None):
    if not _bundled(model):
        pytest.skip(f"{registry.toy_weights_file(model)} is not there (data/toy/README.md: how to train it)")
    out = tmp_path_factory.mktemp(f"{model}_eval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and immune to a busy CPU
    try:
        table = evaluate(prompts, steps=steps, layers="all", out_dir=out, settings=settings, console=False, model=model)
    finally:
        torch.set_num_threads(threads)
    return table, out


@pytest.fixture(scope="module")
def bundled_eval(tmp_path_factory):
    return _evaluate_bundled("toy", tmp_path_factory)


@pytest.fixture(scope="module")
def tracking_eval(tmp_path_factory):
    """`ovi-attn eval --model toy_tracking` itself: all 16 held-out prompts at the file's 30 steps
    (a track is a mean over few objects; four prompts swing it by more than the margin tested)."""
    settings = load_eval_file(TOY_DIR / "eval.yaml")
    return _evaluate_bundled("toy_tracking", tmp_path_factory, settings.prompts, settings.steps, settings)


def test_bundled_model_maps_land_on_their_objects(bundled_eval):
    table, out = bundled_eval
    head = table.headline()
    assert head["objects_found"] > 0.5
    assert head["pointing_best_layer"] >= FLOOR, head
    assert head["pointing_best_layer"] > head["chance"] + 0.25, head
    assert (out / "eval.json").is_file()


def test_bundled_model_tracks_every_moving_object(bundled_eval):
    """The eval follows a query on each moving object seen at frame 0 and reports a distance per
    step and layer (the track machinery end to end: queries -> video_self -> reader -> track)."""
    table, _ = bundled_eval
    head = table.headline()
    assert head["tracks"] >= 4, head  # every moving object of PROMPTS that is seen at frame 0
    assert np.isfinite(table.track["soft"]).all() and np.isfinite(table.track["argmax"]).all()


def test_training_continues_only_from_weights_of_the_same_config():
    """--init: a 1-head file has the shapes of a 4-head one, so the configs in its metadata decide."""
    from ovi_attn_capture.toy import train

    if not BUNDLED:
        pytest.skip("data/toy/toy.safetensors is not there")
    one_head = str(registry.toy_weights_file("toy"))
    with pytest.raises(SystemExit, match="other tower settings"):
        train.build_model(train.TrainConfig(num_heads=4, init=one_head))
    model = train.build_model(train.TrainConfig(init=one_head))
    assert model.video_model.num_heads == 1


@pytest.mark.parametrize("wrong", [Misalignment(transpose=True), Misalignment(frame_shift=2)], ids=["transposed", "frames"])
def test_wrong_geometry_scores_lower(bundled_eval, wrong):
    table, _ = bundled_eval
    files = [score_file(f.path, wrong) for f in table.files]
    worse = build_table(files, table.steps, table.layers, 0.2)
    b = table.best_layer
    assert worse.at_final(worse.pointing)[b] < table.at_final(table.pointing)[b] - 0.15


def _tracks(table) -> bool:
    """Issue 19's target: a query on a moving object at frame 0 follows it, the best layer's
    soft-argmax track within one latent cell of the true centre on average; and, so that a
    point that never moves cannot pass, closer than such a still point by 0.15 cells or more
    (toy_tracking: 0.85 against 1.11; the one-head toy: 1.59 against 1.21)."""
    head = table.headline()
    return head["track_distance_best_layer"] <= 1.0 and head["track_distance_best_layer"] <= head["track_still_distance"] - 0.15


def test_the_tracking_toy_follows_moving_objects(tracking_eval):
    table, out = tracking_eval
    scored = json.loads((out / "eval.json").read_text())
    assert scored["model"] == "toy_tracking" and scored["weights"].endswith("toy_tracking.safetensors")
    head = table.headline()
    assert head["tracks"] >= 16, head  # 20 moving objects seen at frame 0
    assert _tracks(table), head


@pytest.mark.xfail(strict=True, reason="the one-head toy's self-attention does not follow objects (soft-argmax "
                   "track 1.59 cells on data/toy/eval.yaml, a still point 1.21; toy_tracking's four heads do); "
                   "strict, so the test fails as soon as the pointing toy tracks too")
def test_the_pointing_toy_does_not_track(bundled_eval):
    table, _ = bundled_eval
    assert _tracks(table), table.headline()


def test_the_toys_fit_the_repository_budget():
    """Issue 18's limit: the bundled weights, every toy and their text encoder, take at most 10 MB."""
    files = {registry.toy_weights_file(m) for m in registry.toy_models()}
    files |= {f.parent / "text_encoder.safetensors" for f in files}
    present = [f for f in files if f.is_file()]
    if not present:
        pytest.skip("no bundled toy weights here")
    assert sum(f.stat().st_size for f in present) <= 10_000_000, {f.name: f.stat().st_size for f in present}


@pytest.mark.parametrize("model", registry.toy_models())
def test_the_registry_agrees_with_the_bundled_file(model):
    """model/registry.py's toy configs (the world takes its clip length from the same row) are the
    bundled file's (read from the safetensors header without torch: compared with safetensors' reader),
    and the file is what training writes: float8 matrices, float16 vectors."""
    from safetensors import safe_open

    from ovi_attn_capture.toy.train import PRESETS, TrainConfig

    assert world.FRAMES == 17 and world.AUDIO_LATENTS == 22  # what the bundled weights were trained on
    if not _bundled(model):
        pytest.skip(f"{registry.toy_weights_file(model)} is not there")
    with safe_open(str(registry.toy_weights_file(model)), framework="pt") as f:
        meta = f.metadata()
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert registry.tower_configs(model) == (json.loads(meta["video_config"]), json.loads(meta["audio_config"]))
    assert dtypes == {"F8_E4M3", "F16"}
    # the one training command: TrainConfig's defaults with the toy's preset (where a run was
    # launched, on how many threads, and how often it saved do not change the weights)
    from dataclasses import asdict

    expected = asdict(TrainConfig()) | PRESETS[model]
    training = json.loads(meta["training"])["config"]
    free = ("held_out", "init", "threads", "save_every", "max_minutes")
    assert {k: v for k, v in training.items() if k not in free} == {k: v for k, v in expected.items() if k not in free}


def test_the_tracks_example_follows_its_circle(tmp_path):
    """data/prompts/tracks_toy.yaml (the README's query picture): the point on the circle in frame 0
    looks at the circle where it has moved to. At the last step, in layer 2, the peak of its
    attention in the last latent frame is on the circle, not where the circle started."""
    from ovi_attn_capture.pipeline.capture import run_capture
    from ovi_attn_capture.pipeline.prompt_file import load_prompt_file
    from ovi_attn_render.contract.reader import open_capture

    if not _bundled("toy_tracking"):
        pytest.skip("toy_tracking is not there")
    run = load_prompt_file(Path(__file__).resolve().parents[1] / "data/prompts/tracks_toy.yaml", {})
    path = tmp_path / "tracks.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_capture(run, path, force=True, console=None, progress=False, mp4=False)
    finally:
        torch.set_num_threads(threads)
    with open_capture(str(path)) as cap:
        F, h, w = cap.grid
        last = cap.num_pixel_frames - 1
        circle = colour_masks(cap.frame(last)[None], "red")[0]
        start = colour_masks(cap.frame(0)[None], "red")[0]
        maps = cap.video_self(0).isel(head=0, step=-1).sel(layer=2)  # (frame, y, x)
        at_end = maps.isel(frame=cap.latent_frame(last)).values  # [h, w]
    y, x = np.unravel_index(at_end.argmax(), at_end.shape)
    on = cell_coverage(circle, (h, w))
    started = cell_coverage(start, (h, w))
    assert on[y, x] >= 0.5, (y, x, on.round(2))  # the peak sits on the circle in the last frame
    assert started[y, x] < 0.5, (y, x)  # and the circle has left that cell since frame 0
