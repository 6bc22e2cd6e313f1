"""TrackRec's validator feedback with V = a CTR backbone carrying the knowledge field (the paper's
"DIN as validator"): the reward of a text about user u is P(true label) of V on u's training
samples when that text is u's knowledge.

V is cross-fitted over user folds (`crossfit.py`). `refit` is the Rec-tuning step: after G is
aligned, V is refit on G's new greedy knowledge (`restart=True` from a fresh init, as TrackRec's
code does, or continued from the last weights).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlrec.data.ctr import TensorBatches, ctr_tensors
from rlrec.downstream.fit import build_model, fit_shard
from rlrec.feedback.base import feedback_key
from rlrec.feedback.crossfit import CrossFitted, mean_by_slot
from rlrec.outputs.results import Probe
from rlrec.tasks.ctr import CTRTask


def p_true(prob: np.ndarray, label: np.ndarray) -> np.ndarray:
    """P(true label) = p if label is 1 else 1 − p.

    >>> p_true(np.array([0.8, 0.8]), np.array([1, 0]))
    array([0.8, 0.2])
    """
    return np.where(label > 0, prob, 1.0 - prob)


class ValidatorFeedback(CrossFitted):
    stage, metric = "feedback_fit/validator", "validator/val_auc"

    def __init__(
        self,
        ctx,
        downstream,
        backbone: DictConfig,
        adapter: DictConfig,
        optimizer: DictConfig,
        folds: int = 2,
        max_epochs: int = 5,
        patience: int = 2,
        batch_size: int = 1024,
        limit_batches: int | float | None = None,
        restart: bool = True,
        seed: int = 0,
    ):
        super().__init__(ctx, folds, seed)
        self.backbone, self.adapter, self.optimizer = backbone, adapter, optimizer
        self.max_epochs, self.patience, self.batch_size = int(max_epochs), int(patience), int(batch_size)
        self.limit_batches, self.restart, self.seed = limit_batches, restart, int(seed)
        self.continues = not restart
        self.key = feedback_key(
            ctx,
            "validator",
            [backbone, adapter, optimizer, folds, max_epochs, patience, batch_size, limit_batches, restart, seed],
        )
        self.train, self.valid = ctr_tensors(self.prep, "train"), ctr_tensors(self.prep, "valid")

    def model(self, probe: Probe, vectors) -> partial:
        adapter = instantiate(self.adapter)
        return partial(build_model, instantiate(self.backbone), self.prep.spec, adapter, vectors, probe.item_vectors)

    def fit(self, k: int, probe: Probe, vectors: torch.Tensor, after) -> partial:
        rows = {
            s: torch.as_tensor(self.folds.train_rows(t["user"], k))
            for s, t in (("train", self.train), ("valid", self.valid))
        }
        train = {key: v[rows["train"]] for key, v in self.train.items()}
        valid = {key: v[rows["valid"]] for key, v in self.valid.items()}
        return partial(
            fit_shard,
            task=partial(CTRTask, optimizer=instantiate(self.optimizer)),
            model=self.model(probe, vectors),
            after=after and str(after.path("model.pt")),
            seed=self.seed + k,
            make_trainer=partial(
                self.ctx.trainer, max_epochs=self.max_epochs, limit_train_batches=self.limit_batches or 1.0
            ),
            train=TensorBatches(train, self.batch_size, shuffle=True, seed=self.seed + k),
            valid=TensorBatches(valid, max(self.batch_size, 4096)),
            monitor="val/auc",
            patience=self.patience,
        )

    @torch.no_grad()
    def score(self, users: np.ndarray, texts: list[list[str]], vectors: np.ndarray) -> np.ndarray:
        assert self.models, "call refit() before score()"
        users = np.asarray(users)
        U, N, _ = vectors.shape
        rewards = np.full((U, N), np.nan)
        row_user = self.train["user"].numpy()
        for k, sel in self.folds.groups(users):
            model = self.models[k]
            rows = np.flatnonzero(np.isin(row_user, users[sel]))
            t = {key: v[rows] for key, v in self.train.items()}
            labels = t["label"].numpy()
            pos = {int(u): i for i, u in enumerate(users[sel])}
            slot = np.array([pos[int(u)] for u in row_user[rows]], dtype=np.int64)
            saved = model.embedding.user_knowledge.clone()
            try:
                for j in range(N):
                    model.embedding.user_knowledge[torch.as_tensor(users[sel])] = torch.as_tensor(
                        vectors[sel, j], dtype=torch.float32
                    )
                    probs = torch.cat([torch.sigmoid(model(b)) for b in TensorBatches(t, 8192)]).numpy()
                    rewards[sel, j] = mean_by_slot(p_true(probs, labels), slot, len(sel))
            finally:
                model.embedding.user_knowledge.copy_(saved)
        return rewards
