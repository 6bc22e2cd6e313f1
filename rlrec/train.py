"""`python -m rlrec.train [+experiment=<name>] [group=option ...] [-m]` — the single entry point.

Composes conf/train.yaml, builds the run's context, runs it (`rlrec.run`), writes the resolved
config, `results.json`, `results.md` and the plots into the Hydra run dir, and returns the
optimised metric (for sweepers). W&B is always finished, or a multirun logs every job into one run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rlrec.configs import conf_dir, validate
from rlrec.errors import USER_ERRORS
from rlrec.runtime.cache import atomic_write_json, atomic_write_text, sqlite_journal
from rlrec.runtime.console import quiet_libraries

log = logging.getLogger("rlrec")


def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Run the configured job and write its results into `output_dir` (atomically)."""
    # torch, Lightning and transformers load here, after the config is validated: `--cfg job`,
    # `--help` and a config error answer in about a second
    from rlrec.context import Context
    from rlrec.outputs.report import run_markdown, write_plots
    from rlrec.run import run as run_shape
    from rlrec.runtime import memory
    from rlrec.runtime.console import quiet_loggers

    quiet_loggers()  # Lightning, just imported, set its loggers to INFO
    sqlite_journal()  # a bad RLREC_SQLITE_JOURNAL fails now, not when a cache first opens
    memory.settle_imports()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    _start_wandb(cfg)
    try:
        results = run_shape(Context(cfg, output_dir)).as_dict()
        results["plots"] = [str(p) for p in write_plots(results, output_dir)]
        _log_wandb(results, output_dir)
    finally:
        _finish_wandb()
    atomic_write_json(output_dir / "results.json", results)
    md = run_markdown(results)
    atomic_write_text(output_dir / "results.md", md)
    print(md)
    return results


def _wandb_logger(cfg) -> dict | None:
    """The run's WandbLogger config (`logger=wandb`), or None."""
    for c in cfg.get("logger") or []:
        if str(c.get("_target_", "")).endswith("WandbLogger"):
            return OmegaConf.to_container(c, resolve=True)
    return None


def _start_wandb(cfg) -> None:
    """With `logger=wandb`, one W&B run for the whole job, started before any stage: every fit's
    WandbLogger joins it, and a job whose fits all come from the cache still logs its results."""
    conf = _wandb_logger(cfg)
    if conf is None:
        return
    import wandb

    if wandb.run is None:
        wandb.init(
            project=conf.get("project"),
            name=conf.get("name"),
            group=conf.get("group"),
            dir=conf.get("save_dir"),
            mode="offline" if conf.get("offline", True) else None,
            config=OmegaConf.to_container(cfg, resolve=True),
            reinit="finish_previous",
        )


def _log_wandb(results: dict, output_dir: Path) -> None:
    """The job's dashboard (when a W&B run is active): the final metrics as the summary, one step per
    round (reward, reliability, loss, held-out gain), the preference fits' curves, the paper-style
    table, every round's sampled texts with their rewards and roles, and the plots."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    wandb.run.summary.update({k: v for k, v in results["metrics"].items() if isinstance(v, (int, float))})
    for h in results.get("rounds") or []:
        wandb.log({f"round/{k}": v for k, v in h.items() if isinstance(v, (int, float))})
    for name, curve in (results.get("curves") or {}).items():  # the preference fits, per step
        for point in curve:
            wandb.log({f"{name}/{k}": v for k, v in point.items() if isinstance(v, (int, float))})
    media: dict = {}
    table = results.get("table")
    if table and table.get("rows"):
        cols = list(table["columns"])
        media["results/table"] = wandb.Table(
            columns=["variant", *cols, *[f"{c}_std" for c in cols]],
            data=[
                [label, *[row.get(c) for c in cols], *[row.get(f"{c}_std") for c in cols]]
                for label, row in table["rows"].items()
            ],
        )
        if table.get("paired"):
            keys = sorted({k for e in table["paired"] for k in e})
            media["results/paired"] = wandb.Table(
                columns=keys, data=[[e.get(k) for k in keys] for e in table["paired"]]
            )
    for samples in sorted((output_dir / "artifacts").glob("*/samples.jsonl")):
        rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
        media[f"samples/{samples.parent.name}"] = wandb.Table(
            columns=["user", "text", "reward", "role"],
            data=[[str(r["user"]), r["text"], r["reward"], r["role"]] for r in rows],
        )
    for plot in results.get("plots") or []:
        media[f"plots/{Path(plot).stem}"] = wandb.Image(plot)
    if media:
        wandb.log(media)


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass


def launcher_threads(threads: int, launcher: dict, overrides: list[str], cpus: int) -> int:
    """Torch threads of one job of a multirun, given its Hydra launcher: joblib runs `n_jobs` jobs
    side by side on this machine's `cpus` cores, so each gets at most `cpus // n_jobs` (two jobs of 2
    threads on 2 cores run ~10x slower than of 1); a submitit job gets `cpus_per_task`. An explicit
    `threads=` on the command line (or in the sweep) wins.

    >>> launcher_threads(2, {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    ...                      "n_jobs": 2}, [], cpus=2)
    1
    >>> launcher_threads(2, {"_target_": "x.SlurmLauncher", "cpus_per_task": 8}, ["backbone=din"], cpus=64)
    8
    >>> launcher_threads(4, {"_target_": "x.SlurmLauncher", "cpus_per_task": 8}, ["threads=4"], cpus=64)
    4
    """
    if any(o.split("=", 1)[0].lstrip("+~") == "threads" for o in overrides):
        return threads
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n_jobs = int(launcher.get("n_jobs") or -1)
        n_jobs = n_jobs if n_jobs > 0 else max(1, cpus + 1 + n_jobs)  # joblib: -1 = every core
        return max(1, min(threads, cpus // n_jobs))
    if "submitit_launcher" in target or target.endswith(("SlurmLauncher", "LocalLauncher")):
        return int(launcher.get("cpus_per_task") or threads)
    return threads


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("WANDB_MODE", "offline")
    quiet_libraries()  # after Hydra set up logging: library noise stays off the console
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        threads = launcher_threads(
            int(cfg.threads), OmegaConf.to_container(hc.launcher), list(hc.overrides.task), len(os.sched_getaffinity(0))
        )
        if threads != int(cfg.threads):
            log.info(
                "threads: %d per job under %s (was %d)", threads, hc.runtime.choices.get("hydra/launcher"), cfg.threads
            )
            cfg.threads = threads
    try:
        validate(cfg)
        results = run(cfg, hc.runtime.output_dir)
    except USER_ERRORS as e:  # the user's input: one line, no traceback, exit code 2
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    metric = cfg.get("optimized_metric")
    return results["metrics"].get(metric) if metric else None


if __name__ == "__main__":
    main()
