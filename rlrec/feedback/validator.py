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

    def fit(self, user_vectors: np.ndarray, texts: dict[int, str] | None = None) -> dict:
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


class LLMValidator:
    """V = an LLM answering Yes/No (TrackRec's LLM validator). The reward of a text about user u is
    the mean over u's training samples (item, label) of P(true label), with

        P(Yes) = p(Yes) / (p(Yes) + p(No))

    read from V's next-token distribution after TrackRec's recommendation prompt (`trackrec_rec`)
    holding the text as the user's summary — the token ids come from V's tokenizer (`choice_probs`).
    Cross-fitted like `CTRValidator`: one LoRA-tuned V per user fold, and fold k's V scores only
    users of fold k, so it never saw their labels. `fit` is Rec-tuning: SFT of each V on "Yes."/"No."
    answers for training samples of the other folds' users, with their current (greedy) texts as
    summaries; `restart=True` starts each round from the base weights, else continues. `tune=False`
    uses the base LLM as V (zero-shot)."""

    name = "validator"

    def __init__(
        self, prep: PreparedData, llm, domain: dict | None = None, template: str = "trackrec_rec",
        history_len: int = 10, samples_per_user: int = 8, tune: bool = True, tune_samples: int = 512,
        lora: dict | None = None, optimizer: Callable | None = None, epochs: int = 1, batch_size: int = 4,
        max_prompt_len: int = 768, folds: int = 2, restart: bool = True, seed: int = 0,
    ):  # fmt: skip
        from rlrec.data.prompts import DEFAULT_DOMAIN, PromptTemplate, PromptView

        assert folds >= 2, "cross-fitting needs at least 2 user folds"
        self.prep, self.llm_cfg, self.tune = prep, llm, tune
        self.view = PromptView(prep, {**DEFAULT_DOMAIN, **(domain or {})}, history_len)
        self.template = PromptTemplate(template)
        self.samples_per_user, self.tune_samples = samples_per_user, tune_samples
        self.lora = dict(lora or {"r": 8, "alpha": 16, "dropout": 0.0})
        self.optimizer, self.epochs, self.batch_size = optimizer, epochs, batch_size
        self.max_prompt_len, self.folds, self.restart, self.seed = max_prompt_len, folds, restart, seed
        self.fold_of = user_folds(prep.spec.num_users, folds, seed)
        f = prep.frame
        rows = prep.rows("train")
        self.rows_of: dict[int, np.ndarray] = {}
        rng = np.random.default_rng(seed)
        users = f["u"].to_numpy()[rows]
        for u in np.unique(users):
            mine = rows[users == u]
            self.rows_of[int(u)] = np.sort(rng.choice(mine, min(samples_per_user, len(mine)), replace=False))
        self.tasks: list = []
        self.summaries: dict[int, str] = {}

    def prompt(self, u: int, row: int, summary: str | None) -> str:
        item = self.view.item(int(self.prep.frame["i"].iat[row]))
        return self.template.render(
            user=self.view.user(u), history=self.view.history(u), target=item, summary=summary,
            domain=self.view.domain,
        )  # fmt: skip

    def _task(self, k: int):
        from rlrec.tasks.sft import SFTTask

        if self.restart or len(self.tasks) <= k:
            task = SFTTask(self.llm_cfg, lora=self.lora, optimizer=self.optimizer)
            task.configure_model()
            if len(self.tasks) <= k:
                self.tasks.append(task)
            else:
                self.tasks[k] = task
        return self.tasks[k]

    def fit(self, user_vectors=None, texts: dict[int, str] | None = None) -> dict:
        """Rec-tuning on the current texts (u → greedy text); returns mean SFT loss per fold."""
        self.summaries = dict(texts or {})
        losses = []
        for k in range(self.folds):
            task = self._task(k)
            if not self.tune:
                continue
            from torch.utils.data import DataLoader

            from rlrec.llm.data import SFTDataset
            from rlrec.tasks import inner_trainer

            rng = np.random.default_rng(self.seed + k)
            pool = [(u, r) for u, rows in self.rows_of.items() if self.fold_of[u] != k for r in rows]
            pick = rng.choice(len(pool), min(self.tune_samples, len(pool)), replace=False) if pool else []
            labels = self.prep.frame["label"].to_numpy()
            examples = [
                {"prompt": self.prompt(u, r, self.summaries.get(u)), "completion": "Yes." if labels[r] > 0 else "No."}
                for u, r in (pool[i] for i in pick)
            ]  # fmt: skip
            ds = SFTDataset(examples, task.tokenizer, self.max_prompt_len, 4, chat_template=True)
            loader = DataLoader(ds, batch_size=self.batch_size, shuffle=True, collate_fn=ds.collate,
                                generator=torch.Generator().manual_seed(self.seed + k))  # fmt: skip
            trainer = inner_trainer(self.epochs, progress=True)
            task.train()
            trainer.fit(task, loader)
            task.eval()
            losses.append(float(trainer.callback_metrics.get("train/sft_loss", float("nan"))))
        return {"validator/sft_loss": float(np.mean(losses))} if losses else {}

    def p_yes(self, k: int, prompts: list[str]) -> np.ndarray:
        from rlrec.llm.chat import format_chat
        from rlrec.llm.logps import choice_probs

        task = self._task(k) if len(self.tasks) <= k else self.tasks[k]
        tok = task.tokenizer
        formatted = [format_chat(tok, p) for p in prompts]
        return choice_probs(task.policy.eval(), tok, formatted, ("Yes", "No"), self.batch_size).numpy()[:, 0]

    def score(self, users: np.ndarray, texts: list[list[str]], vectors=None) -> np.ndarray:
        users = np.asarray(users)
        N = len(texts[0]) if texts else 0
        rewards = np.full((len(users), N), np.nan)
        labels = self.prep.frame["label"].to_numpy()
        for k in range(self.folds):
            sel = [s for s in range(len(users)) if self.fold_of[int(users[s])] == k]
            jobs = [(s, j, r) for s in sel for j in range(N) for r in self.rows_of.get(int(users[s]), [])]
            if not jobs:
                continue
            prompts = [self.prompt(int(users[s]), r, texts[s][j]) for s, j, r in jobs]
            p = self.p_yes(k, prompts)
            pt = p_true(p, labels[[r for _, _, r in jobs]])
            sums, counts = np.zeros((len(users), N)), np.zeros((len(users), N))
            for (s, j, _), x in zip(jobs, pt):  # mean P(true label) per (user, text)
                sums[s, j] += x
                counts[s, j] += 1
            done = counts > 0
            rewards[done] = sums[done] / counts[done]
        return rewards
