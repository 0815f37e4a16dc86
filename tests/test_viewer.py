"""`ovi-attn view`: the HTTP API against the render package, and the page in headless Chromium.

One real toy-model capture (`tokens: all`, float32 maps, both branches) serves every test;
the server always runs as its own process (`python -m ovi_attn_render.cli view ...`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from ovi_attn_render.views import draw

from ovi_attn_render.views import video as views
from ovi_attn_render.cli import main
from ovi_attn_render.contract.format import MAP_ENCODINGS, decode
from ovi_attn_render.contract.kinds import MAP_KINDS
from ovi_attn_render.contract.reader import open_capture
from ovi_attn_render.viewer.process import CHROMIUM, CHROMIUM_ARGS, ViewerProcess as Server

from synthetic import Synth, write_synthetic
from test_cli import BLOCK_TORCH  # runs the CLI with torch unimportable

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

PROMPT = """\
prompt: "a red circle moves left while a blue bar stays still. <AUDCAP>the circle beeps<ENDAUDCAP>"
video_negative_prompt: ""
audio_negative_prompt: ""
model: toy
seed: 42
steps: 4
capture:
  tokens: all
  kinds: [text_video, text_audio, video_audio, audio_video]
  branch: both
  dtype: float32
"""


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer")
    (tmp / "p.yaml").write_text(PROMPT)
    out = tmp / "toy.h5"
    assert main(["capture", str(tmp / "p.yaml"), "-o", str(out), "--no-progress", "--no-mp4"]) == 0
    return out


@pytest.fixture(scope="module")
def server(capture, tmp_path_factory):
    saves = tmp_path_factory.mktemp("saves")
    with Server([capture], "-o", str(saves)) as s:
        s.saves = saves
        yield s


def cli_steps_maps(path, token, frame, **opts):
    """What `ovi-attn render --view steps` draws for one token: maps [S, h, w] and limits."""
    o = views.Options(tokens=[token], frame=frame, **opts)
    with open_capture(path) as cap:
        p = views.pick(cap, o)
        if o.view == "diff":
            cond, uncond = cap.branch_index("cond"), cap.branch_index("uncond")
            m = views.token_maps(cap, p, o, p.tokens[0], [p.latent], cond)[:, 0] - \
                views.token_maps(cap, p, o, p.tokens[0], [p.latent], uncond)[:, 0]
        else:
            m = views.token_maps(cap, p, o, p.tokens[0], [p.latent])[:, 0]
        lo, hi = views.limits(m, o.norm, o.view == "diff")
        return m, lo, hi, [int(s) for s in cap.steps[p.steps]]


# ---------------------------------------------------------------------- the API
@pytest.mark.parametrize("params,opts", [
    ({}, {}),
    ({"layers": "1-2", "reduce": "max", "norm": "step"}, {"layers": "1-2", "reduce": "max", "norm": "step"}),
    ({"branch": "uncond", "renorm": "1", "layers": "0"}, {"branch": "uncond", "renorm": True, "layers": "0"}),
    ({"branch": "diff", "norm": "absolute"}, {"view": "diff", "norm": "absolute"}),
])
def test_the_map_route_serves_the_arrays_the_cli_draws(server, capture, params, opts):
    token, frame = "circle", 9
    maps, lo, hi, steps = cli_steps_maps(capture, token, frame, **opts)
    for i, step in enumerate(steps):
        got, headers = server.floats("/api/map", {"token": token, "frame": frame, "step": step, **params})
        np.testing.assert_array_equal(got, maps[i].astype(np.float32))
        assert float(headers["X-Lo"]) == pytest.approx(float(lo[i]), rel=1e-6, abs=1e-9)
        assert float(headers["X-Hi"]) == pytest.approx(float(hi[i]), rel=1e-6, abs=1e-9)


def test_one_head_of_a_capture_with_every_head_is_the_cli_s(tmp_path):
    path = tmp_path / "heads.h5"
    write_synthetic(path, Synth(heads=2))
    with Server([path]) as s:
        maps, lo, hi, steps = cli_steps_maps(path, "man", 4, heads="1")
        got, headers = s.floats("/api/map", {"token": "man", "frame": 4, "step": steps[-1], "heads": "1"})
        np.testing.assert_array_equal(got, maps[-1])
        assert s.json("/api/files")["files"][0]["heads_mode"] == "all"


def test_a_patch_puts_mass_one_on_the_captured_groups_at_every_step_and_layer(server, capture):
    with open_capture(capture) as cap:
        F, h, w = cap.grid
        groups = cap.groups
    d = server.json("/api/patch", {"frame": 9, "y": h // 2, "x": w // 3, "step": 2})
    assert d["groups"] == groups and "<eos>" in groups and "<pad>" in groups
    assert sum(d["bars"]) == pytest.approx(1.0, abs=1e-4)
    over_steps, over_layers = np.array(d["over_steps"]), np.array(d["over_layers"])  # [G, S], [G, L]
    np.testing.assert_allclose(over_steps.sum(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(over_layers.sum(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(over_steps[:, 2], d["bars"], atol=1e-6)


@pytest.mark.parametrize("path,params,fragment", [
    ("/api/map", {"token": "circle", "frame": "abc"}, "frame"),
    ("/api/map", {"token": "circle", "frame": "999"}, "out of range"),
    ("/api/map", {"token": "circel"}, "did you mean"),
    ("/api/map", {"token": "circle", "step": "77"}, "not readable"),
    ("/api/map", {"token": "circle", "layers": "9"}, "layers"),
    ("/api/map", {"token": "circle", "layers": "../../etc"}, "selection"),
    ("/api/map", {"token": "circle", "norm": "loud"}, "norm"),
    ("/api/map", {"token": "circle", "heads": "1"}, "heads"),
    ("/api/map", {"token": "circle", "file": "1"}, "file"),
    ("/api/map", {"token": "circle", "alpha": "2"}, "alpha"),
    ("/api/map", {}, "token"),
    ("/api/patch", {"y": "40", "x": "0"}, "cell"),
    ("/api/waveform", {"columns": "1"}, "columns"),
])
def test_bad_parameters_get_400_and_one_line(server, path, params, fragment):
    status, _, body = server.get(path, params)
    text = body.decode()
    assert status == 400, text
    assert fragment in text and "\n" not in text.strip() and "Traceback" not in text


def test_only_the_named_files_and_the_page_are_served(server, capture):
    for path in ("/static/../viewer/server.py", "/static/server.py", "/etc/passwd", "/api/nothing"):
        assert server.get(path)[0] == 404, path
    files = server.json("/api/files")["files"]
    assert [f["path"] for f in files] == [str(capture)]
    assert server.get("/api/save", {"token": "circle"})[0] == 405  # GET does not write
    status, headers, body = server.get("/")
    assert status == 200 and b"app.js" in body and b"http" not in body.replace(b"https://", b"")


def test_frames_are_the_pictures_render_draws_on(server, capture):
    import cv2

    status, headers, body = server.get("/api/frame", {"frame": 9})
    assert status == 200 and headers["content-type"] == "image/png"
    got = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    with open_capture(capture) as cap:
        want = views.background(cap, 9, draw.display_size(*cap.frame_size, 512), [])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("norm", ["global", "frame"])
def test_the_grid_shows_every_layer_and_step_as_render_grid_scales_them(server, capture, norm):
    import cv2

    status, headers, body = server.get("/api/grid", {"token": "blue", "frame": 5, "norm": norm})
    assert status == 200
    S, L, h, w = (int(v) for v in headers["X-Cells"].split(","))
    img = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert img.shape == (L * (h + 1) - 1, S * (w + 1) - 1, 3)
    o = views.Options(tokens=["blue"], frame=5, norm=norm)
    with open_capture(capture) as cap:
        p = views.pick(cap, o)
        maps = views.token_maps(cap, p, o, p.tokens[0], [p.latent], keep_layers=True)[:, :, 0]  # [S, L, h, w]
    lo, hi = views.limits(maps, norm)
    lut = draw.colormap_lut("inferno")
    for j, i in ((0, 0), (S - 1, L - 1), (S // 2, 1)):
        cell = img[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w]
        np.testing.assert_array_equal(cell, draw.apply_lut(draw.normalise(maps[j, i], lo[j, i], hi[j, i]), lut))


def test_a_map_request_reads_a_small_part_of_the_file(server, capture):
    def rchar() -> int:
        for line in open(f"/proc/{server.proc.pid}/io"):
            if line.startswith("rchar"):
                return int(line.split()[1])
        raise AssertionError("no rchar")

    before = rchar()
    server.floats("/api/map", {"token": "bar", "frame": 13, "step": 1})
    read = rchar() - before
    assert 0 < read < os.path.getsize(capture) / 4, read


def test_save_writes_the_picture_of_the_command_it_shows(server, capture, tmp_path):
    params = [("token", "red"), ("token", "blue"), ("frame", "5"), ("layers", "1-2"), ("norm", "step")]
    d = server.json("/api/save", params, method="POST")
    assert os.path.dirname(d["path"]) == str(server.saves) and d["path"].endswith(".gif")
    cmd = shlex.split(d["command"])
    assert cmd[:3] == ["ovi-attn", "render", str(capture)] and "--layers" in cmd and "--norm" in cmd
    again = tmp_path / "again.gif"
    assert main([*cmd[1:cmd.index("-o")], "-o", str(again)]) == 0
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(d["path"], index=None), iio.imread(again, index=None))
    d2 = server.json("/api/save", params, method="POST")  # never over an earlier save
    assert d2["path"] != d["path"] and os.path.exists(d["path"])


def test_damaged_and_foreign_files_are_refused_at_start_with_the_cli_sentence(tmp_path, capsys):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    for bad in (foreign, damaged, tmp_path / "missing.h5"):
        assert main(["info", str(bad)]) == 2
        sentence = capsys.readouterr().err
        assert main(["view", str(bad), "--no-browser", "--port", "0"]) == 2
        assert capsys.readouterr().err == sentence


def test_a_host_other_than_loopback_warns_and_needs_the_access_key(capture):
    with Server([capture], "--host", "0.0.0.0") as s:
        assert s.key and len(s.key) >= 20
        assert s.get("/api/files")[0] == 200  # with the key
        key, s.key = s.key, None
        assert s.get("/api/files")[0] == 403 and s.get("/")[0] == 403
        wrong = key[:-1] + ("x" if key[-1] != "x" else "y")  # one character off
        assert s.get("/api/files", {"key": wrong})[0] == 403
        assert s.get("/static/app.js")[0] == 200  # the page's own code carries no data
        s.stop()
        assert "warning" in s.proc.stderr.read()




@pytest.fixture(scope="module")
def query_file(tmp_path_factory):
    """A synthetic capture with two video query points and an audio one (tests/synthetic.py)."""
    from synthetic import example_queries

    path = tmp_path_factory.mktemp("viewer_q") / "q.h5"
    write_synthetic(path, Synth(queries=example_queries()))
    return path


@pytest.fixture(scope="module")
def plain_file(query_file):
    """The same synthetic capture without query points, beside query_file (the compare tests)."""
    path = query_file.parent / "plain.h5"
    write_synthetic(path, Synth())
    return path


def api_audio_query(path, label: str, step: int, layers: str | None = None, **opts):
    """An audio query's attention at one step, the selected layers averaged: [La], and the
    same through views.query's read path (the one --view query draws)."""
    import ovi_attn_render as oa
    from ovi_attn_render.views import query as Q

    with oa.open_capture(path) as cap:
        want = cap.audio_self(label, steps=str(step), layers=layers, **opts).isel(step=0).mean("layer")
        o = views.Options(view="query", queries=[label], steps=str(step), layers=layers, **opts)
        drawn, _ = Q.audio_query_map(cap.file, o, label)  # (layer, audio_time), on the reader
    np.testing.assert_array_equal(drawn.mean("layer").values, want.values)
    return want


