"""DPO4Rec's recommender feedback: the reward of a text about user u is u's NDCG@k (mean over
u's re-rank lists) of a knowledge-augmented re-ranker when that text is u's knowledge.

The re-ranker that scores u never trained on u's lists (cross-fitting over user folds);
otherwise the reward would pay for what the re-ranker memorised about u, not for the text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rlrec.data.features import PreparedData
from rlrec.data.rerank import RerankLists
from rlrec.feedback.validator import user_folds
from rlrec.metrics import list_metrics
from rlrec.tasks.rerank import fit_rerank

log = logging.getLogger("rlrec")


class RecommenderFeedback:
    name = "recommender"

    def __init__(
        self,
        prep: PreparedData,
        lists: RerankLists,
        valid_lists: RerankLists,
        reranker: Callable[..., nn.Module],
        adapter: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        k: int = 5,
        folds: int = 2,
        loss: str = "listwise",
        max_epochs: int = 10,
        patience: int = 3,
        batch_size: int = 256,
        seed: int = 0,
    ):
        assert folds >= 2, "cross-fitting needs at least 2 user folds"
        self.prep, self.lists, self.valid_lists = prep, lists, valid_lists
        self.reranker, self.adapter, self.optimizer = reranker, adapter, optimizer
        self.k, self.folds, self.loss = k, folds, loss
        self.max_epochs, self.patience, self.batch_size, self.seed = max_epochs, patience, batch_size, seed
        self.fold_of = user_folds(prep.spec.num_users, folds, seed)
        self.models: list[nn.Module] = []

    def fit(self, user_vectors: np.ndarray, texts: dict[int, str] | None = None) -> dict:
        vec = torch.as_tensor(user_vectors, dtype=torch.float32)
        spec = self.prep.spec.with_knowledge((vec.shape[1],))
        train, valid = self.lists.tensors(), self.valid_lists.tensors()
        fold = self.fold_of[self.lists.user]
        self.models, scores = [], []
        for k in range(self.folds):
            torch.manual_seed(self.seed + k)
            model = self.reranker(features=spec, adapter=self.adapter)
            model.embedding.set_knowledge(user=vec)
            tr = {key: v[torch.as_tensor(fold != k)] for key, v in train.items()}
            model, best = fit_rerank(
                model, tr, valid, self.optimizer, self.loss, self.max_epochs, self.patience, self.batch_size,
                self.seed + k, f"ndcg@{self.k}",
            )  # fmt: skip
            self.models.append(model)
            scores.append(best)
        log.info("recommender refit: fold val NDCG@%d %s", self.k, [round(s, 4) for s in scores])
        return {f"recommender/val_ndcg@{self.k}": float(np.mean(scores))}

    @torch.no_grad()
    def score(self, users: np.ndarray, texts: list[list[str]], vectors: np.ndarray) -> np.ndarray:
        assert self.models, "call fit() before score()"
        users = np.asarray(users)
        U, N, _ = vectors.shape
        rewards = np.full((U, N), np.nan)
        t = self.lists.tensors()
        for k, model in enumerate(self.models):
            sel = np.flatnonzero(self.fold_of[users] == k)
            rows = np.flatnonzero(np.isin(self.lists.user, users[sel]))
            if not len(rows):
                continue
            batch = {key: v[rows] for key, v in t.items()}
            slot = np.searchsorted(users[sel], self.lists.user[rows], sorter=np.argsort(users[sel]))
            slot = np.argsort(users[sel])[slot]
            counts = np.bincount(slot, minlength=len(sel))
            for j in range(N):
                uk = torch.as_tensor(vectors[sel, j], dtype=torch.float32)[torch.as_tensor(slot)]
                scores = model({**batch, "user_knowledge": uk}).numpy()
                ndcg = list_metrics(scores, batch["labels"].numpy(), batch["mask"].numpy(), (self.k,))[
                    f"ndcg@{self.k}"
                ]
                sums = np.bincount(slot, weights=ndcg, minlength=len(sel))
                rewards[sel, j] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return rewards
