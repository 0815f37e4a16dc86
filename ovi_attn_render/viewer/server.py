"""The viewer's HTTP server: a Starlette app over the named capture files, run by uvicorn.

Read-only and closed: the routes below are all there is; files are addressed by their
position on the command line (`file=0`), never by a path, and the page's own three files
are read into memory at start. Maps travel as raw little-endian float32 (shape and
colour range in headers), pictures as PNG; JSON carries only metadata and bar values.
Every parameter goes through state.parse_state: a bad one is a 400 with one line.
"""

from __future__ import annotations

import hmac
import shlex
from importlib import resources

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ovi_attn_render.views import draw
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.viewer import compute
from ovi_attn_render.viewer.sources import Source
from ovi_attn_render.viewer.state import BadParameter, ViewState, int_param, parse_state

STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}


def _static_files() -> dict[str, bytes]:
    folder = resources.files("ovi_attn_render.viewer") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_TYPES}


def binary(arr: np.ndarray, **headers) -> Response:
    """A float32 array as raw little-endian bytes; X-Shape and the given headers describe it."""
    a = np.ascontiguousarray(arr, "<f4")
    h = {"X-Shape": ",".join(str(d) for d in a.shape), "Cache-Control": "no-store"}
    h.update({f"X-{k.replace('_', '-').title()}": str(v) for k, v in headers.items()})
    return Response(a.tobytes(), media_type="application/octet-stream", headers=h)


def file_meta(src: Source) -> dict:
    """Everything the page needs to build its controls for one capture."""
    cap = src.cap
    F, h, w = cap.grid
    return {
        "index": src.index, "name": src.name, "path": src.path, "prompt": str(cap.attrs.get("prompt", "")),
        "groups": cap.groups, "group_kinds": cap.group_kinds, "tokens": cap.token_table(),
        "steps": cap.steps.tolist(), "readable_steps": cap.readable_steps.tolist(),
        "num_steps": int(cap.attrs.get("num_steps", len(cap.steps))), "layers": cap.layers.tolist(),
        "heads": cap.heads.tolist(), "heads_mode": cap.heads_mode, "branches": cap.branches,
        "grid": [F, h, w], "frame_size": list(cap.frame_size),
        "display_size": list(draw.display_size(*cap.frame_size, compute.DISPLAY_SIDE)),
        "num_pixel_frames": cap.num_pixel_frames, "fps": cap.fps, "stride": cap.stride,
        "latent_frame_of_pixel": cap.latent_frame_of_pixel.tolist(),  # the file's table: the page never re-derives it
        "audio_tokens": cap.audio_tokens, "sample_rate": cap.sample_rate, "samples_per_token": cap.samples_per_token,
        "variables": cap.variables(), "has_audio": bool(cap.has_audio),
        "clip_written": cap.clip_written, "status": src.status(), "video_queries": compute.video_queries(src),
        "audio_queries": compute.audio_queries(src),
    }