def test_the_query_routes_serve_the_maps_and_track_render_draws(query_file):
    import ovi_attn_render as oa
    from ovi_attn_render.views import query as Q

    with oa.open_capture(query_file) as cap:
        want = cap.video_self("hand", steps="2", layers="1-2").isel(step=0).mean("layer")  # (frame, y, x)
        track = cap.track("dog", method="argmax")  # the last step, every layer
    with Server([query_file]) as s:
        meta = s.json("/api/files")["files"][0]
        assert [(q["label"], q["pixel_frame"], q["y"], q["x"]) for q in meta["video_queries"]] == \
            [("hand", 4, 2, 1), ("dog", 0, 5, 3)]  # the audio query is not drawn over frames
        assert meta["audio_queries"] == [{"label": "bark", "audio_token": 4, "time": 0.128}]
        for frame in (0, 4, 8):
            got, h = s.floats("/api/query_map", {"query": "hand", "frame": frame, "step": 2, "layers": "1-2"})
            latent = int(h["X-Latent"])
            np.testing.assert_allclose(got, want.isel(frame=latent).values, rtol=1e-6)
            assert float(h["X-Hi"]) == pytest.approx(Q.colour_top(want), rel=1e-6) and float(h["X-Lo"]) == 0.0
            assert (int(h["X-Query-Y"]), int(h["X-Query-X"]), int(h["X-Query-Frame"]), int(h["X-Step"])) == (2, 1, 4, 2)
        got, _ = s.floats("/api/query_track", {"query": "dog", "track": "argmax"})
        np.testing.assert_allclose(got, track.values, rtol=1e-6)
        for params, fragment in (({"query": "cat"}, "video query 'cat' was not captured"), ({}, "query is missing"),
                                 ({"query": "bark"}, "video query 'bark' was not captured"),
                                 ({"query": "hand", "track": "mode"}, "track"),
                                 ({"query": "hand", "branch": "diff"}, "one branch")):
            status, _, body = s.get("/api/query_track" if "track" in params else "/api/query_map", params)
            assert status == 400 and fragment in body.decode() and "\n" not in body.decode().strip(), body


