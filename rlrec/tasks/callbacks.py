"""Lightning callbacks shared by the fits: keep the best weights in memory, measure training
throughput, collect the per-step training metrics of a preference / SFT round."""

from __future__ import annotations

import time

import numpy as np
import pytorch_lightning as pl


class KeepBest(pl.Callback):
    """Keep the best validation weights of `module.model` in memory (`mode="max"`)."""

    def __init__(self, monitor: str = "val/auc"):
        self.monitor, self.best, self.state = monitor, -float("inf"), None

    def on_validation_end(self, trainer, module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            self.state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


class Throughput(pl.Callback):
    """Training rows/s (samples, or lists for a re-ranker) over the whole fit (data loading
    included, validation excluded)."""

    def __init__(self):
        self.samples, self.seconds, self._t = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._t
        self.samples += len(next(iter(batch.values())))

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


class MetricLog(pl.Callback):
    """Collects the logged `train/*` metrics of every batch and the `val/*` ones of every validation
    (held-out pairs). `means()`: the training metrics averaged under `prefix`, their mean over the
    last quarter of the steps as `<prefix>final_*` (one batch of a few groups is too noisy to
    say where the fit ended), and the last validation's as `<prefix>heldout_*`. `curve`: one
    dict per batch ({"step", "epoch", train/…}, and val/… where a validation ran after it)."""

    def __init__(self, prefix: str = "align/"):
        self.values: dict[str, list[float]] = {}
        self.prefix = prefix
        self.curve: list[dict] = []
        self.val: dict[str, float] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        point = {"step": len(self.curve), "epoch": int(trainer.current_epoch)}
        for k, v in trainer.callback_metrics.items():
            if k.startswith("train/"):
                self.values.setdefault(k.replace("train/", self.prefix), []).append(float(v))
                point[k] = float(v)
        self.curve.append(point)

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        self.val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if self.curve:
            self.curve[-1].update(self.val)

    def means(self) -> dict:
        out = {k: float(np.mean(v)) for k, v in self.values.items()}
        out.update(
            {
                k.replace(self.prefix, f"{self.prefix}final_"): float(np.mean(v[-max(1, len(v) // 4) :]))
                for k, v in self.values.items()
            }
        )
        out.update({k.replace("val/", f"{self.prefix}heldout_"): v for k, v in self.val.items()})
        return out
