"""DPO4Rec's recommender feedback: the reward of a text about user u is u's NDCG@k (mean over u's
re-rank lists) of a knowledge-augmented re-ranker when that text is u's knowledge (`reward=ndcg`,
the paper), or the re-ranker's listwise log-likelihood of u's positives (`reward=loglik`: smooth in
the text's vector, where NDCG changes only when two items swap). The re-ranker
that scores u never trained on u's lists (cross-fitting over user folds, `crossfit.py`);
otherwise the reward would pay for what the re-ranker memorised about u, not for the text."""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlrec.data.ctr import TensorBatches
from rlrec.downstream.fit import build_model, fit_shard, load_shard
from rlrec.downstream.lists import rerank_lists, reranker_factory
from rlrec.feedback.base import Feedback, feedback_key, knowledge_table
from rlrec.feedback.crossfit import UserFolds, mean_by_slot
from rlrec.metrics import list_loglik, list_metrics
from rlrec.outputs.results import Probe
from rlrec.runtime.executor import Shard, stages
from rlrec.tasks.rerank import RerankTask

log = logging.getLogger("rlrec")


class RecommenderFeedback(Feedback):
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
        self.reward = reward
        self.ctx, self.prep = ctx, ctx.prep
        lists = rerank_lists(ctx)
        self.lists, self.valid_lists = lists["train"], lists["valid"]
        self.reranker, self.adapter, self.optimizer = reranker, adapter, optimizer
        self.k, self.loss, self.max_epochs, self.patience = int(k), loss, int(max_epochs), int(patience)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.folds = UserFolds(self.prep.spec.num_users, folds, seed)
        self.key = feedback_key(
            ctx,
            "recommender",
            [
                reranker,
                adapter,
                optimizer,
                k,
                folds,
                loss,
                max_epochs,
                patience,
                batch_size,
                seed,
                ctx.cfg.rerank,
                reward,
            ],
        )
        self.models: list = []
        self.continues = False  # every refit starts from fresh re-rankers

    def refit(self, probe: Probe) -> dict:
        return self.load(probe, stages(self.ctx.executor, self.ctx.store, self.shards(probe)))

    def shards(self, probe: Probe) -> list[Shard]:
        """One stage per fold: fold k's re-ranker fitted from a fresh init on this probe's knowledge."""
        vec = torch.as_tensor(knowledge_table(self.ctx, probe), dtype=torch.float32)
        out = []
        for k in range(self.folds.folds):

            def make(k=k):
                train = self.lists.tensors()
                rows = torch.as_tensor(self.folds.train_rows(self.lists.user, k))
                return partial(
                    fit_shard,
                    task=partial(RerankTask, optimizer=instantiate(self.optimizer), loss=self.loss),
                    model=partial(
                        build_model,
                        reranker_factory(self.ctx, self.reranker),
                        self.prep.spec,
                        instantiate(self.adapter),
                        vec,
                        probe.item_vectors,
                    ),
                    seed=self.seed + k,
                    make_trainer=partial(self.ctx.trainer, max_epochs=self.max_epochs),
                    train=TensorBatches(
                        {key: v[rows] for key, v in train.items()}, self.batch_size, shuffle=True, seed=self.seed + k
                    ),
                    valid=TensorBatches(self.valid_lists.tensors(), 4096),
                    monitor=f"val/ndcg@{self.k}",
                    patience=self.patience,
                )

            deps = {"feedback": self.key, "fold": k, "probe": probe.key}
            out.append(Shard("feedback_fit/recommender", deps, make))
        return out

    def load(self, probe: Probe, fits: list) -> dict:
        """The folds' fitted weights (the shards' artifacts) as the re-rankers `score` uses."""
        vec = knowledge_table(self.ctx, probe)
        spec, reranker, adapter = (self.prep.spec, reranker_factory(self.ctx, self.reranker), instantiate(self.adapter))
        self.models = [
            load_shard(partial(build_model, reranker, spec, adapter, vec, probe.item_vectors), f) for f in fits
        ]
        scores = [f.data["best"] for f in fits]
        log.info("recommender refit: fold val NDCG@%d %s", self.k, [round(s, 4) for s in scores])
        return {f"recommender/val_ndcg@{self.k}": float(np.mean(scores))}

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
