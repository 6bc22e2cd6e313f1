"""One fit for every CTR backbone and re-ranker, outer (the paper table's models, with the run's
loggers and the profile's batch limits) and inner (feedback models fitted inside a stage): early
stopping on a validation metric, the best weights kept in memory and loaded back, then (if asked)
validation and test metrics of those weights. Model selection never looks at test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.runtime import launch
from rlrec.tasks.callbacks import KeepBest, Throughput


@dataclass
class Fitted:
    model: nn.Module  # eval mode, best validation weights loaded
    best: float  # best value of the monitored validation metric
    metrics: dict = field(default_factory=dict)  # val/*, test/* of the best weights, train/* speed


def fit(
    make_trainer: Callable[..., pl.Trainer],
    task: pl.LightningModule,
    train,
    valid,
    test=None,
    *,
    monitor: str,
    patience: int,
) -> Fitted:
    """Train `task` (a CTRTask / RerankTask around `task.model`) on the `train` loader, early-stopping
    on `monitor` over `valid`; `make_trainer(callbacks=[...])` builds the Trainer from config.
    With a `test` loader, returns the best weights' val/* and test/* metrics too. A multi-process
    Trainer (`trainer.devices > 1`) runs the whole fit on launched ranks (`rlrec.runtime.launch`)."""
    return launch.run(
        _fit, make_trainer, task, train, valid, test, monitor=monitor, patience=patience, factory=make_trainer
    )


def _fit(make_trainer, task, train, valid, test, *, monitor: str, patience: int) -> Fitted:
    keep, speed = KeepBest(monitor), Throughput()
    stop = pl.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=int(patience))
    trainer = make_trainer(callbacks=[keep, stop, speed])
    trainer.fit(task, train, valid)
    if keep.state is not None:
        task.model.load_state_dict(keep.state)
    metrics = {}
    if test is not None:
        tst = trainer.test(task, test, verbose=False)
        val = trainer.validate(task, valid, verbose=False)
        metrics = {k: float(v) for k, v in {**val[0], **tst[0]}.items()}
        metrics["train/samples_per_s"] = round(speed.rate, 1)
        metrics["train/epochs"] = trainer.current_epoch
    return Fitted(task.model.eval(), keep.best, metrics)


def fit_shard(
    work: Path,
    *,
    model: Callable[[], nn.Module],
    task: Callable[[nn.Module], pl.LightningModule],
    make_trainer,
    train,
    valid,
    monitor: str,
    patience: int,
    seed: int,
    after: str | None = None,
) -> dict:
    """A feedback model's fit as a stage build (one shard, `rlrec.runtime.executor`), seeded here so it
    computes the same wherever it runs: `model()` builds it after `torch.manual_seed(seed)`; with
    `after` (a shard's `model.pt`) it continues from those weights with its own user knowledge.
    The best weights go to `work/model.pt`; returns {"best": the monitored validation metric}."""
    torch.manual_seed(seed)
    net = model()
    if after is not None:
        user = net.embedding.user_knowledge.clone()  # this probe's knowledge, not the one fitted before
        net.load_state_dict(torch.load(after, map_location="cpu")["state_dict"])
        net.embedding.set_knowledge(user=user)
    fitted = fit(make_trainer, task(net), train, valid, monitor=monitor, patience=patience)
    torch.save({"state_dict": fitted.model.state_dict()}, Path(work) / "model.pt")
    return {"best": float(fitted.best)}


def load_shard(model: Callable[[], nn.Module], artifact) -> nn.Module:
    """The model `fit_shard` fitted, rebuilt by `model()` and loaded from its artifact (eval mode)."""
    with torch.random.fork_rng(devices=[]):  # building draws an init the weights replace
        net = model()
    net.load_state_dict(torch.load(artifact.path("model.pt"), map_location="cpu")["state_dict"])
    return net.eval()


def build_model(
    factory: Callable[..., nn.Module],
    spec: FeatureSpec,
    adapter: Callable | None = None,
    user: np.ndarray | torch.Tensor | None = None,
    item: np.ndarray | torch.Tensor | None = None,
) -> nn.Module:
    """A backbone / re-ranker from its `_partial_` factory and the FeatureSpec; with knowledge
    vectors (`user` (num_users + 1, D), optionally `item`), one more field per table through
    `adapter`, loaded with those vectors. Without, exactly the base model."""
    if user is None:
        return factory(features=spec)
    user = _table(user)
    item = None if item is None else _table(item)
    dims = (user.shape[1],) + ((item.shape[1],) if item is not None else ())
    model = factory(features=spec.with_knowledge(dims), adapter=adapter)
    model.embedding.set_knowledge(user=user, item=item)
    return model


def _table(x) -> torch.Tensor:
    """A float32 tensor of a vector table; a numpy table is copied (a worker process may hold it as a
    read-only memory map, which torch must not share)."""
    return x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))
