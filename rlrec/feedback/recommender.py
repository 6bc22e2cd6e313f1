"""DPO4Rec's recommender feedback: the reward of a text about user u is u's NDCG@k (mean over u's
re-rank lists) of a knowledge-augmented re-ranker when that text is u's knowledge (`reward=ndcg`,
the paper), or the re-ranker's listwise log-likelihood of u's positives (`reward=loglik`: smooth in
the text's vector, where NDCG changes only when two items swap). The re-ranker
that scores u never trained on u's lists (cross-fitting over user folds, `crossfit.py`);
otherwise the reward would pay for what the re-ranker memorised about u, not for the text."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlrec.data.ctr import TensorBatches
from rlrec.downstream.fit import build_model, fit_shard
from rlrec.downstream.lists import rerank_lists, reranker_factory
from rlrec.feedback.base import feedback_key
from rlrec.feedback.crossfit import CrossFitted, mean_by_slot
from rlrec.metrics import list_loglik, list_metrics
from rlrec.outputs.results import Probe
from rlrec.tasks.rerank import RerankTask


class RecommenderFeedback(CrossFitted):
    stage = "feedback_fit/recommender"  # every refit starts from fresh re-rankers (not `continues`)

    def __init__(
        self,
        ctx,
        downstream,
        reranker: DictConfig,
        adapter: DictConfig,
        optimizer: DictConfig,
        k: int = 5,
        folds: int = 2,
        loss: str = "listwise",
        max_epochs: int = 10,
        patience: int = 3,
        batch_size: int = 256,
        seed: int = 0,
        reward: str = "ndcg",
    ):
        if reward not in ("ndcg", "loglik"):
            raise ValueError(f"feedback.reward must be 'ndcg' (DPO4Rec) or 'loglik', got {reward!r}")
        super().__init__(ctx, folds, seed)
        self.reward, self.metric = reward, f"recommender/val_ndcg@{int(k)}"
        lists = rerank_lists(ctx)
        self.lists, self.valid_lists = lists["train"], lists["valid"]
        self.reranker, self.adapter, self.optimizer = reranker, adapter, optimizer
        self.k, self.loss, self.max_epochs, self.patience = int(k), loss, int(max_epochs), int(patience)
        self.batch_size, self.seed = int(batch_size), int(seed)
        config = [reranker, adapter, optimizer, k, folds, loss, max_epochs, patience, batch_size, seed, ctx.cfg.rerank]
        self.key = feedback_key(ctx, "recommender", [*config, reward])

    def model(self, probe: Probe, vectors) -> partial:
        reranker, adapter = reranker_factory(self.ctx, self.reranker), instantiate(self.adapter)
        return partial(build_model, reranker, self.prep.spec, adapter, vectors, probe.item_vectors)

    def fit(self, k: int, probe: Probe, vectors: torch.Tensor, after) -> partial:
        """Fold k's re-ranker fitted from a fresh init on this probe's knowledge."""
        train = self.lists.tensors()
        rows = torch.as_tensor(self.folds.train_rows(self.lists.user, k))
        return partial(
            fit_shard,
            task=partial(RerankTask, optimizer=instantiate(self.optimizer), loss=self.loss),
            model=self.model(probe, vectors),
            seed=self.seed + k,
            make_trainer=partial(self.ctx.trainer, max_epochs=self.max_epochs),
            train=TensorBatches(
                {key: v[rows] for key, v in train.items()}, self.batch_size, shuffle=True, seed=self.seed + k
            ),
            valid=TensorBatches(self.valid_lists.tensors(), 4096),
            monitor=f"val/ndcg@{self.k}",
            patience=self.patience,
        )

    @torch.no_grad()
    def score(self, users: np.ndarray, texts: list[list[str]], vectors: np.ndarray) -> np.ndarray:
        assert self.models, "call refit() before score()"
        users = np.asarray(users)
        U, N, _ = vectors.shape
        rewards = np.full((U, N), np.nan)
        t = self.lists.tensors()
        for k, sel in self.folds.groups(users):
            rows = np.flatnonzero(np.isin(self.lists.user, users[sel]))
            if not len(rows):
                continue
            batch = {key: v[rows] for key, v in t.items()}
            order = np.argsort(users[sel])
            slot = order[np.searchsorted(users[sel], self.lists.user[rows], sorter=order)]
            for j in range(N):
                uk = torch.as_tensor(vectors[sel, j], dtype=torch.float32)[torch.as_tensor(slot)]
                scores = self.models[k]({**batch, "user_knowledge": uk}).numpy()
                labels, mask = batch["labels"].numpy(), batch["mask"].numpy()
                if self.reward == "ndcg":
                    per_list = list_metrics(scores, labels, mask, (self.k,))[f"ndcg@{self.k}"]
                else:  # lists without a positive carry no evidence: left out of the user's mean
                    per_list = list_loglik(scores, labels, mask)
                keep = ~np.isnan(per_list)
                rewards[sel, j] = mean_by_slot(per_list[keep], slot[keep], len(sel))
        return rewards
