"""Fits on several processes, started by an existing launcher — never by re-running the Hydra app.

Lightning's own DDP launcher starts each extra rank by re-executing the command line; for
`python -m rlrec.train …` that is the whole pipeline once per rank. Instead, one pipeline process
drives the ranks: a fit that wants more than one process (`trainer.devices × trainer.num_nodes > 1`)
is pickled as a job — a module-level function and its arguments (the task, its data) — and started
on every rank by the stage entry point `python -m rlrec.runtime.stage <job>`, through

    launch.via=torchrun   torchrun --standalone --nproc_per_node=D on this machine (CPU: gloo; GPU: nccl)
    launch.via=srun       srun inside a SLURM allocation (nodes × tasks per node)
    launch.via=submitit   a SLURM job per fit (or `launch.cluster=local`: local processes), via submitit

Every rank runs the function; Lightning sees the launcher's environment (torchelastic / SLURM) and
starts nothing itself; rank 0's return value is written back and returned here. A single-process
fit runs in this process, unchanged.

    factory = TrainerFactory(trainer={...}, ...)          # `Context.trainer`: picklable
    result = run(fit_fn, task, loader, factory=factory)   # fit_fn(task, loader) on every rank
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlrec.runtime import console
from rlrec.runtime.console import interactive

log = logging.getLogger("rlrec")

IN_RANK = "RLREC_IN_RANK"  # set by `rlrec.runtime.stage` on every rank it runs
VIAS = ("torchrun", "srun", "submitit")
SPAWNING = ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_false")


def in_rank() -> bool:
    """True inside a rank started by `rlrec.runtime.stage` (a launched multi-process fit)."""
    return os.environ.get(IN_RANK) == "1"


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_global_zero() -> bool:
    return world()[0] == 0


def rank_device(accelerator: str = "cpu") -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a GPU trainer, else the CPU."""
    if str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _count_devices(devices, accelerator: str) -> int:
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        if devices.strip() not in ("-1", "auto"):
            return int(devices)
        devices = -1
    if int(devices) == -1:  # every device of the accelerator
        gpu = str(accelerator) in ("gpu", "cuda", "auto")
        return max(1, torch.cuda.device_count()) if gpu and torch.cuda.is_available() else 1
    return int(devices)


class FitLines(pl.Callback):
    """For a log file: while a fit trains, a line at least every `every` seconds (default
    `console.EVERY`, 60) — `fit[PreferenceTask]: epoch 1/2, step 40/116, 61s, ~116s left,
    train/sdpo_loss 0.912` — so a long preference round is never silent."""

    def __init__(self, every: float | None = None):
        self.every = console.EVERY if every is None else every

    def on_train_start(self, trainer, pl_module):
        self.t0 = self.last = time.perf_counter()
        self.name = type(pl_module).__name__

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(trainer, now - self.t0))

    def line(self, trainer, seconds: float) -> str:
        total, step = trainer.estimated_stepping_batches, trainer.global_step
        known = total != float("inf")
        left = f", ~{seconds / step * (total - step):.0f}s left" if step and known else ""
        loss = next(
            (f", {k} {float(v):.4g}" for k, v in trainer.callback_metrics.items() if k.startswith("train/")), ""
        )
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return (
            f"fit[{self.name}]: epoch {trainer.current_epoch + 1}/{epochs}, step {step}/{int(total) if known else '?'}, "
            f"{seconds:.0f}s{left}{loss}"
        )


