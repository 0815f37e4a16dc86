"""Format 2 as other tools see it: netCDF-C (netCDF4-python, ncdump), xarray's default engine,
dask, a CF-1.11 checker; checksums that catch flipped bytes; format-1 files still read."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from synthetic import Synth, synthetic_layout, write_synthetic
from ovi_attn_render.cli import main
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.format import (DASK_CHUNKS, MAP_ENCODINGS, CaptureFileWriter, decode,
                                    estimate_bytes)
from ovi_attn_render.contract.kinds import MAP_KINDS
from ovi_attn_render.contract.reader import open_capture, read_strings

FORMAT1 = Path(__file__).parent / "data" / "format1_toy.h5"
MAP_VARS = tuple(MAP_KINDS)

PROMPT = """\
prompt: "a red circle moves left. <AUDCAP>the circle beeps<ENDAUDCAP>"
video_negative_prompt: ""
audio_negative_prompt: ""
model: toy
seed: 3
steps: 2
device: cpu
capture:
  tokens: [circle, red]
  kinds: [text_video, text_audio, video_audio, audio_video]
  branch: both
queries:
  - {frame: 4, x: 0.5, y: 0.25, label: top}
  - {token: circle, frame: 0, step: 0, label: found}
  - {time: 0.2, label: beep}
