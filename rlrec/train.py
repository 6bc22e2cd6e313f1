"""`python -m rlrec.train [+experiment=<name>] [group=option ...] [-m]` — the single entry point.

Composes conf/train.yaml, runs the pipeline's stages, writes the resolved config,
`results.json` and `results.md` into the Hydra run dir, and returns the optimised metric
(for sweepers)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from rlrec.cache import atomic_write_json, atomic_write_text
from rlrec.pipeline import Pipeline, component_name

log = logging.getLogger("rlrec")


def summary(cfg: DictConfig) -> dict:
    return {
        "experiment": cfg.get("experiment_name", cfg.task_name),
        "dataset": cfg.dataset.name,
        "split": cfg.split.protocol + ("+guard" if cfg.split.leakage_guard else ""),
        "backbone": component_name(cfg.get("backbone")),
        "seed": cfg.seed,
        "profile": cfg.profile.name,
    }


def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Run the configured pipeline and write results into `output_dir` (atomically)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        results = {"run": summary(cfg), **Pipeline(cfg, output_dir).run()}
        _log_wandb(results)
    finally:
        _finish_wandb()
    from rlrec.report import run_markdown, write_plots

    results["plots"] = [str(p) for p in write_plots(results, output_dir)]
    atomic_write_json(output_dir / "results.json", results)
    md = run_markdown(results)
    atomic_write_text(output_dir / "results.md", md)
    print(md)
    return results


def _log_wandb(results: dict) -> None:
    """Send the final numbers to W&B too (when a WandbLogger started a run)."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.run.summary.update({k: v for k, v in results["metrics"].items() if isinstance(v, (int, float))})
        for h in results.get("history") or []:
            wandb.log({f"round/{k}": v for k, v in h.items() if isinstance(v, (int, float))})


def _finish_wandb() -> None:
    """Always close the W&B run, or a multirun logs every job into the first run."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:
        pass


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("WANDB_MODE", "offline")
    from hydra.core.hydra_config import HydraConfig

    results = run(cfg, HydraConfig.get().runtime.output_dir)
    metric = cfg.get("optimized_metric")
    return results["metrics"].get(metric) if metric else None


if __name__ == "__main__":
    main()
