"""The toy world model: codecs, tokenizer, training forward, and capture scored against ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ovi_attn_capture.toy import TOY_DIR, world
from ovi_attn_capture.toy.codec import AudioCodec, VideoCodec
from ovi_attn_capture.toy.evaluate import Misalignment, build_table, colour_masks, evaluate, score_file

BUNDLED = (TOY_DIR / "toy.safetensors").is_file()


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
# layer 0.95 (chance 0.14), 0.34 with the maps transposed, 0.70 two latent frames off.
PROMPTS = [
    "a yellow circle moves left. <AUDCAP>the circle beeps<ENDAUDCAP>",
    "a blue bar moves up. <AUDCAP>the bar beeps<ENDAUDCAP>",
    "a green circle moves left while a red bar moves right. <AUDCAP>the circle beeps<ENDAUDCAP>",
    "a green cross moves up while a yellow circle moves down. <AUDCAP>the cross beeps and the circle beeps<ENDAUDCAP>",
]
FLOOR = 0.8  # chance is ~0.15 on the 8 x 8 token grid


@pytest.fixture(scope="module")
def bundled_eval(tmp_path_factory):
    if not BUNDLED:
        pytest.skip("data/toy/toy.safetensors is not there (train it with python -m ovi_attn_capture.toy.train)")
    out = tmp_path_factory.mktemp("toy_eval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and immune to a busy CPU
    try:
        table = evaluate(PROMPTS, TOY_DIR, steps=16, layers="all", out_dir=out, console=False)
    finally:
        torch.set_num_threads(threads)
    return table, out


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


@pytest.mark.xfail(strict=True, reason="issue 19 target not met by these weights: the toy's self-attention "
                   "does not follow objects (soft-argmax track 1.66 cells on data/toy/eval.yaml, a still point "
                   "1.16); strict, so the test fails as soon as a model reaches the target")
def test_bundled_model_self_attention_tracks_moving_objects(bundled_eval):
    """Issue 19's target: a query on a moving object at frame 0 follows it, the best layer's
    soft-argmax track within one latent cell of the true centre on average, and clearly closer
    than a point that stays where it started."""
    table, _ = bundled_eval
    head = table.headline()
    assert head["track_distance_best_layer"] <= 1.0, head
    assert head["track_distance_best_layer"] < head["track_still_distance"] - 0.25, head


@pytest.mark.parametrize("wrong", [Misalignment(transpose=True), Misalignment(frame_shift=2)], ids=["transposed", "frames"])
def test_wrong_geometry_scores_lower(bundled_eval, wrong):
    table, _ = bundled_eval
    files = [score_file(f.path, wrong) for f in table.files]
    worse = build_table(files, table.steps, table.layers, 0.2)
    b = table.best_layer
    assert worse.at_final(worse.pointing)[b] < table.at_final(table.pointing)[b] - 0.15


def test_the_registry_agrees_with_the_bundled_file():
    """model/registry.py's toy configs (the world takes its clip length from the same row) are the
    bundled file's (read from the safetensors header without torch: compared with safetensors' reader)."""
    from safetensors import safe_open

    from ovi_attn_capture.model import registry
    from ovi_attn_capture.toy import WEIGHTS_FILE

    assert world.FRAMES == 17 and world.AUDIO_LATENTS == 22  # what the bundled weights were trained on
    if not BUNDLED:
        pytest.skip("data/toy/toy.safetensors is not there")
    with safe_open(str(WEIGHTS_FILE), framework="pt") as f:
        meta = f.metadata()
    assert registry.tower_configs("toy") == (json.loads(meta["video_config"]), json.loads(meta["audio_config"]))
