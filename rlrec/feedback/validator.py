"""TrackRec's validator feedback: the reward of a text about user u is P(true label) of a
validator V on u's samples when that text is u's knowledge.

`CTRValidator` — V is a CTR backbone with the knowledge field (the paper's "DIN as validator").
V is cross-fitted over user folds: the model that scores user u never trained on u's samples,
so a text is rewarded for knowledge that generalises, not for what V memorised about u.
`fit` is the Rec-tuning step: after G is aligned, V is refit on G's new greedy knowledge
(`restart=True` from a fresh init, as TrackRec's code does, or continued from the last weights).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rlrec.data.ctr import TensorBatches, ctr_tensors
from rlrec.data.features import PreparedData
from rlrec.tasks.ctr import fit_ctr

log = logging.getLogger("rlrec")


def p_true(prob: np.ndarray, label: np.ndarray) -> np.ndarray:
    """P(true label) = p if label is 1 else 1 − p."""
    return np.where(label > 0, prob, 1.0 - prob)


def user_folds(num_users: int, folds: int, seed: int) -> np.ndarray:
    """(num_users + 1,) fold id per user catalogue index (row 0 unused)."""
    rng = np.random.default_rng(seed)
    f = np.zeros(num_users + 1, np.int64)
    f[1:] = rng.permutation(num_users) % folds
    return f


class CTRValidator:
    name = "validator"

    def __init__(
        self,
        prep: PreparedData,
        backbone: Callable[..., nn.Module],
        adapter: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        folds: int = 2,
        max_epochs: int = 5,
        patience: int = 2,
        batch_size: int = 1024,
        limit_batches: int | float | None = None,
        restart: bool = True,
        seed: int = 0,
    ):
        assert folds >= 2, "cross-fitting needs at least 2 user folds"
        self.prep, self.backbone, self.adapter, self.optimizer = prep, backbone, adapter, optimizer
        self.folds, self.max_epochs, self.patience = folds, max_epochs, patience
        self.batch_size, self.limit_batches, self.restart, self.seed = (
            batch_size,
            limit_batches,
            restart,
            seed,
        )
        self.fold_of = user_folds(prep.spec.num_users, folds, seed)
        self.train, self.valid = ctr_tensors(prep, "train"), ctr_tensors(prep, "valid")
        self.models: list[nn.Module] = []

    def _subset(self, t: dict, keep: torch.Tensor) -> dict:
        return {k: v[keep] for k, v in t.items()}

    def fit(self, user_vectors: np.ndarray) -> dict:
        vec = torch.as_tensor(user_vectors, dtype=torch.float32)
        spec = self.prep.spec.with_knowledge((vec.shape[1],))
        fold_t = torch.as_tensor(self.fold_of)
        aucs = []
        for k in range(self.folds):
            if self.restart or len(self.models) <= k:
                torch.manual_seed(self.seed + k)
                model = self.backbone(features=spec, adapter=self.adapter)
            else:
                model = self.models[k]
            model.embedding.set_knowledge(user=vec)
            tr = self._subset(self.train, fold_t[self.train["user"]] != k)
            va = self._subset(self.valid, fold_t[self.valid["user"]] != k)
            model, auc = fit_ctr(
                model, tr, va, self.optimizer, self.max_epochs, self.patience, self.batch_size,
                self.seed + k, self.limit_batches,
            )  # fmt: skip
            if len(self.models) <= k:
                self.models.append(model)
            else:
                self.models[k] = model
            aucs.append(auc)
        log.info("validator refit: fold val AUC %s", [round(a, 4) for a in aucs])
        return {"validator/val_auc": float(np.mean(aucs))}

    @torch.no_grad()
    def score(self, users: np.ndarray, texts: list[list[str]], vectors: np.ndarray) -> np.ndarray:
        assert self.models, "call fit() before score()"
        users = np.asarray(users)
        U, N, _ = vectors.shape
        rewards = np.full((U, N), np.nan)
        row_user = self.train["user"].numpy()
        for k, model in enumerate(self.models):
            sel = np.flatnonzero(self.fold_of[users] == k)
            if not len(sel):
                continue
            rows = np.flatnonzero(np.isin(row_user, users[sel]))
            t = {key: v[rows] for key, v in self.train.items()}
            labels, ru = t["label"].numpy(), row_user[rows]
            pos = {int(u): i for i, u in enumerate(users[sel])}
            slot = np.array([pos[int(u)] for u in ru])
            saved = model.embedding.user_knowledge.clone()
            try:
                for j in range(N):
                    model.embedding.user_knowledge[torch.as_tensor(users[sel])] = torch.as_tensor(
                        vectors[sel, j], dtype=torch.float32
                    )
                    probs = torch.cat([torch.sigmoid(model(b)) for b in TensorBatches(t, 8192)]).numpy()
                    pt = p_true(probs, labels)
                    sums = np.bincount(slot, weights=pt, minlength=len(sel))
                    counts = np.bincount(slot, minlength=len(sel))
                    rewards[sel, j] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            finally:
                model.embedding.user_knowledge.copy_(saved)
        return rewards
