"""A real `ovi-attn view` server in its own process, and a small client for its API.

Used by the viewer's tests and bench/view_latency.py; handy from a notebook or script too.
Only the standard library and numpy: no torch, no web client package.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding ovi_attn_render
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


class ViewerProcess:
    """`python -m ovi_attn_render.cli view FILES --no-browser --port 0` and its address."""

    def __init__(self, files, *extra: str, program: str | None = None, timeout: float = 60.0):
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        args = ["view", *[str(f) for f in files], "--no-browser", "--port", "0", *extra]
        if program:  # Python code that runs the CLI on sys.argv[1:] (e.g. behind an import blocker)
            cmd = [sys.executable, "-c", program, *args]
        else:
            cmd = [sys.executable, "-m", "ovi_attn_render.cli", *args]
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + timeout
        self.url = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"at (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        self.t_up = time.perf_counter()
        if self.url is None:
            self.stop()
            raise RuntimeError(f"the viewer did not start: {self.proc.stderr.read()[-2000:]}")
        parsed = urllib.parse.urlparse(self.url)
        self.base = f"{parsed.scheme}://{parsed.netloc}"
        self.key = urllib.parse.parse_qs(parsed.query).get("key", [None])[0]

    def get(self, path: str, params=None, method: str = "GET"):
        """(status, headers, body bytes) of one request; params: a dict or a list of pairs."""
        q = list(params.items()) if isinstance(params, dict) else list(params or [])
        if self.key:
            q.append(("key", self.key))
        url = self.base + path + ("?" + urllib.parse.urlencode(q) if q else "")
        req = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, path: str, params=None, method: str = "GET"):
        status, _, body = self.get(path, params, method)
        assert status == 200, body[:300]
        return json.loads(body)

    def floats(self, path: str, params=None):
        import numpy as np

        status, headers, body = self.get(path, params)
        assert status == 200, body[:300]
        shape = tuple(int(v) for v in headers["X-Shape"].split(",") if v)
        return np.frombuffer(body, "<f4").reshape(shape), headers

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