def test_the_audio_query_route_serves_what_the_api_and_view_query_read(query_file):
    from ovi_attn_render.views import query as Q

    with Server([query_file]) as s:
        seen = []
        for step, layers in ((2, "1-2"), (0, "0"), (3, None), (1, "2")):
            want = api_audio_query(query_file, "bark", step, layers)
            params = {"query": "bark", "step": step, **({"layers": layers} if layers else {})}
            got, h = s.floats("/api/audio_query_map", params)
            assert got.shape == (12,)
            np.testing.assert_allclose(got, want.values, rtol=1e-6)
            assert float(h["X-Lo"]) == 0.0 and float(h["X-Hi"]) == pytest.approx(Q.colour_top(want), rel=1e-6)
            assert (int(h["X-Query-Audio-Token"]), float(h["X-Query-Time"]), int(h["X-Step"])) == (4, 0.128, step)
            assert int(got.argmax()) == 4  # most of the mass on the query's own token
            seen.append(got)
        assert not any(np.array_equal(a, b) for a, b in zip(seen, seen[1:]))  # each selection its own numbers
        for params, fragment in (({"query": "barc"}, "audio query 'barc' was not captured (did you mean 'bark'?)"),
                                 ({"query": "hand"}, "audio query 'hand' was not captured; captured: bark."),
                                 ({}, "parameter query is missing; give a captured audio query label."),
                                 ({"query": "bark", "branch": "diff"}, "one branch"),
                                 ({"query": "bark", "step": "9"}, "not readable"),
                                 ({"query": "bark", "heads": "1"}, "mean over heads")):
            status, _, body = s.get("/api/audio_query_map", params)
            text = body.decode()
            assert status == 400 and fragment in text and "\n" not in text.strip() and "Traceback" not in text, text