def create_app(sources: list[Source], save_folder: str, access_key: str | None = None) -> Starlette:
    """The app. access_key: when set (a non-loopback --host), every request must carry ?key=."""
    static = _static_files()

    def state_of(request: Request) -> tuple[ViewState, Source]:
        s = parse_state(request.query_params, len(sources), request.query_params.getlist("token"))
        return s, sources[s.file]

    def first_token(s: ViewState) -> str:
        if not s.tokens:
            raise BadParameter("parameter token is missing; give a captured group label.")
        return s.tokens[0]

    def page(request: Request) -> Response:
        return Response(static["index.html"], media_type=STATIC_TYPES["index.html"])

    def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return PlainTextResponse(f"no such file {name[:40]!r}.", status_code=404)
        return Response(static[name], media_type=STATIC_TYPES[name])

    def files(request: Request) -> Response:
        for src in sources:
            src.refresh()
        return JSONResponse({"files": [file_meta(src) for src in sources], "save_folder": save_folder})

    def status(request: Request) -> Response:
        out = []
        for src in sources:
            src.refresh()
            st = src.status()
            st["readable_steps"] = src.cap.readable_steps.tolist()
            st["clip_written"] = src.cap.clip_written
            out.append(st)
        return JSONResponse({"files": out})

    def frame(request: Request) -> Response:
        s, src = state_of(request)
        return Response(compute.frame_png(src, s), media_type="image/png")

    def map_(request: Request) -> Response:
        s, src = state_of(request)
        m, lo, hi, signed = compute.token_map(src, s, first_token(s))
        return binary(m, lo=f"{lo:.9g}", hi=f"{hi:.9g}", signed=int(signed),
                      step=int(src.cap.steps[compute.step_position(src, s)]))

    def query_map(request: Request) -> Response:
        s, src = state_of(request)
        m, info = compute.query_map(src, s)
        return binary(m, **info)

    def audio_query_map(request: Request) -> Response:
        s, src = state_of(request)
        m, info = compute.audio_query_map(src, s)
        return binary(m, **info)

    def query_track(request: Request) -> Response:
        s, src = state_of(request)
        return binary(compute.query_track(src, s))

    def grid(request: Request) -> Response:
        s, src = state_of(request)
        png, S, L, h, w = compute.grid_png(src, s, first_token(s))
        return Response(png, media_type="image/png", headers={"X-Cells": f"{S},{L},{h},{w}"})

    def patch(request: Request) -> Response:
        s, src = state_of(request)
        return JSONResponse(compute.patch(src, s))

    def audio_strips(request: Request) -> Response:
        s, src = state_of(request)
        return binary(compute.audio_strips(src, s, first_token(s)))

    def sync(request: Request) -> Response:
        s, src = state_of(request)
        return binary(compute.sync_map(src, s))

    def waveform(request: Request) -> Response:
        s, src = state_of(request)
        columns = int_param(request.query_params, "columns", 16, 4096) or 800
        return binary(compute.waveform_envelope(src, columns))

    def spectrogram(request: Request) -> Response:
        s, src = state_of(request)
        return binary(compute.spectrogram_db(src))

    def audio(request: Request) -> Response:
        s, src = state_of(request)
        return Response(compute.audio_wav(src), media_type="audio/wav")

    def lut(request: Request) -> Response:
        s, _ = state_of(request)
        return Response(draw.colormap_lut(compute.cmap_name(s)).tobytes(), media_type="application/octet-stream")

    async def save(request: Request) -> Response:
        s, _ = state_of(request)
        from starlette.concurrency import run_in_threadpool

        return JSONResponse(await run_in_threadpool(compute.save_view, sources, s, save_folder))

    def command(request: Request) -> Response:
        s, _ = state_of(request)
        return JSONResponse({"command": " ".join(shlex.quote(c) for c in compute.render_command(sources, s))})

    routes = [Route("/", page), Route("/static/{name}", static_file), Route("/api/files", files),
              Route("/api/status", status), Route("/api/frame", frame), Route("/api/map", map_),
              Route("/api/grid", grid), Route("/api/patch", patch), Route("/api/audio_strips", audio_strips),
              Route("/api/query_map", query_map), Route("/api/query_track", query_track),
              Route("/api/audio_query_map", audio_query_map),
              Route("/api/sync", sync), Route("/api/waveform", waveform),
              Route("/api/spectrogram", spectrogram), Route("/api/audio", audio),
              Route("/api/lut", lut), Route("/api/command", command), Route("/api/save", save, methods=["POST"])]

    async def user_mistake(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(str(exc).splitlines()[0] if str(exc) else "bad request.", status_code=400)

    app = Starlette(routes=routes, exception_handlers={BadParameter: user_mistake, UserError: user_mistake})

    if access_key is not None:
        inner = app

        async def guarded(scope, receive, send):
            # the page's own code (static/) holds no capture data and loads without the key
            if scope["type"] == "http" and not scope.get("path", "").startswith("/static/"):
                from urllib.parse import parse_qs

                given = parse_qs(scope.get("query_string", b"").decode()).get("key", [""])[0]
                if not hmac.compare_digest(given, access_key):
                    await PlainTextResponse("this viewer needs its access key: open the address it printed, "
                                            "with ?key=...", status_code=403)(scope, receive, send)
                    return
            await inner(scope, receive, send)

        return guarded  # type: ignore[return-value]
    return app
