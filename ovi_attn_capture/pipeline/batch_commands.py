"""`ovi-attn capture` for batches and launcher-started runs: validation, then local or distributed.

Everything that can be refused is refused here, before any weights load: unreadable inputs,
two prompts writing one file, mixed or impossible sp_size values.
"""

from __future__ import annotations

from pathlib import Path

from ovi_attn_render.common.errors import UserError

from ovi_attn_capture.model import registry

from ovi_attn_capture.pipeline.batch import INDEX_NAME, Job, expand, print_summary, run_local
from ovi_attn_capture.parallel.distributed import check_sp_size, launched, run_distributed, shutdown, start, world_size


def _batch_sp_size(jobs: list[Job]) -> int:
    sizes = sorted({j.run.sp_size for j in jobs if j.run is not None})
    if len(sizes) > 1:
        raise UserError(f"the batch mixes sp_size values ({', '.join(map(str, sizes))}); one launch has one "
                        f"sequence-parallel layout: give every prompt the same sp_size (or pass --sp-size).")
    return sizes[0] if sizes else 1


def _check_layout(jobs: list[Job], sp_size: int) -> int | None:
    """sp_size against the launch and every model of the batch; returns the heads per tower."""
    heads = None
    for model in sorted({j.run.model for j in jobs if j.run is not None}):
        heads = registry.num_heads(model) if sp_size > 1 else None
        check_sp_size(sp_size, world_size(), heads, model)
    return heads


def capture_batch(inputs: list[Path], overrides: dict, output: Path | None, *, force: bool, mp4: bool,
                  progress: bool, console) -> int:
    out_dir = Path(output) if output is not None else Path(".")
    if out_dir.suffix in (".h5", ".hdf5"):
        raise UserError(f"-o {out_dir} names a file, but a batch writes one file per prompt and seed; "
                        f"pass a folder with -o (it is created if needed).")
    jobs = expand(inputs, overrides, out_dir)
    sp_size = _batch_sp_size(jobs)
    heads = _check_layout(jobs, sp_size)
    if launched():
        out_dir.mkdir(parents=True, exist_ok=True)
        return _distributed(jobs, out_dir, sp_size, heads, force=force, mp4=mp4, console=console)
    results = run_local(jobs, out_dir, force=force, mp4=mp4, console=console, progress=progress)
    print_summary(results, out_dir / INDEX_NAME, console)
    return 1 if any(r.status == "failed" for r in results) else 0


def capture_one_distributed(run, prompt_file: Path, output: Path, *, force: bool, mp4: bool, console) -> int:
    """One prompt file under a launcher: its sequence-parallel group writes `output`, as one process would."""
    job = Job(0, f"{Path(prompt_file).name} seed {run.seed}", str(prompt_file), run.seed, output, run)
    heads = _check_layout([job], run.sp_size)
    if output.exists() and not force:
        raise UserError(f"{output} already exists; pass --force to overwrite it or choose another path with -o.")
    return _distributed([job], output.parent, run.sp_size, heads, force=force, mp4=mp4, console=console, index=False)


def _distributed(jobs, out_dir, sp_size, heads, *, force, mp4, console, index=True) -> int:
    valid = [j.run for j in jobs if j.run is not None]
    world = start(sp_size, valid[0].device if valid else "auto", heads, valid[0].model if valid else "")
    try:
        return run_distributed(jobs, out_dir, world, force=force, mp4=mp4, console=console, index=index)
    finally:
        shutdown(world)
