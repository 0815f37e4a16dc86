"""--view query / --view track on synthetic video_self DataArrays: tracks, pictures, files."""

import numpy as np
import pytest
import xarray as xr

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.views import query as Q

F, h, w = 5, 8, 8
T = 17  # pixel frames: 1 + 4 * (F - 1)


def _latent(n: int) -> int:
    return 0 if n <= 0 else (n + 3) // 4


def _clip(waveform=None) -> Q.Clip:
    frames = np.zeros((T, 128, 128, 3), np.uint8)
    frames[..., 1] = np.arange(T)[:, None, None] * 10
    return Q.Clip(lambda n: frames[n], T, _latent, (128, 128), 24.0, waveform, 16000)


def _moving_peak(path, spread=0.0, label="dot", start=(0, 0)) -> xr.DataArray:
    """A query map whose mass sits on cell path[f] (plus `spread` mass on the neighbour to the right)."""
    v = np.zeros((F, h, w), np.float32)
    for f, (y, x) in enumerate(path):
        v[f, y, x] = 1.0 - spread
        v[f, y, min(x + 1, w - 1)] += spread
    v /= v.sum((1, 2), keepdims=True) * F  # rows sum to 1 over the whole clip
    return xr.DataArray(v, dims=("frame", "y", "x"), name="video_self",
                        coords={"frame": np.arange(F), "query": label, "query_frame": 0, "query_latent_frame": 0,
                                "query_y": start[0], "query_x": start[1]})


PATH = [(1, 1), (2, 2), (3, 4), (5, 5), (6, 6)]


def test_argmax_track_follows_the_peak():
    t = Q.track(_moving_peak(PATH))
    assert t.dims == ("frame", "axis") and list(t.coords["axis"].values) == ["y", "x"]
    np.testing.assert_array_equal(t.values, np.asarray(PATH) + 0.5)


def test_soft_argmax_is_the_weighted_mean_position_above_the_background():
    m = _moving_peak(PATH, spread=0.25) + 0.01  # an even floor on every cell: no pull to the centre
    t = Q.track(m, "soft")
    want = np.asarray(PATH, float) + 0.5
    want[:, 1] += 0.25  # a quarter of the mass one cell to the right
    np.testing.assert_allclose(t.values, want, atol=1e-9)
    d = Q.distance_to(t, np.asarray(PATH, float) + 0.5)
    np.testing.assert_allclose(d, 0.25, atol=1e-9)


def test_nan_maps_give_nan_positions_and_bad_method_is_a_user_error():
    m = _moving_peak(PATH).copy()
    m[2] = np.nan
    t = Q.track(m)
    assert np.isnan(t.values[2]).all() and np.isfinite(t.values[[0, 1, 3, 4]]).all()
    with pytest.raises(UserError, match="unknown track method"):
        Q.track(m, "median")


def test_track_keeps_leading_dims():
    m = xr.concat([_moving_peak(PATH), _moving_peak(PATH[::-1])], dim="layer").assign_coords(layer=[3, 7])
    t = Q.track(m)
    assert t.dims == ("layer", "frame", "axis") and list(t.coords["layer"].values) == [3, 7]
    np.testing.assert_array_equal(t.sel(layer=7).values, np.asarray(PATH[::-1]) + 0.5)


def test_query_gif_marks_the_point_and_overlays_every_frame(tmp_path):
    import imageio.v3 as iio

    out = str(tmp_path / "q.gif")
    assert Q.view_query_gif(_moving_peak(PATH, start=(1, 1)), _clip(), out, caption=["query dot"]) == T
    frames = np.asarray(iio.imread(out, index=None))
    assert frames.shape[0] == T
    assert not np.array_equal(frames[0], frames[-1])  # the peak moves


def test_query_steps_gif_has_a_frame_per_step_and_marks_the_point(tmp_path):
    import imageio.v3 as iio

    sharp, spread = _moving_peak(PATH, start=(1, 1)), _moving_peak(PATH, spread=0.5, start=(1, 1))
    m = xr.concat([sharp, spread, sharp * np.nan], dim="step").assign_coords(step=[0, 5, 9])
    out = str(tmp_path / "s.gif")
    lines = [f"step {s}" for s in (0, 5, 9)]
    assert Q.view_query_steps_gif(m, _clip(), 4, out, lines, alpha=1.0, max_side=128) == 3
    frames = np.asarray(iio.imread(out, index=None))
    assert frames.shape[0] == 3
    assert not np.array_equal(frames[0], frames[1])  # the map changes between steps
    # step 9 was never computed: the colour of zero everywhere (opaque overlay), only the marker on it
    assert frames[2][100:120, 100:120].max() <= 8
    # the point (cell 1,1 of 8x8 -> pixel 24,24 of 128) carries the marker, not the map
    assert frames[2][24, 24].tolist() != frames[2][110, 110].tolist()


def test_query_grid_is_frames_by_layers():
    m = xr.concat([_moving_peak(PATH), _moving_peak(PATH[::-1])], dim="layer").assign_coords(layer=[3, 7])
    img = Q.view_query_grid(m, _clip(), cell_side=64, caption=["query dot"])
    assert img.dtype == np.uint8 and img.ndim == 3
    assert img.shape[0] > F * 64 and img.shape[1] >= 90 + 2 * 64


