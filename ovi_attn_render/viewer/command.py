"""`ovi-attn view run.h5 [more.h5]`: start the viewer, print its address, open the browser."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import List, Optional

import typer

from ovi_attn_render.common.errors import UserError

DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
                        f"(0 picks a free one) or --host.") from None
    sock.listen(128)
    return sock


def view(
    paths: List[Path] = typer.Argument(..., metavar="CAPTURE.h5 [B.h5]",
                                       help="One capture, or two to see side by side."),
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="Port to listen on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on. Anything but loopback needs the printed access key."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the address only; do not open a browser."),
    out: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for 'save this view' (default: here)."),
) -> None:
    """Explore captures in the browser: scrub tokens, frames, steps, layers and heads."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("the viewer needs its web server; install it with pip install 'ovi-attn[view]'.") from None
    from rich.console import Console

    from ovi_attn_render.viewer.server import create_app
    from ovi_attn_render.viewer.sources import open_sources

    if not 1 <= len(paths) <= 2:
        raise UserError(f"view takes one capture file, or two to compare, got {len(paths)}.")
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number; give 1-65535, or 0 for any free port.")
    folder = os.path.abspath(out) if out is not None else os.getcwd()
    if not os.path.isdir(folder):
        raise UserError(f"--output {out} is not a folder; create it or pick another.")
    key = None
    if not is_loopback(host):
        key = secrets.token_urlsafe(18)
        Console(stderr=True, highlight=False).print(
            f"[yellow]warning:[/] listening on {host}, reachable from other machines; the page needs the "
            f"access key in its address, and anyone with the address can read these captures.")
    sources = open_sources([str(p) for p in paths])  # a damaged or foreign file: the CLI's sentence
    try:
        sock = _bind(host, port)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}/" + (f"?key={key}" if key else "")
        app = create_app(sources, folder, key)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        # plain print, flushed: a script or test waiting for the address reads it at once
        print(f"ovi-attn view: {', '.join(s.name for s in sources)} at {url}", flush=True)
        print("  read-only; Ctrl-C stops", flush=True)
        if not no_browser:
            import webbrowser

            threading.Timer(0.5, webbrowser.open, args=(url,)).start()
        server.run(sockets=[sock])
    finally:
        for s in sources:
            s.close()


def register(app: typer.Typer) -> None:
    app.command("view")(view)
