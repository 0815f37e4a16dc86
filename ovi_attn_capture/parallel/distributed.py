"""Many processes: torchrun data parallel over a batch, with sequence-parallel groups.

    torchrun --nproc-per-node 8 -m ovi_attn_capture prompts/ -o runs/            # 8 prompts at a time
    torchrun --nproc-per-node 8 -m ovi_attn_capture prompts/ -o runs/ --sp-size 4  # 2 at a time, 4 GPUs each

World: W processes (torchrun's RANK, WORLD_SIZE, LOCAL_RANK; NCCL on GPUs, gloo on CPUs).
With sp_size K, ranks g*K .. g*K+K-1 form group g, which runs one prompt at a time
(sequence_parallel.py), its first rank writing the file; the batch's jobs go round-robin
over the W/K groups (job j -> group j % (W/K)), so no two processes write one file.

Waits that can be long (a peer still loading weights or decoding the previous clip, the
end of the batch) go through the launcher's key-value store, never through a collective:
every rank publishes a heartbeat and the job it is on, and a waiting rank that sees a
peer's heartbeat stop names that rank and its prompt instead of hanging. Collectives
only run inside a forward pass (all-to-alls, map reductions), bounded by the process
group's timeout (OVI_ATTN_COLLECTIVE_TIMEOUT, seconds). At the end rank 0 collects every
rank's results from the store and writes the one index.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from rich.markup import escape

from ovi_attn_render.common.errors import UserError

from ovi_attn_capture.pipeline.batch import Job, JobRunner, Result, is_complete, print_summary, run_one, write_index

PREFIX = "ovi-attn/"
BEAT_SECONDS = 1.0


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"{name} must be a number of seconds, got {os.environ[name]!r}; unset it or fix it.") from None


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_sp_size(sp_size: int, size: int, heads: int | None, model: str) -> None:
    """Refuse an sp_size that cannot work, before anything loads."""
    if sp_size == 1:
        return
    if size == 1:
        raise UserError(f"sp_size {sp_size} runs one prompt on {sp_size} processes, but this is one process; "
                        f"launch it with `torchrun --nproc-per-node {sp_size} -m ovi_attn_capture ...` or set sp_size: 1.")
    if size % sp_size:
        raise UserError(f"sp_size {sp_size} does not divide the {size} processes of this launch; use an sp_size "
                        f"that divides {size} (data parallel runs over the rest), or change --nproc-per-node.")
    if heads is not None and heads % sp_size:
        raise UserError(f"sp_size {sp_size} does not divide the {heads} attention heads of the {model} model "
                        f"(each rank takes whole heads); use a divisor of {heads}.")


class Stopped(BaseException):
    """SIGTERM (torchrun stops every rank when one fails). A BaseException, like KeyboardInterrupt,
    so that the per-job error handling does not swallow it."""


@dataclass
class World:
    rank: int
    size: int
    sp_size: int
    device_name: str
    store: object
    sp: object | None  # SequenceParallel of this rank's group, None when sp_size == 1
    dead_after: float

    @property
    def group(self) -> int:
        return self.rank // self.sp_size

    @property
    def groups(self) -> int:
        return self.size // self.sp_size

    @property
    def writes(self) -> bool:
        return self.rank % self.sp_size == 0

    def mine(self, jobs: list[Job]) -> list[Job]:
        return [j for j in jobs if j.index % self.groups == self.group]

    def owner(self, job: Job) -> int:
        """The rank that writes this job's file."""
        return (job.index % self.groups) * self.sp_size

    # ------------------------------------------------------------------ the store
    def put(self, key: str, value) -> None:
        self.store.set(PREFIX + key, json.dumps(value))

    def get(self, key: str):
        return json.loads(self.store.get(PREFIX + key))

    def has(self, key: str) -> bool:
        return self.store.check([PREFIX + key])

    def doing(self, label: str) -> None:
        """Publish the job this rank is on (named in others' messages if it dies)."""
        self.put(f"job/{self.rank}", label)

    def last_job(self, rank: int) -> str:
        try:
            return self.get(f"job/{rank}") if self.has(f"job/{rank}") else "no prompt yet (loading)"
        except Exception:  # noqa: BLE001 - the store itself may be gone
            return "an unknown prompt"

    def wait_for(self, key: str, ranks: list[int], deadline: float | None = None) -> tuple[dict, list[int]]:
        """Wait until each rank has published `key/<rank>`; returns (values, dead ranks): a rank whose
        heartbeat has not moved for dead_after seconds is dead. deadline: give up then (ranks left = dead)."""
        values, dead = {}, []
        seen = {r: (None, time.monotonic()) for r in ranks}
        pending = list(ranks)
        while pending:
            for r in list(pending):
                if self.has(f"{key}/{r}"):
                    values[r] = self.get(f"{key}/{r}")
                    pending.remove(r)
                    continue
                beat = self.get(f"beat/{r}") if self.has(f"beat/{r}") else None
                if beat != seen[r][0]:
                    seen[r] = (beat, time.monotonic())
                elif time.monotonic() - seen[r][1] > self.dead_after:
                    dead.append(r)
                    pending.remove(r)
            if deadline is not None and time.monotonic() > deadline:
                dead.extend(pending)
                break
            if pending:
                time.sleep(0.1)
        return values, dead


