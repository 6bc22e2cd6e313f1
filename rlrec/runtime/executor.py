"""Many small independent jobs — the feedback's cross-fitted (member, fold) fits, the compare stage's
(variant, seed) fits — run through an executor, each job one artifact of the store:

    executor=serial     in this process, one job after another (the default)
    executor=joblib     loky worker processes on this machine (`executor.n_jobs`)
    executor=submitit   a job array through `submitit.AutoExecutor`: local processes or SLURM

Where a job runs does not change what it computes: the job seeds itself and sets its own torch
thread count (`executor.threads`), so rewards are bit-identical across executors. A shard is a
store stage (`Shard(name, deps, make)`); `stages()` reads the published ones here and sends only
the missing ones to the executor, each building and publishing its own artifact under the store's
lock, so deleting one shard's folder recomputes that shard alone.

>>> Serial(threads=1).map(abs, [-2, 3])
[2, 3]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from rlrec.runtime.store import Artifact, Store

log = logging.getLogger("rlrec")


class Executor(Protocol):
    threads: int  # torch intra-op threads of each job

    def map(self, fn: Callable, jobs: list, done: Callable[[int], Any] | None = None) -> list:
        """[fn(job) for job in jobs], run wherever the executor runs jobs; results in job order.
        `done(1)` is called as each job's result arrives (a progress bar)."""


def call(fn: Callable, job, threads: int):
    """What runs where a job runs: `fn(job)` with `threads` torch threads and the caller's torch RNG
    and thread count left as they were (a job seeds itself; in this process it must not shift the
    RNG the caller continues with, as a job in another process cannot)."""
    if os.environ.get("RLREC_QUIET") == "1":  # a worker of a quiet entry point is quiet too
        from rlrec.runtime.console import quiet_libraries

        quiet_libraries()
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with torch.random.fork_rng(devices=[]):
            return fn(job)
    finally:
        torch.set_num_threads(before)


@dataclass
class Serial:
    """In this process, in order. `threads` is fixed (1) rather than the run's `threads`: a fit's
    floats depend on its thread count (measured: DIN validator rewards at 1 and 2 threads differ by
    up to 1.2e-4), so only equal `threads` give the same rewards as the other executors."""

    threads: int = 1

    def map(self, fn: Callable, jobs: list, done: Callable[[int], Any] | None = None) -> list:
        return _collect((call(fn, job, self.threads) for job in jobs), done)


@dataclass
class Joblib:
    """`n_jobs` worker processes of joblib's `backend` (loky: fresh processes, reused across calls).
    `threads` per job: 1, so `n_jobs` jobs share the cores instead of oversubscribing them."""

    n_jobs: int = 2
    threads: int = 1
    backend: str = "loky"

    def map(self, fn: Callable, jobs: list, done: Callable[[int], Any] | None = None) -> list:
        from joblib import Parallel, delayed

        if not jobs:
            return []
        results = Parallel(n_jobs=int(self.n_jobs), backend=self.backend, return_as="generator")(
            delayed(call)(fn, job, self.threads) for job in jobs
        )
        return _collect(results, done)


@dataclass
class Submitit:
    """A job array through `submitit.AutoExecutor`: `cluster=local` runs local processes, `slurm` (or
    null where SLURM is available) one array task per job with `cpus_per_task=threads`. `folder`
    holds the pickled jobs and their logs: on a filesystem every node sees, as is the store.
    `parameters`: further executor parameters (slurm_partition, mem_gb, slurm_array_parallelism, …)."""

    folder: str
    cluster: str | None = None
    threads: int = 1
    timeout_min: int = 60
    parameters: dict = field(default_factory=dict)

    def map(self, fn: Callable, jobs: list, done: Callable[[int], Any] | None = None) -> list:
        try:
            import submitit
        except ImportError as e:
            raise ImportError("executor=submitit needs submitit (a dependency of rlrec): pip install submitit") from e
        if not jobs:
            return []
        ex = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        ex.update_parameters(
            timeout_min=int(self.timeout_min), cpus_per_task=int(self.threads), **dict(self.parameters or {})
        )
        n = len(jobs)
        handles = ex.map_array(call, [fn] * n, list(jobs), [self.threads] * n)
        log.info("executor: %d jobs submitted (%s, %s)", n, ex.cluster, self.folder)
        return _collect((h.result() for h in handles), done)  # raises with the job's error if one failed


def _collect(results, done: Callable[[int], Any] | None) -> list:
    out = []
    for r in results:
        out.append(r)
        if done is not None:
            done(1)
    return out


@dataclass
class Shard:
    """One independent job as a store stage: `make()` gives its picklable `build(work) -> dict`
    (a module-level function and its arguments), called only when the shard must be built."""

    name: str
    deps: Any
    make: Callable[[], Callable[[Path], dict]]


def stages(executor: Executor, store: Store, shards: list[Shard]) -> list[Artifact]:
    """The artifacts of `shards`, in order: published ones read here, the others built together by
    `executor` (each job publishes its own artifact; their events join `store.events`)."""
    out: list = [None] * len(shards)
    todo = []
    for i, s in enumerate(shards):
        if store.ready(s.name, s.deps):
            out[i] = store.stage(s.name, s.deps, lambda work, s=s: s.make()(work), quiet=True)
        else:
            todo.append(i)
    names = ", ".join(sorted({s.name for s in shards}))
    if todo:
        from rlrec.runtime.console import bar

        log.info("stage %s: building %d of %d shards on %s", names, len(todo), len(shards), type(executor).__name__)
        jobs = [(store.fork(), shards[i].name, shards[i].deps, shards[i].make()) for i in todo]
        with bar(len(todo), f"stage {names}", "shard") as progress:
            for i, (art, events) in zip(todo, executor.map(_stage, jobs, done=progress.update)):
                store.join(events)
                out[i] = art
    elif shards:
        log.info("stage %s: %d shards cached", names, len(shards))
    return out


def _stage(job) -> tuple[Artifact, list[dict]]:
    store, name, deps, build = job
    art = store.stage(name, deps, build, quiet=True)
    return art, store.events
