"""Cross-fitting over user folds, shared by the feedback models (CTR validator, recommender,
LLM validator): the model that scores user u never trained on u's data, so a text is rewarded
for knowledge that generalises, not for what the model memorised about u.

>>> folds = UserFolds(num_users=6, folds=2, seed=0)
>>> users = np.array([1, 2, 3, 4, 5, 6])
>>> sorted(len(sel) for _, sel in folds.groups(users))
[3, 3]
>>> mean_by_slot(np.array([1.0, 3.0, 5.0]), np.array([0, 0, 2]), 3)
array([ 2., nan,  5.])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch

from rlrec.downstream.fit import load_shard
from rlrec.feedback.base import Feedback, knowledge_table
from rlrec.outputs.results import Probe
from rlrec.runtime.executor import Shard, stages

log = logging.getLogger("rlrec")


def user_folds(num_users: int, folds: int, seed: int) -> np.ndarray:
    """(num_users + 1,) fold id per user catalogue index (row 0 unused)."""
    rng = np.random.default_rng(seed)
    f = np.zeros(num_users + 1, np.int64)
    f[1:] = rng.permutation(num_users) % folds
    return f


class UserFolds:
    def __init__(self, num_users: int, folds: int, seed: int):
        if folds < 2:
            raise ValueError(f"cross-fitting needs feedback.folds >= 2, got {folds}")
        self.folds = int(folds)
        self.of = user_folds(num_users, folds, seed)

    def train_rows(self, row_users: np.ndarray, k: int) -> np.ndarray:
        """Boolean mask of the rows the model of fold k may train on: users of every other fold."""
        return self.of[np.asarray(row_users)] != k

    def groups(self, users: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(k, positions in `users` of the users in fold k) for every fold that has any."""
        fold = self.of[np.asarray(users)]
        for k in range(self.folds):
            sel = np.flatnonzero(fold == k)
            if len(sel):
                yield k, sel


def mean_by_slot(values: np.ndarray, slot: np.ndarray, n: int) -> np.ndarray:
    """(n,) mean of `values` per slot index (nan where a slot has none)."""
    sums = np.bincount(slot, weights=values, minlength=n)
    counts = np.bincount(slot, minlength=n)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class CrossFitted(Feedback):
    """A feedback strategy scored by per-fold models (the CTR validator, the recommender): it owns
    the skeleton once — user folds → one fit stage per fold on the probe's knowledge → the fitted
    models — and a subclass keeps only its model and its score:

    - `stage`: the fits' stage name; `metric`: the name of the fold fits' mean validation score;
    - `model(probe, vectors)`: a factory of the untrained model on that knowledge;
    - `fit(k, probe, vectors, after)`: the fit of fold k (`rlrec.downstream.fit.fit_shard` partial),
      continued from artifact `after` when `continues`;
    - `score(users, texts, vectors)`, with `self.models[k]` for the users of fold k."""

    stage: str
    metric: str

    def __init__(self, ctx, folds: int, seed: int):
        self.ctx, self.prep = ctx, ctx.prep
        self.folds = UserFolds(self.prep.spec.num_users, folds, seed)
        self.models: list = []
        self.fits: list = []  # the fold shards' artifacts the models were loaded from

    def model(self, probe: Probe, vectors) -> Callable:
        raise NotImplementedError(f"{type(self).__name__}.model")

    def fit(self, k: int, probe: Probe, vectors: torch.Tensor, after) -> Callable:
        raise NotImplementedError(f"{type(self).__name__}.fit")

    def refit(self, probe: Probe) -> dict:
        return self.load(probe, stages(self.ctx.executor, self.ctx.store, self.shards(probe)))

    def shards(self, probe: Probe) -> list[Shard]:
        """One stage per fold: fold k's model fitted on this probe's knowledge (continued from fold
        k's last fit when `continues`, so the chain of probes is in its key)."""
        vectors = torch.as_tensor(knowledge_table(self.ctx, probe), dtype=torch.float32)
        out = []
        for k in range(self.folds.folds):
            after = self.fits[k] if self.continues and len(self.fits) > k else None
            deps = {"feedback": self.key, "fold": k, "probe": probe.key, "after": after and after.key}
            out.append(Shard(self.stage, deps, partial(self.fit, k, probe, vectors, after)))
        return out

    def load(self, probe: Probe, fits: list) -> dict:
        """The folds' fitted weights (the shards' artifacts) as the models `score` uses."""
        factory = self.model(probe, knowledge_table(self.ctx, probe))
        self.models = [load_shard(factory, f) for f in fits]
        self.fits = list(fits)
        best = [f.data["best"] for f in fits]
        log.info("%s refit: fold %s %s", self.stage.rsplit("/", 1)[-1], self.metric, [round(b, 4) for b in best])
        return {self.metric: float(np.mean(best))}
