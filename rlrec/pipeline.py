"""The run as named, cached, resumable stages.

Each stage's artifact lives in `cache_dir/<stage>/<hash of the config it depends on>/` and is
published atomically (built in a `.partial` directory, then renamed), so a killed run resumes
by redoing at most the interrupted stage, and a sweep reuses every stage whose inputs match.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlrec.cache import atomic_write_json, fingerprint, read_json

log = logging.getLogger("rlrec")


def component_name(node) -> str:
    """`rlrec.backbones.din.DIN` → `din` (the yaml/file name convention)."""
    target = node.get("_target_", "") if node is not None else ""
    return target.rsplit(".", 1)[-1].lower() if target else "none"


class Throughput(pl.Callback):
    """Training samples/s over the whole fit (data loading included, validation excluded)."""

    def __init__(self):
        self.samples, self.seconds, self._t = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._t
        self.samples += len(batch["label"])

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


class Pipeline:
    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.cache_dir = Path(cfg.cache_dir)
        self.results: dict = {"metrics": {}, "stages": {}}
        self._datamodule = None

    # ---- caching -------------------------------------------------------------------------
    def cached(self, stage: str, deps: dict, build: Callable[[Path], dict]) -> dict:
        key = fingerprint(deps)
        final = self.cache_dir / stage / key
        done = final / "result.json"
        t0 = time.perf_counter()
        if done.exists() and self.cfg.get("use_cache", True):
            log.info("stage %s: cached (%s)", stage, final)
            result = read_json(done)
            self.results["stages"][stage] = {"cached": True, "dir": str(final)}
            return result
        work = final.with_name(key + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        result = build(work)
        atomic_write_json(work / "result.json", result)
        atomic_write_json(work / "deps.json", deps)
        if final.exists():  # use_cache=false: replace the old artifact
            shutil.rmtree(final)
        work.rename(final)
        self.results["stages"][stage] = {
            "cached": False,
            "dir": str(final),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return result

    # ---- shared objects ----------------------------------------------------------------
    @property
    def datamodule(self):
        if self._datamodule is None:
            self._datamodule = instantiate(self.cfg.dataset)
            self._datamodule.setup()
        return self._datamodule

    def loggers(self) -> list:
        return [instantiate(c) for c in (self.cfg.get("logger") or [])]

    # ---- stages ------------------------------------------------------------------------
    def describe(self) -> dict:
        info = self.datamodule.describe()
        self.results["data"] = info
        return info

    def fit_backbone(self) -> dict:
        """Train the configured backbone with early stopping on val/auc; test the best checkpoint."""
        cfg = self.cfg
        deps = {
            "dataset": cfg.dataset,
            "split": cfg.split,
            "backbone": cfg.backbone,
            "optimizer": cfg.optimizer,
            "trainer": {
                k: cfg.trainer.get(k) for k in ("max_epochs", "limit_train_batches", "limit_val_batches")
            },
            "patience": cfg.early_stopping_patience,
            "seed": cfg.seed,
        }
        name = component_name(cfg.backbone)

        def build(work: Path) -> dict:
            pl.seed_everything(cfg.seed, workers=True)
            dm = self.datamodule
            model = instantiate(cfg.backbone)(features=dm.feature_spec)
            from rlrec.tasks.ctr import CTRTask

            task = CTRTask(model, instantiate(cfg.optimizer), OmegaConf.to_container(cfg, resolve=True))
            ckpt = pl.callbacks.ModelCheckpoint(
                dirpath=work / "checkpoints", monitor="val/auc", mode="max", save_top_k=1, filename="best"
            )
            stop = pl.callbacks.EarlyStopping(
                monitor="val/auc", mode="max", patience=cfg.early_stopping_patience
            )
            speed = Throughput()
            trainer = instantiate(cfg.trainer, callbacks=[ckpt, stop, speed], logger=self.loggers() or False)
            trainer.fit(task, datamodule=dm)
            # model selection used validation only; test is evaluated once, on the best checkpoint
            test = trainer.test(
                task, datamodule=dm, ckpt_path="best" if ckpt.best_model_path else None, verbose=False
            )
            val = trainer.validate(
                task, datamodule=dm, ckpt_path="best" if ckpt.best_model_path else None, verbose=False
            )
            metrics = {k: float(v) for k, v in {**val[0], **test[0]}.items()}
            metrics["train/samples_per_s"] = round(speed.rate, 1)
            metrics["train/epochs"] = trainer.current_epoch
            return {"backbone": name, "metrics": metrics, "checkpoint": "checkpoints/best.ckpt"}

        result = self.cached(f"fit_backbone/{name}", deps, build)
        self.results["metrics"].update(result["metrics"])
        return result

    def run(self) -> dict:
        torch.set_num_threads(int(self.cfg.threads))
        stages = list(self.cfg.stages)
        unknown = [s for s in stages if not callable(getattr(self, s, None)) or s.startswith("_")]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown} in `stages`; known: describe, fit_backbone")
        for stage in stages:
            log.info("stage %s", stage)
            getattr(self, stage)()
        return self.results