def test_the_query_routes_serve_the_second_file_s_queries(query_file, plain_file):
    import ovi_attn_render as oa

    with oa.open_capture(query_file) as cap:
        video = cap.video_self("dog", steps="1").isel(step=0).mean("layer")  # (frame, y, x)
        track = cap.track("hand", method="soft", steps="1")
    audio = api_audio_query(query_file, "bark", 1)
    with Server([plain_file, query_file]) as s:
        files = s.json("/api/files")["files"]
        assert (files[0]["video_queries"], files[0]["audio_queries"]) == ([], [])
        assert [q["label"] for q in files[1]["video_queries"] + files[1]["audio_queries"]] == ["hand", "dog", "bark"]
        got, h = s.floats("/api/query_map", {"file": 1, "query": "dog", "step": 1, "frame": 0})
        np.testing.assert_allclose(got, video.isel(frame=int(h["X-Latent"])).values, rtol=1e-6)
        got, _ = s.floats("/api/query_track", {"file": 1, "query": "hand", "step": 1})
        np.testing.assert_allclose(got, track.values, rtol=1e-6)
        got, _ = s.floats("/api/audio_query_map", {"file": 1, "query": "bark", "step": 1})
        np.testing.assert_allclose(got, audio.values, rtol=1e-6)
        for path, tower in (("/api/query_map", "video"), ("/api/audio_query_map", "audio")):
            status, _, body = s.get(path, {"file": 0, "query": "bark" if tower == "audio" else "dog"})
            text = body.decode()
            assert status == 400 and f"this capture has no {tower} query points" in text and "\n" not in text.strip()


def test_save_with_a_query_writes_the_query_panel_s_picture_of_the_command_it_shows(query_file, tmp_path):
    import imageio.v3 as iio

    saves = tmp_path / "saves"
    saves.mkdir()
    with Server([query_file], "-o", str(saves)) as s:
        for label, ext in (("hand", ".gif"), ("bark", ".png")):
            d = s.json("/api/save", [("query", label), ("step", "1"), ("layers", "1-2"), ("query_file", "0")],
                       method="POST")
            assert "path" not in d  # no token picked: the query panel's picture alone
            assert os.path.dirname(d["query_path"]) == str(saves) and d["query_path"].endswith(ext)
            cmd = shlex.split(d["query_command"])
            assert cmd[:7] == ["ovi-attn", "render", str(query_file), "--view", "query", "--query", label]
            assert (cmd[cmd.index("--steps") + 1], cmd[cmd.index("--layers") + 1]) == ("1", "1-2")
            again = tmp_path / f"again{ext}"
            assert main([*cmd[1:cmd.index("-o")], "-o", str(again)]) == 0
            np.testing.assert_array_equal(iio.imread(d["query_path"], index=None), iio.imread(again, index=None))
        status, _, body = s.get("/api/save", [], method="POST")
        assert status == 400 and "pick at least one token or a query point" in body.decode()


