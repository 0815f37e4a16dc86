"""Batches: many prompt files, prompt variants and seed sweeps in one run, weights loaded once.

    ovi-attn capture a.yaml b.yaml prompts/ -o runs/

Inputs are prompt files and folders (their *.yaml / *.yml files, sorted). A file is one
prompt (a mapping) or a YAML list of prompt variants (one mapping per item); a prompt with
`seeds: [1, 2, 3]` runs once per seed. Each (prompt, seed) is a job whose file is named
from where it came from, so a rerun finds it again:

    runs/a_seed7.h5            a.yaml, seed 7
    runs/variants_v2_seed7.h5  item 2 (from 0) of the list in variants.yaml

A rerun skips files that are complete (resume) and redoes incomplete ones; --force redoes
all. A job that fails is recorded and the batch goes on; the summary table and
`runs/batch.json` list every job (prompt, seed, file, status, seconds, error) and the
command exits 1 if any failed. Jobs that agree on the model settings (components.LOAD_KEYS)
share one load of the weights. Under torchrun the jobs are shared out by distributed.py.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from ovi_attn_render.common.errors import UserError

from ovi_attn_capture.pipeline.prompt_file import RunSpec, parse_prompt_text

INDEX_NAME = "batch.json"
INDEX_VERSION = 1


@dataclass
class Job:
    index: int  # position in the batch: the index's row order, and what decides the rank
    label: str  # "a.yaml seed 7", "variants.yaml #2 seed 7"
    source: str  # the prompt file
    seed: int | None
    output: Path | None
    run: RunSpec | None  # None: refused before loading (error says why)
    error: str = ""


@dataclass
class Result:
    prompt: str  # the job's label
    seed: int | None
    file: str
    status: str  # complete | skipped (already complete) | failed
    seconds: float
    error: str = ""
    rank: int = 0  # the rank that wrote (or would have written) the file
    job: int = -1  # the job's position in the batch


# ----------------------------------------------------------------------------- inputs


def prompt_files(inputs: list[Path]) -> list[Path]:
    """The prompt files named by the inputs: files as given, folders' *.yaml and *.yml sorted."""
    files = []
    for path in map(Path, inputs):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise UserError(f"the folder {path} holds no .yaml prompt files; put prompt files in it or name files.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"prompt file {path} does not exist; check the path (data/prompts/example.yaml is a template)")
    return files


def _variant_texts(text: str, source: str) -> list[str] | None:
    """A YAML list of prompt mappings -> each item as its own prompt-file text, padded so that
    line numbers (and so error messages) stay those of the original file. None: not a list."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None  # parse_prompt_text reports it, with its line
    if not isinstance(root, yaml.SequenceNode):
        return None
    if not root.value:
        raise UserError(f"{source} is an empty list; list prompt mappings (- prompt: ...) or write one prompt")
    items = []
    for item in root.value:
        start, end = item.start_mark, item.end_mark
        if not isinstance(item, yaml.MappingNode):
            raise UserError(f"{source}, line {start.line + 1}: a list item must be a prompt mapping "
                            f"(- prompt: \"...\" with its keys indented below)")
        items.append("\n" * start.line + " " * start.column + text[start.index:end.index] + "\n")
    return items


def is_single(inputs: list[Path], overrides: dict | None = None) -> bool:
    """One prompt file holding one prompt without a seed sweep: the plain one-file capture."""
    if len(inputs) != 1 or not Path(inputs[0]).is_file() or (overrides or {}).get("--seeds") is not None:
        return False
    try:
        text = Path(inputs[0]).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # the plain path reports the problem
    return not isinstance(data, list) and not (isinstance(data, dict) and data.get("seeds") is not None)


def expand(inputs: list[Path], overrides: dict, out_dir: Path) -> list[Job]:
    """Every (prompt, seed) job of the inputs. A prompt that fails validation becomes a failed
    job (the others still run); two jobs that would write one file are refused now."""
    jobs: list[Job] = []

    def add(label, source, seed, output, run, error=""):
        jobs.append(Job(len(jobs), label, source, seed, output, run, error))

    for path in prompt_files(inputs):
        try:
            text = path.read_text(encoding="utf-8")
            variants = _variant_texts(text, str(path))
        except (OSError, UnicodeDecodeError) as err:
            add(path.name, str(path), None, None, None, f"prompt file {path} cannot be read ({err}); pass a UTF-8 .yaml file")
            continue
        except UserError as err:
            add(path.name, str(path), None, None, None, str(err))
            continue
        for v, item in enumerate(variants or [text]):
            tag, stem = (f"{path.name} #{v}", f"{path.stem}_v{v}") if variants else (path.name, path.stem)
            try:
                run = parse_prompt_text(item, source=str(path), overrides=overrides, base_dir=path.parent)
            except UserError as err:
                add(tag, str(path), None, None, None, str(err))
                continue
            run.source_path = path
            for seed in run.seeds or [run.seed]:
                add(f"{tag} seed {seed}", str(path), seed, out_dir / f"{stem}_seed{seed}.h5",
                    replace(run, seed=seed, seeds=None))
    _refuse_shared_outputs(jobs)
    return jobs


def _refuse_shared_outputs(jobs: list[Job]) -> None:
    seen: dict[Path, Job] = {}
    for job in jobs:
        if job.output is None:
            continue
        other = seen.setdefault(job.output.resolve(), job)
        if other is not job:
            raise UserError(f"{other.label} and {job.label} would both write {job.output}; "
                            f"give the prompt files different names or list each file once")


def is_complete(path: Path | None) -> bool:
    """A capture file that closed as complete (what a rerun skips)."""
    if path is None or not path.is_file():
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("status", "")) == "complete"
    except OSError:
        return False  # damaged or still open for writing: redo it


# ----------------------------------------------------------------------------- running


class JobRunner:
    """Runs jobs one after another on this process, loading weights once per load key."""

    def __init__(self, *, force: bool, mp4: bool, console, progress: bool, sp=None, rank: int = 0,
                 device_name: str | None = None):
        self.force, self.mp4, self.console, self.progress = force, mp4, console, progress
        self.sp, self.rank, self.device_name = sp, rank, device_name
        self.comp = None
        self.key = None
        self.load_error: tuple | None = None  # (key, message): a load that failed is not retried

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def skip(self, job: Job) -> Result | None:
        """The result for a job that does not run (refused, or complete already), else None."""
        if job.run is None:
            return Result(job.label, job.seed, "", "failed", 0.0, job.error, self.rank, job.index)
        if not self.force and is_complete(job.output):
            return Result(job.label, job.seed, str(job.output), "skipped", 0.0, "", self.rank, job.index)
        return None

    def run(self, job: Job) -> Result:
        """Capture one job; a failure becomes a failed Result (KeyboardInterrupt still stops)."""
        t0 = time.time()
        try:
            self._capture(job)
            status, error = "complete", ""
        except UserError as err:
            status, error = "failed", str(err)
        except Exception as err:  # noqa: BLE001 - one failing prompt must not stop the batch
            first = (str(err).strip().splitlines() or [""])[0]
            status, error = "failed", f"internal error: {type(err).__name__}: {first[:300]}"
        return Result(job.label, job.seed, str(job.output), status, round(time.time() - t0, 3), error, self.rank,
                      job.index)

    def _capture(self, job: Job) -> None:
        from ovi_attn_capture.pipeline.capture import resolve_device, run_capture
        from ovi_attn_capture.components.loading import bind_run, load_components, load_key, model_facts
        from ovi_attn_capture.pipeline.prompt_file import resolve_model_defaults

        run = job.run if self.device_name is None else replace(job.run, device=self.device_name)
        key = load_key(run)
        if self.load_error is not None and self.load_error[0] == key:
            raise UserError(self.load_error[1])
        if key != self.key:
            self.comp = self.key = None  # free the previous model before loading the next
            resolved = resolve_model_defaults(run, **model_facts(run.model))
            try:
                self.comp = load_components(resolved, resolve_device(resolved.device), self.say)
            except UserError as err:
                self.load_error = (key, str(err))
                raise
            self.key = key
        else:
            self.comp = bind_run(self.comp, resolve_model_defaults(run, **model_facts(run.model)))
        run_capture(run, job.output, force=job.output.exists(), console=self.console, progress=self.progress,
                    comp=self.comp, mp4=self.mp4, sp=self.sp)


def run_local(jobs: list[Job], out_dir: Path, *, force: bool, mp4: bool, console, progress: bool) -> list[Result]:
    """The whole batch in this process, then the summary table and the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = JobRunner(force=force, mp4=mp4, console=console, progress=progress)
    results = []
    for n, job in enumerate(jobs):
        results.append(run_one(runner, job, n, len(jobs), results))
    write_index(out_dir, results, {"world_size": 1, "sp_size": 1})
    return results


def run_one(runner: JobRunner, job: Job, n: int, total: int, done: list[Result], prefix: str = "") -> Result:
    """One job with its progress lines: '[2/5] a.yaml seed 7 -> runs/a_seed7.h5' and its outcome."""
    from rich.markup import escape

    result = runner.skip(job)
    if result is None:
        runner.say(f"{prefix}[bold]\\[{n + 1}/{total}][/] {escape(job.label)} -> {escape(str(job.output))}")
        result = runner.run(job)
    finished = sum(r.status != "failed" for r in done) + (result.status != "failed")
    failed = sum(r.status == "failed" for r in done) + (result.status == "failed")
    outcome = {"complete": f"[green]complete[/] in {result.seconds:.1f} s", "skipped": "[cyan]skipped[/] (complete already)",
               "failed": f"[red]failed[/]: {escape(result.error)}"}[result.status]
    runner.say(f"{prefix}\\[{n + 1}/{total}] {escape(job.label)}: {outcome}  (overall {finished} done, {failed} failed, "
               f"{total - n - 1} to go)")
    return result


# ----------------------------------------------------------------------------- index and summary


def write_index(out_dir: Path, results: list[Result], extra: dict) -> Path:
    """batch.json, written under a temporary name and renamed, so a reader never sees half of it."""
    path = out_dir / INDEX_NAME
    body = {"version": INDEX_VERSION, **extra,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "counts": {s: sum(r.status == s for r in results) for s in ("complete", "skipped", "failed")},
            "jobs": [asdict(r) for r in results]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)
    return path


def print_summary(results: list[Result], index: Path, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="batch", show_lines=False)
    for col in ("prompt", "seed", "file", "status", "seconds", "error"):
        table.add_column(col, overflow="fold")
    colour = {"complete": "green", "skipped": "cyan", "failed": "red"}
    for r in results:
        table.add_row(escape(r.prompt), "" if r.seed is None else str(r.seed), escape(Path(r.file).name if r.file else ""),
                      f"[{colour[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", escape(r.error))
    console.print(table)
    failed = sum(r.status == "failed" for r in results)
    console.print(f"{len(results) - failed} of {len(results)} done ({failed} failed); index: {escape(str(index))}",
                  highlight=False)
