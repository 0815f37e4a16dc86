"""The map kinds registry, the clip geometry, and the reader taking both from the file."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest

from synthetic import Synth, write_synthetic
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract import geometry as geo
from ovi_attn_render.contract import kinds
from ovi_attn_render.contract.reader import open_capture


def test_every_capture_kind_writes_variables_and_every_row_is_consistent():
    assert kinds.CAPTURE_KINDS == ("text_video", "text_audio", "video_audio", "audio_video")
    assert kinds.variables_of("audio_video") == ("audio_video", "audio_video_spatial")
    for row in kinds.MAP_KINDS.values():
        assert {"branch", "step", "layer"} <= set(row.dims)
        assert set(row.value_dims) == set(row.dims) - {"branch", "step", "layer"}
    assert kinds.MAP_KINDS["audio_video_spatial"].value_max is None  # a sum, packed as float32


def test_a_row_whose_write_dims_disagree_with_its_file_dims_is_refused():
    with pytest.raises(ValueError, match="value_dims"):
        kinds.MapKind("video_self", "video_self", dims=("branch", "step", "layer", "head", "query", "y", "x"),
                      value_dims=("head", "y", "x"), chunk_trailing=2, description="self-attention")


def test_geometry_maps_pixel_frames_to_latent_frames_both_ways():
    F = 5
    T = geo.pixel_frame_count(F)
    assert T == 17
    of = geo.latent_frame_of(np.arange(T))
    assert of.tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]
    for f in range(F):
        assert [n for n in range(T) if of[n] == f] == list(geo.pixel_frames_of(f))
    assert geo.token_grid(F, (960, 960)) == (5, 30, 30) and geo.token_cell_pixels() == (32, 32)
    edges = geo.latent_frame_edges(F, fps=24.0)
    assert edges[1] == pytest.approx(1 / 24) and edges[-1] == pytest.approx(T / 24)


def test_reader_takes_each_frames_latent_frame_from_the_file(tmp_path):
    path = tmp_path / "g.h5"
    write_synthetic(path, Synth())
    with open_capture(path) as cap:
        assert cap.latent_frame(4) == 1 and cap.geometry.pixel_frames_of(2) == [5, 6, 7, 8]
        assert cap.num_pixel_frames == 9 and cap.default_frame == cap.geometry.default_frame == 4
    with h5py.File(path, "r+") as f:  # a (valid) table other than the stride's: the reader follows the file
        table = f["latent_frame_of_pixel"][...]
        table[4] = 2
        f["latent_frame_of_pixel"][...] = table
    with open_capture(path) as cap:
        assert cap.latent_frame(4) == 2
        assert cap.pixel_frames_of(1) == [1, 2, 3] and cap.pixel_frames_of(2) == [4, 5, 6, 7, 8]
        assert cap.pixel_frames_of(2) == cap.geometry.pixel_frames_of(2)
    with h5py.File(path, "r+") as f:  # a table that falls back: damaged, said in one sentence
        table[5] = 0
        f["latent_frame_of_pixel"][...] = table
    with pytest.raises(UserError, match="damaged: latent_frame_of_pixel should rise"):
        open_capture(path)


def test_reader_reads_maps_in_the_dim_order_the_file_declares(tmp_path, monkeypatch):
    usual, moved = tmp_path / "usual.h5", tmp_path / "moved.h5"
    write_synthetic(usual, Synth())
    row = kinds.MAP_KINDS["text_video"]
    step_major = ("branch", "step", "layer", "token", "head", "frame", "y", "x")
    monkeypatch.setitem(kinds.MAP_KINDS, "text_video", replace(row, dims=step_major))
    write_synthetic(moved, Synth())
    monkeypatch.setitem(kinds.MAP_KINDS, "text_video", row)  # the reader must not need the registry's order
    with open_capture(usual) as a, open_capture(moved) as b:
        assert b.map_dims["text_video"] == step_major and a.map_dims["text_video"] == row.dims
        x, y = a.text_video(0), b.text_video(0)
        assert x.dims != y.dims
        np.testing.assert_array_equal(x.transpose(*y.dims).values, y.values)
        np.testing.assert_array_equal(x.step.values, y.step.values)
        m = b.maps("text_video", 0, steps=[1], layers=[2])
        assert m.reduce("head", "mean").order("step", "layer", "frame", "y", "x").shape == (1, 1, 3, 8, 8)
