"""The reader: coordinates, token lookup, and hyperslab reads of only the chunks asked for."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from synthetic import BASE, Synth, hot_value, write_synthetic

from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.reader import open_capture, read_hyperslab
from ovi_attn_render.contract.selection import SelectionError, describe_values, parse, resolve


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cap") / "run.h5"
    write_synthetic(path, Synth(steps=6, layers=(3, 5, 7, 9), heads=2, map_dtype="float32"))
    return path


def test_coordinates(run):
    with open_capture(run) as cap:
        assert cap.status == "complete" and not cap.partial and cap.steps_done == 6
        assert cap.grid == (3, 8, 8) and cap.num_pixel_frames == 9 and cap.frame_size == (256, 256)
        assert list(cap.layers) == [3, 5, 7, 9] and list(cap.heads) == [0, 1]
        assert cap.kinds == ["text_video", "text_audio", "video_audio", "audio_video"]
        assert cap.frame(8).shape == (256, 256, 3) and cap.waveform().shape == (12 * 512,)
        assert [r["groups"] for r in cap.token_table()][1] == ["man"]


def test_token_index(run):
    with open_capture(run) as cap:
        assert cap.token_index("man") == 0 and cap.token_index("man#2") == 2
        assert cap.token_index("PARK") == 1 and cap.token_index("<eos>") == 3
        with pytest.raises(UserError, match="did you mean 'park'"):
            cap.token_index("prk")


def test_text_video_values_and_shape(run):
    with open_capture(run) as cap:
        da = cap.text_video(0, steps=[1, 4, 5], layers=[0, 3], heads=[1], frames=[1])
        assert da.dims == ("frame", "step", "layer", "head", "y", "x")  # the file's order, token read
        assert list(da.step.values) == [int(cap.steps[i]) for i in (1, 4, 5)] and list(da.frame.values) == [1]
        m = da.transpose("step", "layer", "head", "frame", "y", "x").values
        assert m.shape == (3, 2, 1, 1, 8, 8) and m.dtype == np.float32
        assert np.allclose(m[:, :, 0, 0, 2, 5], np.array([hot_value(s) for s in (1, 4, 5)])[:, None])
        m[:, :, :, :, 2, 5] = BASE
        assert np.allclose(m, BASE)


def test_read_hyperslab_touches_only_selected_chunks(tmp_path):
    """Each chunk is one 2-D map: count chunk reads through HDF5's own read calls."""
    p = tmp_path / "h.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("x", shape=(5, 6, 4, 4), chunks=(1, 1, 4, 4), dtype="f4")
        d[...] = np.arange(5 * 6 * 16, dtype="f4").reshape(5, 6, 4, 4)
    with h5py.File(p, "r") as f:
        d = f["x"]
        got = read_hyperslab(d, [[0, 2, 3], [1, 4, 5], range(4), range(4)])  # two non-progressions
        want = d[...][[0, 2, 3]][:, [1, 4, 5]]
        assert np.array_equal(got, want)
        assert np.array_equal(read_hyperslab(d, [[4], [0, 2, 4], range(4), range(4)]), d[...][4:5, 0:5:2])


def test_selection_grammar():
    assert resolve("0:50:5", np.arange(50), "steps") == list(range(0, 50, 5))
    assert resolve("10-19,25", np.arange(30), "layers") == list(range(10, 20)) + [25]
    assert resolve("-1", np.arange(4), "steps") == [3]
    assert resolve(None, np.arange(3), "steps") == [0, 1, 2]
    assert resolve("3-9", np.array([3, 5, 7, 9]), "layers") == [0, 1, 2, 3]  # values, not positions
    assert resolve(":3", np.array([0, 2, 4]), "steps") == [0, 1]
    with pytest.raises(UserError, match="captured layers: 3,5,7,9"):
        resolve("4", np.array([3, 5, 7, 9]), "layers", what="captured layers")
    with pytest.raises(SelectionError, match="backwards"):
        parse("9-3")
    assert describe_values([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