def test_track_mp4_has_every_frame_and_the_audio(tmp_path):
    import av

    out = str(tmp_path / "t.mp4")
    wav = np.sin(np.linspace(0, 200, 16000 * T // 24)).astype(np.float32) * 0.3
    maps = [_moving_peak(PATH, label="a", start=(1, 1)), _moving_peak(PATH[::-1], label="b", start=(6, 6))]
    assert Q.view_track(maps, _clip(wav), out) == T
    with av.open(out) as f:
        assert [s.type for s in f.streams] == ["video", "audio"]
        assert sum(1 for _ in f.decode(video=0)) == T


def test_track_without_queries_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="at least one video query"):
        Q.view_track([], _clip(), str(tmp_path / "t.gif"))


# ----------------------------------------------------------------------------- a capture file with queries


@pytest.fixture(scope="module")
def query_capture(tmp_path_factory):
    from synthetic import Synth, example_queries, write_synthetic

    path = tmp_path_factory.mktemp("q") / "run.h5"
    queries = example_queries()
    write_synthetic(path, Synth(queries=queries))
    return path, queries


def test_api_reads_query_maps_with_their_coordinates(query_capture):
    import ovi_attn_render as oa
    from synthetic import query_path

    path, queries = query_capture
    with oa.open_capture(path) as cap:
        assert [q["label"] for q in cap.queries] == ["hand", "dog", "bark"]
        m = cap.video_self("hand")
        assert m.dims == ("step", "layer", "frame", "y", "x") and m.name == "video_self"
        assert (int(m.query_y), int(m.query_x), int(m.query_frame)) == (2, 1, 4)
        np.testing.assert_allclose(m.sum(["frame", "y", "x"]).values, 1.0, atol=1e-3)  # int16 packing
        for f in range(3):
            peak = m.isel(step=-1, layer=0, frame=f).values.argmax()
            assert divmod(int(peak), 8) == query_path(queries[0], f)
        a = cap.audio_self("bark", steps=-1)
        assert a.dims == ("step", "layer", "audio_time") and int(a.isel(step=0, layer=0).argmax("audio_time")) == 4
        t = cap.track("dog", method="argmax")
        np.testing.assert_array_equal(t.values, np.asarray([query_path(queries[1], f) for f in range(3)]) + 0.5)
        with pytest.raises(UserError, match="video query 'cat' was not captured; captured: hand, dog"):
            cap.video_self("cat")


def test_cli_draws_query_and_track_views(query_capture, tmp_path, capsys):
    import av
    import imageio.v3 as iio
    from cli_calls import fails, ok, written

    path, _ = query_capture
    out, _ = ok(capsys, "info", path, "--no-tokens")
    assert "hand (frame 4, cell 2,1)" in " ".join(out.split()) and "bark (audio 0.128 s, token 4)" in " ".join(out.split())
    out, _ = ok(capsys, "render", path, "--view", "query", "--query", "hand", "-o", tmp_path)
    (gif,) = written(out)
    assert gif.name == "run_query_qhand.gif" and iio.imread(gif, index=None).shape[0] == 9  # every pixel frame
    out, _ = ok(capsys, "render", path, "--view", "query", "-q", "dog", "-o", tmp_path / "grid.png")
    assert iio.imread(written(out)[0]).ndim == 3
    out, _ = ok(capsys, "render", path, "--view", "query", "-q", "bark", "--format", "png", "-o", tmp_path)
    (png,) = written(out)
    assert png.name == "run_query_qbark.png" and iio.imread(png).shape[0] > 3 * 28  # a strip per layer
    assert "drawn as a PNG" in fails(capsys, "render", path, "--view", "query", "-q", "bark", "-o", tmp_path)
    out, _ = ok(capsys, "render", path, "--view", "track", "-o", tmp_path)
    (mp4,) = written(out)
    assert mp4.name == "run_track.mp4"
    with av.open(str(mp4)) as f:
        assert sorted(s.type for s in f.streams) == ["audio", "video"]
    out, _ = ok(capsys, "render", path, "--view", "query", "-q", "hand", "--over", "steps", "-o", tmp_path)
    (gif,) = written(out)
    assert gif.name == "run_query_qhand_over-steps.gif" and iio.imread(gif, index=None).shape[0] == 4  # every step
    out, _ = ok(capsys, "render", path, "--view", "query", "-q", "hand", "--over", "steps", "--steps", "1:3",
                "--frame", "0", "-o", tmp_path)
    (gif,) = written(out)
    assert gif.name == "run_query_qhand_over-steps_f0_s1-2.gif" and iio.imread(gif, index=None).shape[0] == 2
    assert "add --over steps" in fails(capsys, "render", path, "--view", "query", "-q", "hand", "--frame", "0")
    assert "writes a GIF over the steps" in fails(capsys, "render", path, "--view", "query", "-q", "hand", "--over",
                                                 "steps", "--format", "png")
    assert "unknown --over 'layers'" in fails(capsys, "render", path, "--view", "query", "--over", "layers")
    assert "--over does not apply to --view track" in fails(capsys, "render", path, "--view", "track", "--over",
                                                           "steps")
    assert "--view query draws one query point" in fails(capsys, "render", path, "--view", "query", "-q", "hand",
                                                         "-q", "dog")
    assert "--token does not apply to --view track" in fails(capsys, "render", path, "--view", "track", "-t", "man")
    assert "unknown --track 'mode'" in fails(capsys, "render", path, "--view", "track", "--track", "mode")
    assert "no video query points" in fails(capsys, "render", _file_without_queries(tmp_path), "--view", "track")


def _file_without_queries(tmp_path):
    from synthetic import write_synthetic

    p = tmp_path / "plain.h5"
    write_synthetic(p)
    return p


def test_api_render_returns_the_query_picture(query_capture):
    import ovi_attn_render as oa

    path, _ = query_capture
    frames = oa.render(str(path), "query", query="hand")
    assert frames.ndim == 4 and frames.shape[0] == 9
    assert oa.render(str(path), "query", query="hand", over="steps").shape[0] == 4  # one picture per step