def test_the_server_works_where_torch_cannot_be_imported(capture):
    with Server([capture], program=BLOCK_TORCH) as s:
        for path, params in (("/api/files", {}), ("/api/map", {"token": "red"}), ("/api/grid", {"token": "red"}),
                             ("/api/patch", {"y": 1, "x": 1}), ("/api/audio_strips", {"token": "red"}),
                             ("/api/sync", {}), ("/api/audio", {}), ("/api/waveform", {}), ("/api/spectrogram", {})):
            assert s.get(path, params)[0] == 200, path


def test_view_without_its_extra_says_which_to_install(capture):
    code = BLOCK_TORCH.replace('name == "torch" or name.startswith("torch.")', 'name in ("starlette", "uvicorn")')
    assert code != BLOCK_TORCH
    r = subprocess.run([sys.executable, "-c", code, "view", str(capture), "--no-browser"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "pip install 'ovi-attn[view]'" in r.stderr and "Traceback" not in r.stderr


def _grow(partial, ref, steps_done: int) -> None:
    """Play the writer: copy steps of a complete file into a partial one, then mark them done."""
    with h5py.File(partial, "r+", locking=False) as f, h5py.File(ref, "r") as r:
        for var in ("text_video", "text_audio", "video_audio", "audio_video", "audio_video_spatial"):
            if var in f:
                axis = MAP_KINDS[var].dims.index("step")
                sl = (slice(None),) * axis + (slice(0, steps_done),)
                f[var][sl] = r[var][sl]
        f.attrs["steps_done"] = steps_done
        f.flush()


def test_status_follows_a_running_capture_and_tells_a_stopped_one(tmp_path):
    ref, live = tmp_path / "ref.h5", tmp_path / "live.h5"
    write_synthetic(ref, Synth(steps=4))
    write_synthetic(live, Synth(steps=4, steps_done=1))
    with Server([live]) as s:
        st = s.json("/api/status")["files"][0]
        assert st["state"] == "running" and st["text"] == "running, step 1 of 4"
        _grow(live, ref, 3)
        time.sleep(0.05)
        st = s.json("/api/status")["files"][0]
        assert st["text"] == "running, step 3 of 4" and st["readable_steps"] == [0, 1, 2]
        assert s.floats("/api/map", {"token": "man", "step": 2})[0].shape == (8, 8)
        with h5py.File(live, "r+", locking=False) as f:
            f.attrs["status"] = "interrupted"
        st = s.json("/api/status")["files"][0]
        assert st["state"] == "stopped" and st["text"].startswith("stopped (interrupted)")


def test_status_of_a_running_file_whose_writer_is_gone_is_the_sentence_info_gives(tmp_path):
    import socket

    live = tmp_path / "live.h5"
    write_synthetic(live, Synth(steps=4, steps_done=2))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    with h5py.File(live, "r+", locking=False) as f:
        f.attrs.update({"heartbeat": time.time() - 5, "writer_pid": gone.pid, "writer_host": socket.gethostname()})
    with Server([live]) as s:
        st = s.json("/api/status")["files"][0]
    assert st["state"] == "stopped"
    assert st["text"].startswith("stopped without finishing (no write for ")
    assert st["text"].endswith(f" s; process {gone.pid} on this host is gone), 2 of 4 steps")


# ---------------------------------------------------------------------- the page in Chromium
@pytest.fixture(scope="module")
def browser():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is missing (apt-get install chromium; scripts/env.sh does it as root)"
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the viewer's browser tests cannot run under CI: {missing}")
        pytest.skip(missing)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A page of the viewer, with every console error and page error collected."""

    def __init__(self, browser, url: str, viewport=(1400, 950)):
        self.page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.wait_for_function("window.ovi && window.ovi.painted", timeout=30000)
        self.idle()

    def idle(self) -> None:
        self.page.evaluate("ovi.idle()")

    def state(self) -> dict:
        return self.page.evaluate("ovi.state")

    def canvas(self, i: int = 0) -> np.ndarray:
        """The drawn pixels of file i's frame canvas, uint8 [H, W, 3] (through a lossless PNG)."""
        import base64

        import cv2

        url = self.page.evaluate(f"document.getElementById('canvas-{i}').toDataURL('image/png')")
        png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
        return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def slide(self, element_id: str, value) -> None:
        """Move a slider or pick a select option as a user does (input + change events)."""
        self.page.evaluate(f"""(() => {{ const el = document.getElementById('{element_id}');
            el.value = '{value}'; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }})()""")
        self.idle()

    def message(self) -> str:
        return self.page.evaluate("document.getElementById('message').textContent")


def expected_canvas(server, state: dict) -> np.ndarray:
    """The overlay render draws for the page's state, from the API's frame and maps."""
    import cv2

    base = {"frame": state["frame"], "step": state["step"], "branch": state["branch"], "norm": state["norm"],
            "reduce": state["reduce"], "renorm": "1" if state["renorm"] else "0"}
    layers = {"all": "all", "one": None, "range": f"{state['layerLo']}-{state['layerHi']}"}[state["layerMode"]]
    files = server.json("/api/files")["files"][0]
    base["layers"] = str(files["layers"][state["layer"]]) if layers is None else layers
    _, _, png = server.get("/api/frame", base)
    bg = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    vs = []
    for t in state["tokens"]:
        m, headers = server.floats("/api/map", {**base, "token": t})
        vs.append(draw.upsample(draw.normalise(m, float(headers["X-Lo"]), float(headers["X-Hi"])), bg.shape[:2]))
    if len(vs) == 1:
        return draw.overlay(bg, vs[0], draw.colormap_lut(state["cmap"]), float(state["alpha"]))
    return draw.overlay_tokens(bg, vs, draw.TOKEN_COLOURS[:len(vs)], float(state["alpha"]))


def assert_canvas_is(page: Page, server) -> np.ndarray:
    got = page.canvas()
    want = expected_canvas(server, page.state())
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    return got


def test_the_page_draws_what_render_draws_as_token_step_layer_and_frame_change(browser, server):
    page = Page(browser, server.url)
    first = assert_canvas_is(page, server)
    page.page.click("#groups .chip[data-group='bar']")  # add a second token
    page.page.click("#groups .chip[data-group='a']")  # and drop the first
    page.idle()
    assert page.state()["tokens"] == ["bar"]
    seen = [first, assert_canvas_is(page, server)]
    page.slide("step", 1)
    assert page.state()["step"] == 1
    seen.append(assert_canvas_is(page, server))
    page.slide("layer-mode", "one")
    page.slide("layer", 2)
    seen.append(assert_canvas_is(page, server))
    page.slide("frame", 2)
    seen.append(assert_canvas_is(page, server))
    page.page.click("#groups .chip[data-group='circle']")  # two tokens, two hues
    page.idle()
    seen.append(assert_canvas_is(page, server))
    page.slide("norm", "frame")
    page.slide("alpha", 0.8)
    seen.append(assert_canvas_is(page, server))
    page.page.click("#groups .chip[data-group='circle']")  # back to one token, another colour map
    page.slide("cmap", "viridis")
    seen.append(assert_canvas_is(page, server))
    page.page.click("#groups .chip[data-group='blue']")
    page.slide("branch", "diff")  # cond - uncond: one token, the diverging colours
    assert page.state()["tokens"] == ["blue"]
    page.slide("cmap", "inferno")
    got = page.canvas()
    want = expected_canvas(server, {**page.state(), "cmap": "diverging"})
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
    seen.append(got)
    for a, b in zip(seen, seen[1:]):
        assert not np.array_equal(a, b)  # every change redrew different pixels
    assert "--layers 2" in page.page.text_content("#command")
    assert page.errors == [] and page.message() == ""
    page.page.close()


def test_clicking_a_patch_shows_bars_that_sum_to_one(browser, server):
    page = Page(browser, server.url)
    box = page.page.locator("#canvas-0").bounding_box()
    page.page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
    page.page.wait_for_function("window.ovi.lastPatch")
    page.idle()
    d = page.page.evaluate("ovi.lastPatch")
    assert len(d["bars"]) == len(d["groups"]) and sum(d["bars"]) == pytest.approx(1.0, abs=1e-4)
    assert "sum 1.000" in page.page.text_content("#patch-where")
    page.page.hover("#groups .chip[data-group='blue']")  # hovering a group lights its prompt tokens
    lit = page.page.eval_on_selector_all(".tok.hl", "els => els.map(e => e.textContent.trim())")
    assert lit == ["blue"]
    page.page.click("#save")
    page.page.wait_for_function("window.ovi.lastSave", timeout=60000)
    saved = page.page.evaluate("ovi.lastSave")
    assert os.path.exists(saved["path"]) and page.page.text_content("#command").startswith("ovi-attn render ")
    assert page.errors == [] and page.message() == ""
    page.page.close()


def test_the_grid_selects_a_layer_and_step_and_playback_advances(browser, server):
    page = Page(browser, server.url)
    box = page.page.locator("#grid").bounding_box()
    cells = page.page.evaluate("ovi.gridCells")
    page.page.mouse.click(box["x"] + cells["cw"] * 1.5, box["y"] + cells["ch"] * 2.5)  # step 1, layer 2
    page.idle()
    st = page.state()
    assert (st["step"], st["layerMode"], st["layer"]) == (1, "one", 2)
    page.page.click("#play-steps")
    page.page.wait_for_function("ovi.state.step !== 1", timeout=5000)
    page.page.click("#play-steps")  # stop
    page.slide("frame", 0)
    page.page.click("#play-frames")
    page.page.wait_for_function("ovi.state.frame >= 4", timeout=10000)
    page.page.click("#play-frames")
    page.idle()
    assert page.errors == []
    page.page.close()


def test_two_files_side_by_side_share_one_colour_scale(browser, capture, tmp_path):
    other = tmp_path / "other.h5"
    shutil.copy(capture, other)
    with h5py.File(other, "r+") as f:  # a second run whose maps are twice as hot (through the file's encoding)
        ds = f["text_video"]
        enc = MAP_ENCODINGS[str(f.attrs["map_dtype"])].for_variable("text_video")
        ds[...] = enc.encode("text_video", 2 * decode(ds.attrs, ds[...]))
    with Server([capture, other]) as s:
        page = Page(browser, s.url)
        page.slide("step", 2)
        last = page.page.evaluate("ovi.lastMaps")
        assert last["0"]["ranges"] == last["1"]["ranges"]
        want = []
        for i in (0, 1):
            _, h = s.floats("/api/map", {"file": i, "token": "a", "frame": page.state()["frame"], "step": 2})
            want.append((float(h["X-Lo"]), float(h["X-Hi"])))
        lo, hi = last["0"]["ranges"][0]
        assert lo == pytest.approx(min(w[0] for w in want)) and hi == pytest.approx(max(w[1] for w in want))
        assert "compare" in page.page.text_content("#command")
        assert page.errors == []
        page.page.close()


def test_a_running_capture_gains_steps_on_the_page(browser, tmp_path):
    ref, live = tmp_path / "ref.h5", tmp_path / "live.h5"
    write_synthetic(ref, Synth(steps=4))
    write_synthetic(live, Synth(steps=4, steps_done=1))
    with Server([live]) as s:
        page = Page(browser, s.url)
        assert page.page.text_content("#status") == "running, step 1 of 4"
        _grow(live, ref, 3)
        page.page.wait_for_function("document.getElementById('status').textContent === 'running, step 3 of 4'",
                                    timeout=10000)
        page.page.wait_for_function("ovi.state.step === 2", timeout=10000)  # it follows the newest step
        page.idle()
        assert page.page.evaluate("document.getElementById('step').max") == "2"
        assert page.errors == [] and page.message() == ""
        page.page.close()


def test_the_page_works_behind_the_access_key(browser, capture):
    with Server([capture], "--host", "0.0.0.0") as s:
        page = Page(browser, s.url.replace("0.0.0.0", "127.0.0.1"))
        assert page.state()["tokens"] and page.errors == [] and page.message() == ""
        page.page.close()


def test_the_page_shows_a_query_point_s_attention_its_point_and_track(browser, query_file):
    import base64

    import cv2

    with Server([query_file]) as s:
        page = Page(browser, s.url)
        assert page.page.is_hidden("#query-panel") and not page.page.is_hidden("#query-box")
        labels = page.page.eval_on_selector_all("#query option", "els => els.map(e => e.value)")
        assert labels == ["", "hand", "dog", "bark"]
        page.page.uncheck("#show-track")
        page.slide("frame", 4)  # the query's own frame: the ring is filled
        page.slide("query", "hand")
        assert page.page.is_visible("#query-panel") and page.state()["query"] == "hand"
        st = page.state()

        def drawn() -> np.ndarray:
            url = page.page.evaluate("document.getElementById('query-canvas').toDataURL('image/png')")
            png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
            return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

        got = drawn()
        base = {"frame": 4, "step": st["step"]}
        _, _, png = s.get("/api/frame", base)
        bg = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        m, h = s.floats("/api/query_map", {**base, "query": "hand"})
        want = draw.overlay(bg, draw.upsample(draw.normalise(m, 0.0, float(h["X-Hi"])), bg.shape[:2]),
                            draw.colormap_lut("inferno"), float(st["alpha"]))
        H, W = bg.shape[:2]
        cy, cx = (2 + 0.5) * H / m.shape[0], (1 + 0.5) * W / m.shape[1]  # the query's cell 2,1
        yy, xx = np.mgrid[:H, :W]
        near = np.hypot(yy - cy, xx - cx) <= max(5, H // 40) + 5
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff[~near].max() <= 2 and m.max() > 0  # the map over the frame, as render overlays it
        assert diff[near].max() > 50  # and the point on it
        assert tuple(got[int(cy), int(cx) + 3]) == draw.TOKEN_COLOURS[0]  # filled on its own frame
        page.page.check("#show-track")
        page.idle()
        track, _ = s.floats("/api/query_track", {**base, "query": "hand"})
        np.testing.assert_allclose(page.page.evaluate("ovi.lastQuery.track"), track.ravel(), rtol=1e-6)
        assert not np.array_equal(drawn(), got)  # the track is drawn
        page.slide("frame", 8)  # another latent frame: another map, the ring open
        later = page.page.evaluate("ovi.lastQuery")
        assert later["latent"] == s.json("/api/files")["files"][0]["latent_frame_of_pixel"][8] != 1
        assert tuple(drawn()[int(cy), int(cx) + 3]) != draw.TOKEN_COLOURS[0]
        assert "query hand" in page.page.text_content("#query-caption")
        assert page.errors == [] and page.message() == ""
        page.page.close()


def test_the_page_draws_an_audio_query_s_strip_for_the_second_file_and_a_saved_view_restores_it(
        browser, query_file, plain_file, tmp_path):
    import base64

    import cv2

    def drawn(page, canvas: str) -> np.ndarray:
        url = page.page.evaluate(f"document.getElementById('{canvas}').toDataURL('image/png')")
        png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
        return cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    with Server([plain_file, query_file], "-o", str(tmp_path)) as s:  # saves land in tmp_path
        page = Page(browser, s.url)
        assert page.page.is_visible("#query-box") and page.page.is_visible("#query-file")
        assert page.page.is_disabled("#query")  # the first file has none, and says so
        assert "plain.h5 has no query points" in page.page.text_content("#query-none")
        page.slide("query-file", 1)
        assert page.page.is_hidden("#query-none")
        options = page.page.eval_on_selector_all("#query option", "els => els.map(e => [e.value, e.textContent])")
        assert [v for v, _ in options] == ["", "hand", "dog", "bark"] and "audio, 0.128 s" in options[3][1]
        page.slide("step", 1)
        page.slide("query", "bark")
        assert page.page.is_visible("#query-audio") and page.page.is_hidden("#query-canvas")
        assert page.page.is_hidden("#track-row")  # an audio query has no track
        m, h = s.floats("/api/audio_query_map", {"file": 1, "query": "bark", "step": 1})
        last = page.page.evaluate("ovi.lastQuery")
        assert (last["tower"], last["file"], last["step"], last["token"]) == ("audio", 1, 1, 4)
        np.testing.assert_array_equal(np.float32(last["values"]), m)
        got = drawn(page, "query-audio")
        W, La = got.shape[1], len(m)
        row = last["strip"]["top"] + last["strip"]["height"] // 2
        colours = draw.apply_lut(draw.normalise(m, 0.0, float(h["X-Hi"])), draw.colormap_lut("inferno"))  # [La, 3]
        for l in range(La):
            x = int((l + 0.5) * W / La)
            if l == 4:
                assert tuple(got[row, x]) == (255, 255, 255)  # the query's own token: the white line
            else:
                assert np.abs(got[row, x].astype(int) - colours[l].astype(int)).max() <= 2, l
        assert len({tuple(colours[l]) for l in range(La)}) > 2  # the strip is not one colour
        assert "audio query bark (0.128 s, audio token 4)" in page.page.text_content("#query-caption")
        page.page.click("#save")
        page.page.wait_for_function("window.ovi.lastSave", timeout=60000)
        link = page.page.evaluate("ovi.lastSave.link")
        saved = page.page.evaluate("ovi.lastSave")
        assert saved["query_path"].endswith(".png") and os.path.exists(saved["query_path"])
        assert "--view query --query bark --steps 1" in page.page.text_content("#command")
        assert page.page.get_attribute("#view-link", "href") == link

        again = Page(browser, link)  # the saved view: the same query panel
        st = again.state()
        assert (st["query"], st["queryFile"], st["step"]) == ("bark", 1, 1)
        assert again.page.evaluate("document.getElementById('query-file').value") == "1"
        assert again.page.evaluate("document.getElementById('query').value") == "bark"
        np.testing.assert_array_equal(drawn(again, "query-audio"), got)

        page.slide("query", "hand")  # a video query, its track by argmax: the live address names it
        page.slide("track", "argmax")
        page.slide("frame", 8)
        assert page.page.is_visible("#query-canvas") and page.page.is_hidden("#query-audio")
        video = drawn(page, "query-canvas")
        restored = Page(browser, page.page.url)
        st = restored.state()
        want = ("hand", 1, "argmax", 8, True)
        assert (st["query"], st["queryFile"], st["track"], st["frame"], st["showTrack"]) == want
        track, _ = s.floats("/api/query_track", {"file": 1, "query": "hand", "step": 1, "track": "argmax"})
        q = restored.page.evaluate("ovi.lastQuery")
        assert (q["tower"], q["file"], q["method"]) == ("video", 1, "argmax")
        np.testing.assert_allclose(q["track"], track.ravel(), rtol=1e-6)
        np.testing.assert_array_equal(drawn(restored, "query-canvas"), video)

        gone = Page(browser, page.page.url.replace("query_file=1", "query_file=0"))  # not a query of that file
        assert gone.state()["query"] == "" and "not a query point of plain.h5" in gone.page.text_content("#saved")
        for p in (page, again, restored, gone):
            assert p.errors == [] and p.message() == "", p.errors
            p.page.close()
