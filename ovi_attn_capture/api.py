"""The Python API of the capture side: one call runs what `ovi-attn capture` runs, silently.

    import ovi_attn_capture as oc
    summary = oc.capture("data/prompts/example.yaml", "run.h5", num_steps=10, seed=7)
    summary.path, summary.steps, summary.groups

Options are the prompt file's keys (docs/PROMPT.md) and the CLI's flag names
(`num_steps`, `capture_steps`, `tokens`, ...); they override the file, as the flags do.
Nothing is printed: pass `on_progress(steps_done, steps)` to follow the sampler.
Mistakes raise ovi_attn_render.UserError with the sentence the CLI prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def capture(prompt: str | Path | dict, output: str | Path | None = None, *, force: bool = False,
            mp4: bool = True, on_progress: Callable[[int, int], None] | None = None, **overrides):
    """Generate one clip and write its capture file; returns the CaptureSummary (path, bytes,
    steps, layers, groups, kinds, seconds, ...).

    prompt: a prompt file, or a dict of prompt-file keys. output: the .h5 to write (default:
    the file's `output:`, else the prompt file's name with .h5 in the working folder).
    force: replace an existing file (the old one stays until the new capture completes).
    mp4: also write the clip as an MP4 beside the file."""
    import yaml

    from ovi_attn_capture.pipeline.capture import run_capture
    from ovi_attn_capture.pipeline.prompt_file import OVERRIDABLE, load_prompt_file, parse_prompt_text
    from ovi_attn_render.common.errors import UserError

    # num_steps= is the flag --num-steps; a name that is no flag is a prompt-file key (steps=...)
    flags = {"--" + k.replace("_", "-"): v for k, v in overrides.items()}
    overrides = {(f if f in OVERRIDABLE else k): v for (k, v), f in zip(overrides.items(), flags)}
    if isinstance(prompt, dict):
        run = parse_prompt_text(yaml.safe_dump(prompt), source="<prompt dict>", overrides=overrides)
        fallback = None
    else:
        run = load_prompt_file(prompt, overrides)
        fallback = Path(Path(prompt).with_suffix(".h5").name)
    out = output or (Path(run.output) if run.output else fallback)
    if out is None:
        raise UserError("give output= (or an `output:` key) for a capture from a dict of keys.")
    return run_capture(run, Path(out), force=force, console=None, progress=False, mp4=mp4, on_progress=on_progress)