class Heartbeat(threading.Thread):
    """Bumps beat/<rank> every BEAT_SECONDS, so that waiting peers can tell alive from dead."""

    def __init__(self, world: World):
        super().__init__(name="ovi-attn-heartbeat", daemon=True)
        self.world, self.stop = world, threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self.world.put(f"beat/{self.world.rank}", n)
            except Exception:  # noqa: BLE001 - the store is gone (rank 0 died): the main thread reports it
                return
            self.stop.wait(BEAT_SECONDS)


def start(sp_size: int, device: str, heads: int | None, model: str) -> World:
    """Join the launcher's process group (after the batch was validated) and build the SP groups."""
    size, rank = world_size(), int(os.environ.get("RANK", "0"))
    check_sp_size(sp_size, size, heads, model)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device in ("auto", "cuda") and torch.cuda.is_available() or device.startswith("cuda")
    device_name = f"cuda:{local}" if on_gpu else "cpu"
    if on_gpu:
        if local >= torch.cuda.device_count():
            raise UserError(f"rank {rank} is local process {local} but {torch.cuda.device_count()} GPUs are visible; "
                            f"start at most one process per GPU (--nproc-per-node {torch.cuda.device_count()}).")
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(seconds=_seconds("OVI_ATTN_COLLECTIVE_TIMEOUT", 600))
    try:
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timeout)
    except Exception as err:  # noqa: BLE001 - the launch environment, not a bug: say so in one sentence
        reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"rank {rank} could not join the other {size - 1} processes ({reason}); launch with "
                        f"`torchrun --nproc-per-node N -m ovi_attn_capture ...` or check MASTER_ADDR/MASTER_PORT.") from err
    sp = None
    for g in range(size // sp_size):  # every rank creates every group, in the same order
        ranks = list(range(g * sp_size, (g + 1) * sp_size))
        group = dist.new_group(ranks, timeout=timeout) if sp_size > 1 else None
        if rank in ranks and sp_size > 1:
            from ovi_attn_capture.parallel.sequence_parallel import SequenceParallel

            sp = SequenceParallel(group, rank - g * sp_size, sp_size, heads)
    from torch.distributed.distributed_c10d import _get_default_store

    world = World(rank, size, sp_size, device_name, _get_default_store(), sp,
                  _seconds("OVI_ATTN_DEAD_AFTER", 60))
    Heartbeat(world).start()
    return world


def _on_signal(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def _fault_injection(world: World, job: Job) -> None:
    """For tests: OVI_ATTN_KILL_RANK_AT=<rank>:<job index> SIGKILLs that rank as it starts that job,
    exactly what an out-of-memory kill or a lost node does (no cleanup, no message)."""
    spec = os.environ.get("OVI_ATTN_KILL_RANK_AT", "")
    if spec and spec == f"{world.rank}:{job.index}":
        os.kill(os.getpid(), signal.SIGKILL)


def run_distributed(jobs: list[Job], out_dir: Path | None, world: World, *, force: bool, mp4: bool, console,
                    index: bool = True) -> int:
    """This rank's share of the batch, then the one index (rank 0). Returns the exit code."""
    previous = signal.signal(signal.SIGTERM, _on_signal)
    prefix = f"rank {world.rank}: "
    quiet = None if not world.writes else console  # an SP helper rank stays silent
    runner = JobRunner(force=force, mp4=mp4, console=quiet, progress=False, sp=world.sp, rank=world.rank,
                       device_name=world.device_name)
    mine, results, stop, job = world.mine(jobs), [], "", None
    try:
        for n, job in enumerate(mine):
            world.doing(job.label)
            _fault_injection(world, job)
            runs = runner.skip(job) is None  # the group's ranks agree: same jobs, same files on disk
            if runs and world.sp is not None and (problem := _sp_ready(world, job)):
                stop = problem
                break
            result = run_one(runner, job, n, len(mine), results, prefix)
            if world.writes:
                results.append(result)
            if runs and world.sp is not None and (problem := _sp_agree(world, job, result)):
                stop = problem
                break
    except (Stopped, KeyboardInterrupt) as why:
        stop = f"rank {world.rank} was stopped ({why or 'interrupted'}) while capturing {world.last_job(world.rank)}"
        if world.writes and job is not None and not any(r.job == job.index for r in results):
            results.append(Result(job.label, job.seed, str(job.output), "failed", 0.0,
                                  f"stopped ({why or 'interrupted'}) while capturing it", world.rank, job.index))
    finally:
        signal.signal(signal.SIGTERM, previous)
    world.doing("finished" if not stop else "stopped")
    world.put(f"result/{world.rank}", {"results": [asdict(r) for r in results], "stop": stop})
    return _finish(jobs, out_dir, world, console, index, stop)


def _sp_ready(world: World, job: Job) -> str:
    """All ranks of the group alive and at this job before its first collective; else why not."""
    ranks = [world.group * world.sp_size + s for s in range(world.sp_size)]
    world.put(f"ready-{job.index}/{world.rank}", True)
    _, dead = world.wait_for(f"ready-{job.index}", ranks)
    if dead:
        return (f"rank {dead[0]} (sequence-parallel partner of rank {world.rank}) stopped while on "
                f"{world.last_job(dead[0])}; this group's remaining prompts were not run")
    return ""


def _sp_agree(world: World, job: Job, result: Result) -> str:
    """After a job: the group goes on only if its ranks are still in step, i.e. each started the
    same number of collectives (a rank that failed mid-forward left its partners' collectives
    unmatched; failing together before the first one, or in the writer's decode, is harmless)."""
    ranks = [world.group * world.sp_size + s for s in range(world.sp_size)]
    world.put(f"end-{job.index}/{world.rank}", {"status": result.status, "calls": world.sp.calls, "error": result.error})
    ends, dead = world.wait_for(f"end-{job.index}", ranks)
    if dead:
        return (f"rank {dead[0]} (sequence-parallel partner of rank {world.rank}) stopped while on "
                f"{world.last_job(dead[0])}; this group's remaining prompts were not run")
    if len({e["calls"] for e in ends.values()}) > 1:
        failed = min(ends, key=lambda r: (ends[r]["status"] != "failed", ends[r]["calls"], r))
        return (f"rank {failed} failed on {job.label} ({ends[failed]['error'] or 'out of step'}) after its group "
                f"had started computing together; this group's remaining prompts were not run")
    return ""


def _finish(jobs: list[Job], out_dir: Path | None, world: World, console, index: bool, stop: str) -> int:
    """Rank 0 gathers every rank's results (a dead rank's jobs are read from the disk), writes the
    index once and publishes the outcome; the other ranks wait for it. Returns the exit code."""
    ranks = list(range(world.size))
    if world.rank != 0:
        try:
            values, dead = world.wait_for("outcome", [0])
            world.put(f"ack/{world.rank}", True)
        except Exception:  # noqa: BLE001 - rank 0 hosted the store and is gone
            values, dead = {}, [0]
        if dead or not values:
            console.print(f"[bold red]error:[/] rank 0 stopped before it wrote the index; the finished files are "
                          f"kept: rerun the same command to resume.", highlight=False)
            return 1
        return 1 if stop else values[0]["code"]
    deadline = time.monotonic() + 5 if stop else None  # stopping: take what the others have posted
    posted, dead = world.wait_for("result", ranks, deadline)
    messages = [p["stop"] for p in posted.values() if p["stop"]]
    results = _complete_results(jobs, world, posted, dead, messages)
    code = 1 if messages or any(r.status == "failed" for r in results) else 0
    if index and out_dir is not None:
        path = write_index(out_dir, results, {"world_size": world.size, "sp_size": world.sp_size})
        print_summary(results, path, console)
    for m in dict.fromkeys(messages):
        console.print(f"[bold red]error:[/] {escape(m)}; the finished files are kept: rerun the same command to "
                      f"resume.", highlight=False)
    world.put("outcome/0", {"code": code})
    world.wait_for("ack", [r for r in ranks if r != 0 and r not in dead], time.monotonic() + 10)
    return code


def _complete_results(jobs, world: World, posted: dict, dead: list[int], messages: list[str]) -> list[Result]:
    """One result per job, in batch order: as posted by its writer, else from the disk (the writer died)."""
    reported = {}
    for p in posted.values():
        for r in p["results"]:
            reported[r["job"]] = Result(**r)
    for r in dead:
        if not any(f"rank {r} " in m for m in messages):  # a partner may have said it already
            messages.append(f"rank {r} stopped (killed or crashed) while on {world.last_job(r)}")
    out = []
    for job in jobs:
        got = reported.get(job.index)
        if got is None:
            owner = world.owner(job)
            if is_complete(job.output):
                got = Result(job.label, job.seed, str(job.output), "complete", 0.0, "", owner, job.index)
            else:
                if owner in posted:
                    why = f"not run: {posted[owner]['stop'] or 'its group stopped'}"
                elif world.last_job(owner) == job.label:
                    why = f"rank {owner} stopped (killed or crashed) while capturing it"
                else:
                    why = f"not run: rank {owner} stopped before it"
                got = Result(job.label, job.seed, str(job.output or ""), "failed", 0.0, why, owner, job.index)
        out.append(got)
    return out


def shutdown(world: World) -> None:
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a peer is gone; nothing left to tidy
        pass
