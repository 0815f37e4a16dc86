"""Real capture processes for the lifecycle tests: start one, stop it at a chosen phase
(the OVI_ATTN_TEST_HOOK pause, see ovi_attn_render/common/hooks.py), signal or kill it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py

TOY_PROMPT = """\
prompt: "a red circle moves left while a blue bar stays still. <AUDCAP>the circle beeps<ENDAUDCAP>"
video_negative_prompt: ""
audio_negative_prompt: ""
model: toy
seed: 3
steps: {steps}
capture:
  tokens: [circle, bar]
  kinds: [text_video, text_audio]
"""


def write_toy_prompt(folder: Path, steps: int = 4, name: str = "toy.yaml") -> Path:
    p = Path(folder) / name
    p.write_text(TOY_PROMPT.format(steps=steps))
    return p


class Proc:
    """`ovi-attn ARGS` in its own process, paused at `pause` (a phase name) if given."""

    def __init__(self, args: list[str], hook_dir: Path, pause: str | None = None, extra_hook: str = ""):
        self.hook_dir = Path(hook_dir)
        self.hook_dir.mkdir(parents=True, exist_ok=True)
        spec = ",".join(x for x in ((f"pause@{pause}" if pause else ""), extra_hook) if x)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OVI_ATTN_TEST_HOOK=spec, OVI_ATTN_TEST_HOOK_DIR=str(hook_dir))
        self.p = subprocess.Popen([sys.executable, "-m", "ovi_attn_render.cli", *map(str, args)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(self, phase: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not (self.hook_dir / phase).exists():
            if self.p.poll() is not None:
                out, err = self.p.communicate()
                raise AssertionError(f"the process ended (rc {self.p.returncode}) before {phase}: {err[-2000:]}")
            if time.time() > deadline:
                raise AssertionError(f"{phase} not reached in {timeout} s")
            time.sleep(0.02)

    def release(self, phase: str) -> None:
        (self.hook_dir / (phase + ".go")).touch()

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        out, err = self.p.communicate(timeout=timeout)
        return self.p.returncode, out, err

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()


def status_of(path: Path) -> tuple[str, int]:
    with h5py.File(path, "r", locking=False) as f:
        return str(f.attrs["status"]), int(f.attrs["steps_done"])


def opens_everywhere(path: Path) -> int:
    """Open in h5py, xarray and our reader; return steps_done (the test fails if any cannot)."""
    import xarray as xr

    from ovi_attn_render.contract.reader import open_capture

    with h5py.File(path, "r", locking=False) as f:
        done = int(f.attrs["steps_done"])
    xr.open_dataset(path, engine="h5netcdf").close()
    with open_capture(path) as cap:
        assert cap.steps_done == done
        if done:
            cap.text_video(0, steps=list(range(done)))
    return done