@dataclass
class TrainerFactory:
    """Builds every Lightning Trainer of a run from `cfg.trainer` (accelerator, devices, precision,
    strategy), with the run's loggers and callbacks for the paper table's fits. Plain data, so a
    fit that holds it can be pickled to its ranks; inside a rank it sizes the Trainer from the
    launcher's environment (devices per node, nodes)."""

    trainer: dict
    callbacks: dict = field(default_factory=dict)
    loggers: list = field(default_factory=list)
    launch: dict = field(default_factory=dict)
    threads: int = 1

    @property
    def accelerator(self) -> str:
        return str(self.trainer.get("accelerator", "cpu"))

    @property
    def devices(self) -> int:
        return _count_devices(self.trainer.get("devices", 1), self.accelerator)

    @property
    def num_nodes(self) -> int:
        return int(self.trainer.get("num_nodes", 1) or 1)

    @property
    def world_size(self) -> int:
        """Processes a fit of this Trainer runs on (1: in this process)."""
        return self.devices * self.num_nodes

    def __call__(
        self,
        *,
        inner: bool = True,
        max_epochs: int | None = None,
        callbacks=(),
        progress=None,
        log_version: str | None = None,
        **kw,
    ):
        """A Trainer. `inner=True` (fits inside a stage: feedback models, preference / SFT rounds,
        SASRec): no logger, no checkpoint files, no batch limits of the profile; the caller keeps
        what it needs. `inner=False`: the run's loggers and callbacks, the profile's batch limits
        (the paper table's fits), each logger writing under `log_version` when given (a fit's own
        folder: fits run side by side by an executor must not share one). `kw` overrides any Trainer
        argument."""
        node = dict(self.trainer)
        if self.world_size > 1:
            if not in_rank():
                raise RuntimeError(
                    f"trainer.devices={node.get('devices')} × trainer.num_nodes={self.num_nodes} is a "
                    "multi-process fit: it runs through rlrec.runtime.launch.run (one pipeline process drives the "
                    "ranks), never as a Trainer of the pipeline process"
                )
            local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE", 1))
            node["devices"] = local
            node["num_nodes"] = max(1, int(os.environ.get("WORLD_SIZE", local)) // local)
            if node.get("strategy") in (None, "auto", *SPAWNING):  # the ranks exist already
                node["strategy"] = "ddp"
        if node.get("sync_batchnorm") and self.accelerator == "cpu":
            node["sync_batchnorm"] = (
                False  # torch's SyncBatchNorm runs on GPUs only; on CPU each rank normalises its batch
            )
        args: dict = {"callbacks": list(callbacks)}
        if inner:
            args.update(
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_train_batches=1.0,
                limit_val_batches=1.0,
                limit_test_batches=1.0,
                enable_progress_bar=False,
            )
        else:
            # best weights are kept in memory and saved by the stage; no Lightning checkpoint files
            version = {} if log_version is None else {"version": log_version}
            args.update(logger=[instantiate(c, **version) for c in self.loggers] or False, enable_checkpointing=False)
            args["callbacks"] += [instantiate(c) for c in (self.callbacks or {}).values()]
        if max_epochs is not None:
            args["max_epochs"] = int(max_epochs)
        if progress is not None:
            args["enable_progress_bar"] = bool(progress)
        if not interactive():  # a log file (SLURM, CI, a pipe) gets the stage lines, not redrawn bars
            args["enable_progress_bar"] = False
            args["callbacks"].append(FitLines())  # ... and a line at least once a minute in a long fit
        args.update(kw)
        return instantiate(OmegaConf.create(node), **args)


def factory_of(make) -> TrainerFactory | None:
    """The TrainerFactory behind `make` (itself, or a functools.partial of it)."""
    while isinstance(make, functools.partial):
        make = make.func
    return make if isinstance(make, TrainerFactory) else None


def run(fn, *args, factory, **kwargs):
    """`fn(*args, **kwargs)` on the ranks `factory` asks for: here when that is one process (or when
    this process already is a rank), else on every rank of a launched job, returning rank 0's value.
    `fn` must be a module-level function and its arguments picklable."""
    factory = factory_of(factory)
    if factory is None or factory.world_size <= 1 or in_rank():
        return fn(*args, **kwargs)
    return launch(factory, fn, args, kwargs)


def launch(factory: TrainerFactory, fn, args: tuple, kwargs: dict):
    L = dict(factory.launch or {})
    via = str(L.get("via", "torchrun"))
    if via not in VIAS:
        raise ValueError(f"launch.via={via!r}: choose one of {', '.join(VIAS)}")
    root = Path(L.get("dir") or ".cache/rlrec/launch")
    job = root / uuid.uuid4().hex
    job.mkdir(parents=True)
    D, N = factory.devices, factory.num_nodes
    torch.save(
        {
            "fn": fn,
            "args": args,
            "kwargs": kwargs,
            "threads": max(1, factory.threads // D),
            "accelerator": factory.accelerator,
        },
        job / "job.pt",
    )
    name = getattr(fn, "__qualname__", str(fn))
    log.info("launching %s on %d × %d ranks via %s (%s)", name, N, D, via, job)
    entry = [sys.executable, "-m", "rlrec.runtime.stage", str(job / "job.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, factory.threads // D))}
    try:
        if via == "torchrun":
            if N > 1:
                raise ValueError(
                    f"trainer.num_nodes={N}: torchrun --standalone starts ranks on this machine only; "
                    "use launch.via=srun (inside a SLURM allocation) or launch.via=submitit"
                )
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={D}",
                *map(str, L.get("torchrun_args") or ()),
                *entry[1:],
            ]
            _call(cmd, env, job)
        elif via == "srun":
            if shutil.which("srun") is None:
                raise RuntimeError("launch.via=srun: no `srun` on PATH (run the pipeline inside a SLURM allocation)")
            cmd = ["srun", f"--nodes={N}", f"--ntasks-per-node={D}", *map(str, L.get("srun_args") or ()), *entry]
            _call(cmd, env, job)
        else:
            _submitit(L, D, N, factory.accelerator, job)
        out = job / "result.pt"
        if not out.exists():
            raise RuntimeError(f"launched {name}: rank 0 wrote no result ({out}); see the ranks' output above")
        return torch.load(out, map_location="cpu", weights_only=False)
    finally:
        if not L.get("keep_jobs"):
            shutil.rmtree(job, ignore_errors=True)


def _call(cmd: list[str], env: dict, job: Path) -> None:
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"launched ranks failed (exit {done.returncode}): {' '.join(cmd)}")


def _submitit(L: dict, D: int, N: int, accelerator: str, job: Path) -> None:
    try:
        import submitit
    except ImportError as e:
        raise ImportError("launch.via=submitit needs submitit (a dependency of rlrec): pip install submitit") from e
    from rlrec.runtime import stage

    executor = submitit.AutoExecutor(folder=str(job / "submitit"), cluster=L.get("cluster"))
    params = {"nodes": N, "tasks_per_node": D, "timeout_min": int(L.get("timeout_min", 60))}
    if accelerator in ("gpu", "cuda"):
        params["gpus_per_node"] = D
    params.update(OmegaConf.to_container(OmegaConf.create(L.get("submitit") or {})))
    executor.update_parameters(**params)
    handle = executor.submit(stage.main, str(job / "job.pt"))
    handle.wait()
    failed = [(i, handle.task(i).exception()) for i in range(handle.num_tasks)]
    failed = [(i, e) for i, e in failed if e is not None]
    if failed:
        # a rank's own error first: it explains the others' "Connection closed/reset by peer"
        failed.sort(key=lambda f: any(m in str(f[1]) for m in _LOST_PEER))
        lines = [f"rank {i}: {_last_error_line(e)}" for i, e in failed]
        raise RuntimeError(
            f"launched ranks failed (launch.via=submitit, logs in {job / 'submitit'}):\n  " + "\n  ".join(lines)
        ) from failed[0][1]


_LOST_PEER = ("remote worker", "Connection closed by peer", "Connection reset by peer", "DistBackendError")


def _last_error_line(e: BaseException) -> str:
    """The exception line of a submitit task's traceback (its message wraps the trace in dashes)."""
    parts = str(e).split("-" * 22)
    trace = parts[1] if len(parts) > 2 else str(e)
    lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def gather(parts: tuple):
    """Every rank's `parts` (a tuple of tensors, concatenated along dim 0 across ranks, in rank
    order); outside a process group, `parts` itself. For metrics that need the whole split (user
    AUC, log-loss, list metrics) when each rank evaluated a shard of it."""
    import torch.distributed as dist

    rank, size = world()
    if size == 1:
        return parts
    everyone: list = [None] * size
    dist.all_gather_object(everyone, parts)
    return tuple(torch.cat(xs) for xs in zip(*everyone))