"""


@pytest.fixture(scope="module")
def toy_capture(tmp_path_factory) -> Path:
    """A real capture of every kind, both branches, the default encoding (.nc: CF's file name)."""
    tmp = tmp_path_factory.mktemp("nc")
    (tmp / "p.yaml").write_text(PROMPT)
    out = tmp / "run.nc"
    assert main(["capture", str(tmp / "p.yaml"), "-o", str(out), "--no-progress", "--no-mp4"]) == 0
    return out


def synthetic_file(tmp_path, encoding: str, name: str = "s.nc", **kw) -> Path:
    path = tmp_path / name
    write_synthetic(path, Synth(map_dtype=encoding, **kw))
    return path


def h5py_values(f: h5py.File, name: str) -> np.ndarray:
    """A variable as h5py reads it, decoded the way the reader decodes it."""
    ds = f[name]
    if ds.dtype.kind == "S" or h5py.check_string_dtype(ds.dtype):
        return np.array(read_strings(ds), dtype=object)
    if name in MAP_VARS:
        return decode(ds.attrs, ds[...])
    return ds[...]


def netcdf_variables(f: h5py.File) -> list[str]:
    """Every netCDF variable: datasets except bare dimensions (netCDF's own marker)."""
    return [k for k, ds in f.items() if not str(ds.attrs.get("NAME", b"")).count("not a netCDF variable")]


# ------------------------------------------------------------------------- netCDF-C clients


@pytest.mark.parametrize("which", ["toy int16", "float32", "float32-deflate"])
def test_netcdf4_python_reads_every_variable_as_h5py_decodes_it(toy_capture, tmp_path, which):
    netCDF4 = pytest.importorskip("netCDF4")
    path = toy_capture if which == "toy int16" else synthetic_file(tmp_path, which)
    with h5py.File(path, "r") as f, netCDF4.Dataset(path) as nc:
        names = netcdf_variables(f)
        assert set(nc.variables) == set(names)
        assert {"text_video", "text_audio", "video_audio", "audio_video", "audio_video_spatial", "video",
                "audio"} <= set(names)
        if which == "toy int16":  # the self-attention of query points, with their coordinates
            assert {"video_self", "audio_self", "query_label", "query_y", "audio_query_time"} <= set(names)
        for name in names:
            ours = h5py_values(f, name)
            theirs = nc[name][...]
            if np.ma.isMaskedArray(theirs):
                theirs = theirs.filled(np.nan) if theirs.dtype.kind == "f" else theirs.filled()
            theirs = np.asarray(theirs)
            if ours.dtype == object:
                assert theirs.tolist() == ours.tolist(), name
            else:
                assert theirs.dtype == ours.dtype, name
                np.testing.assert_array_equal(theirs, ours, err_msg=name)  # NaN where NaN
        assert nc.Conventions == "CF-1.11" and nc.title and nc.history and nc.source
        if which == "toy int16":
            assert nc["text_video"].dtype == np.int16 and nc["text_video"].filters()["fletcher32"]
            assert np.ma.getmaskarray(nc["text_audio"][1]).any()  # uncond: words absent from the empty negative
            found = np.ma.getmaskarray(nc["video_self"][:, 1])  # the adaptive query: [branch, step, ...]
            assert found[:, 0].all() and not found[:, 1].any()  # not computed before it was found (step 0)
            assert nc["query_y"][1] >= 0 and nc["query_found_at_step"][1] == 0


def test_xarray_default_engine_opens_it_with_coordinates(toy_capture):
    import xarray as xr

    assert xr.backends.plugins.guess_engine(str(toy_capture)) == "netcdf4"  # the engine that crashed on float16
    with xr.open_dataset(toy_capture) as ds, open_capture(toy_capture) as cap:
        assert ds.text_video.dtype == np.float32
        assert {"timestep", "sigma", "token_label", "token_kind", "branch_label"} <= set(ds.coords)
        assert ds.timestep.dims == ("step",) and ds.token_label.values.tolist() == cap.groups
        labelled = ds.swap_dims(token="token_label", branch="branch_label")
        got = labelled.text_video.sel(token_label="circle", branch_label="uncond").transpose("step", "layer", "head",
                                                                                           "frame", "y", "x")
        mine = cap.text_video(cap.token_index("circle"), branch="uncond")
        np.testing.assert_array_equal(got.values, mine.transpose(*got.dims).values)
        for name in ds.variables:
            ds[name].values  # every variable decodes


def test_ncdump_prints_the_header(toy_capture):
    if shutil.which("ncdump") is None:
        pytest.skip("ncdump (netcdf-bin) is not installed")
    out = subprocess.run(["ncdump", "-h", str(toy_capture)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'short text_video(branch, token, frame, step, layer, head, y, x)' in out.stdout
    assert ':Conventions = "CF-1.11"' in out.stdout and "text_video:scale_factor" in out.stdout
    assert "char token_label(token, token_label_strlen)" in out.stdout


def test_compliance_checker_cf_1_11_finds_no_errors_or_warnings(toy_capture, tmp_path):
    pytest.importorskip("compliance_checker")
    report = tmp_path / "cf.json"
    exe = Path(sys.executable).with_name("compliance-checker")
    out = subprocess.run([str(exe), "--test", "cf:1.11", "-f", "json", "-o", str(report), str(toy_capture)],
                         capture_output=True, text=True, timeout=300)
    result = json.loads(report.read_text())["cf:1.11"]
    msgs = [m for p in result["all_priorities"] for m in p["msgs"]]
    assert result["high_count"] == 0 and result["medium_count"] == 0, (msgs, out.stdout[-2000:])


# ------------------------------------------------------------------------- encodings


def test_packed_maps_are_within_7_6e_6_of_float32_and_nan_survives():
    enc = MAP_ENCODINGS["int16"]
    x = np.concatenate([np.linspace(0, 1, 200001, dtype=np.float32), [np.nan, 1.5, -0.1]]).astype(np.float32)
    stored = enc.encode("text_video", x)
    assert stored.dtype == np.int16 and stored[-3] == enc.fill
    back = decode(enc.attrs("text_video"), stored)
    assert np.isnan(back[-3]) and back[-2] == pytest.approx(1.0, abs=1e-6) and back[-1] == 0.0  # clipped
    assert back[0] == 0.0  # exactly: a never-attended key decodes to 0, not -1e-9
    err = np.abs(back[:-3] - x[:-3])
    assert err.max() <= 0.5 / 65534 + 1e-7  # float16 is off by up to 2.4e-4 for values near 1
    f16 = np.abs(x[:-3].astype(np.float16).astype(np.float32) - x[:-3])
    assert (err[x[:-3] >= 1e-3] <= f16[x[:-3] >= 1e-3] + 7.7e-6).all()


def test_unbounded_spatial_fusion_map_stays_float32_under_packing(tmp_path):
    path = synthetic_file(tmp_path, "int16")
    with h5py.File(path, "r") as f:
        assert f["text_video"].dtype == np.int16 and f["audio_video_spatial"].dtype == np.float32
        assert f["audio_video_spatial"].attrs["encoding"] == "float32"


@pytest.mark.parametrize("encoding", ["int16", "float32", "float16"])
def test_size_estimate_is_within_5_percent_and_space_is_allocated_at_creation(tmp_path, encoding):
    s = Synth(map_dtype=encoding, steps=6, layers=(0, 1, 2, 3), grid=(5, 16, 16), audio_tokens=40)
    path = tmp_path / "s.nc"
    write_synthetic(path, s)
    layout = synthetic_layout(s)  # the layout the file was written with
    created = tmp_path / "created.nc"
    CaptureFileWriter(created, layout).close("running")  # nothing written yet
    final = os.path.getsize(path)
    assert abs(estimate_bytes(layout) / final - 1) < 0.05
    assert abs(os.path.getsize(created) / final - 1) < 0.01  # the maps, frames and audio were allocated up front


# ------------------------------------------------------------------------- checksums


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


def _chunk_offset(path: Path, var: str, coord: tuple, at: float = 0.5) -> int:
    with h5py.File(path, "r") as f:
        info = f[var].id.get_chunk_info_by_coord(coord)
    return info.byte_offset + int(at * (info.size - 1))


def test_a_flipped_byte_in_a_map_is_named_in_one_sentence_and_never_drawn(tmp_path, capsys):
    path = synthetic_file(tmp_path, "int16")
    with open_capture(path) as cap:
        tok, step, layer, frame = cap.token_index("man"), 2, 1, 1
    # text_video dims: branch, token, frame, step, layer, head, y, x
    _flip(path, _chunk_offset(path, "text_video", (0, tok, frame, step, layer, 0, 0, 0)))
    with open_capture(path) as cap:
        with pytest.raises(UserError) as e:
            cap.text_video(tok, frames=[frame])
        cap.text_video(tok, frames=[0])  # other frames of the token still read
    msg = str(e.value)
    assert "the text_video map of token 'man', step 2, layer 1, latent frame 1 fails its Fletcher-32 checksum" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")
    import ovi_attn_render as oa

    api = oa.open_capture(path)  # the public API says the same
    with pytest.raises(UserError, match="token 'man', step 2, layer 1, latent frame 1 fails its Fletcher-32"):
        api.text_video("man", frame=4)

    out = tmp_path / "man.gif"
    out.write_bytes(b"an earlier picture")
    pixel = 4  # latent frame 1
    rc = main(["render", str(path), "--token", "man", "--frame", str(pixel), "-o", str(out), "--force"])
    err = capsys.readouterr()
    assert rc == 2 and "token 'man', step 2, layer 1" in (err.out + err.err)
    assert "Traceback" not in err.out + err.err
    assert out.read_bytes() == b"an earlier picture"  # never drawn, the old file untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ovi-attn-render-")]


def test_ten_random_flips_in_map_chunks_are_all_caught(tmp_path):
    path = synthetic_file(tmp_path, "int16", kinds=("text_video", "text_audio"))
    rng = np.random.default_rng(12)
    with h5py.File(path, "r") as f:
        shape = f["text_video"].shape
    for _ in range(10):
        coord = tuple(int(rng.integers(n)) for n in shape[:-2]) + (0, 0)
        offset = _chunk_offset(path, "text_video", coord, at=float(rng.uniform()))
        _flip(path, offset)
        b, tok, frame, step, layer = coord[:5]
        with open_capture(path) as cap:
            with pytest.raises(UserError, match=f"token '{cap.groups[tok]}', step {step}, layer {layer}"):
                cap.text_video(tok, frames=[frame], branch=b)
        _flip(path, offset)  # restore: the next flip is alone
    with open_capture(path) as cap:
        cap.text_video(0)  # all restored: reads


def test_damaged_frames_and_audio_are_named(tmp_path):
    path = synthetic_file(tmp_path, "int16")
    _flip(path, _chunk_offset(path, "video", (3, 0, 0, 0)))
    _flip(path, _chunk_offset(path, "audio", (0,)))
    with open_capture(path) as cap:
        with pytest.raises(UserError, match="decoded video frame 3 fails its Fletcher-32 checksum"):
            cap.frame(3)
        cap.frame(2)
        with pytest.raises(UserError, match="decoded audio fails its Fletcher-32 checksum"):
            cap.waveform()


# ------------------------------------------------------------------------- dask


@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks along dimension .frame.")
def test_dask_recipe_makes_one_token_at_one_frame_a_single_task(tmp_path):
    pytest.importorskip("dask")
    import xarray as xr

    path = synthetic_file(tmp_path, "int16")
    with xr.open_dataset(path, chunks=DASK_CHUNKS) as ds, open_capture(path) as cap:
        tv = ds.text_video
        assert dict(zip(tv.dims, tv.data.chunksize)) | {} == {
            "branch": 1, "token": 1, "frame": 1, "step": 4, "layer": 3, "head": 1, "y": 8, "x": 8}
        one = tv.isel(branch=0, token=0, frame=1)  # what the steps GIF draws: [step, layer, head, y, x]
        assert one.data.npartitions == 1
        np.testing.assert_array_equal(one.values, cap.text_video(0, frames=[1]).isel(frame=0).transpose(*one.dims))
    with xr.open_dataset(path, chunks={}) as ds:  # the on-disk chunks: one task per map
        assert ds.text_video.isel(branch=0, token=0, frame=1).data.npartitions == 4 * 3


# ------------------------------------------------------------------------- format 1


def test_format_1_fixture_still_reads_and_info_says_its_version(capsys):
    with open_capture(FORMAT1) as cap:
        assert cap.format_version == 1 and cap.groups == ["circle", "red", "<eos>", "<pad>"]
        assert cap.branches == ["cond", "uncond"] and cap.steps_done == 2
        m = cap.text_video(cap.token_index("circle"), branch="uncond")
        with h5py.File(FORMAT1, "r", locking=False) as f:
            raw = f["text_video"][1, 0]  # float16 [frame, step, layer, head, y, x]
        assert m.dims == ("frame", "step", "layer", "head", "y", "x")  # format 1's order, read from the file
        np.testing.assert_array_equal(m.values, raw.astype(np.float32))
        assert cap.token_table()[2]["piece"] == "▁circle"
    assert main(["info", str(FORMAT1)]) == 0
    assert "version 1 (HDF5, float16 maps, no checksums)" in capsys.readouterr().out


def test_info_says_format_2_and_the_encoding(tmp_path, capsys):
    path = synthetic_file(tmp_path, "int16")
    assert main(["info", str(path)]) == 0
    assert "version 2 (netCDF-4, CF-1.11; int16 maps, Fletcher-32 checksums)" in capsys.readouterr().out


def test_format_1_fixture_renders(tmp_path):
    out = tmp_path / "f1.gif"
    assert main(["render", str(FORMAT1), "--token", "circle", "--frame", "8", "-o", str(out)]) == 0
    assert out.stat().st_size > 0
