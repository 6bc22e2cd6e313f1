"""TrackRec's validator feedback with V = an LLM answering Yes/No. The reward of a text about user
u is the mean over u's training samples (item, label) of P(true label), with

    P(Yes) = p(Yes) / (p(Yes) + p(No))

read from V's next-token distribution after TrackRec's recommendation prompt (`trackrec_rec`)
holding the text as the user's summary (token ids from V's tokenizer, `choice_probs`).
Cross-fitted (`crossfit.py`): one LoRA-tuned V per user fold, and fold k's V scores only users of
fold k, so it never saw their labels. `refit` is Rec-tuning: SFT of each V on "Yes."/"No." answers
for training samples of the other folds' users, with their current (greedy) texts as summaries;
`restart=True` starts each round from the base weights, else continues. `tune=False` uses the
base LLM as V (zero-shot)."""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlrec.data.prompts import DEFAULT_DOMAIN, PromptTemplate, PromptView
from rlrec.feedback.base import Feedback, feedback_key
from rlrec.feedback.crossfit import UserFolds
from rlrec.feedback.validator import p_true
from rlrec.outputs.results import Probe


class LLMValidatorFeedback(Feedback):
    def __init__(
        self,
        ctx,
        downstream,
        llm,
        domain: dict | None = None,
        template: str = "trackrec_rec",
        history_len: int = 10,
        samples_per_user: int = 8,
        tune: bool = True,
        tune_samples: int = 512,
        lora: dict | None = None,
        optimizer=None,
        epochs: int = 1,
        batch_size: int = 4,
        max_prompt_len: int = 768,
        folds: int = 2,
        restart: bool = True,
        seed: int = 0,
    ):
        self.ctx, self.prep = ctx, ctx.prep
        self.llm_cfg = instantiate(llm) if isinstance(llm, DictConfig) else llm
        self.tune, self.samples_per_user, self.tune_samples = tune, samples_per_user, tune_samples
        self.view = PromptView(self.prep, {**DEFAULT_DOMAIN, **(dict(domain or {}))}, history_len)
        self.template = PromptTemplate(template)
        self.lora = dict(lora or {"r": 8, "alpha": 16, "dropout": 0.0})
        self.optimizer = instantiate(optimizer) if optimizer is not None else None
        self.epochs, self.batch_size, self.max_prompt_len = int(epochs), int(batch_size), int(max_prompt_len)
        self.restart, self.seed = restart, int(seed)
        self.continues = not restart
        self.folds = UserFolds(self.prep.spec.num_users, folds, seed)
        self.key = feedback_key(
            ctx,
            "llm_validator",
            [
                self.template.fingerprint,
                self.view.domain,
                history_len,
                samples_per_user,
                tune,
                tune_samples,
                self.lora,
                optimizer,
                epochs,
                batch_size,
                max_prompt_len,
                folds,
                restart,
                seed,
            ],
            self.llm_cfg.fingerprint,
            llm=True,
        )
        rows = self.prep.rows("train")
        rng = np.random.default_rng(seed)
        users = self.prep.frame["u"].to_numpy()[rows]
        self.rows_of: dict[int, np.ndarray] = {}
        for u in np.unique(users):
            mine = rows[users == u]
            self.rows_of[int(u)] = np.sort(rng.choice(mine, min(samples_per_user, len(mine)), replace=False))
        self.tasks: list = []
        self.summaries: dict[int, str] = {}

    def prompt(self, u: int, row: int, summary: str | None) -> str:
        item = self.view.item(int(self.prep.frame["i"].iat[row]))
        return self.template.render(
            user=self.view.user(u), history=self.view.history(u), target=item, summary=summary, domain=self.view.domain
        )

    def _task(self, k: int):
        from rlrec.tasks.sft import SFTTask

        if self.restart or len(self.tasks) <= k:
            torch.manual_seed(self.seed + k)  # each fold's LoRA init, independent of what ran before
            task = SFTTask(self.llm_cfg, lora=self.lora, optimizer=self.optimizer)
            task.configure_model()
            task.to(self.ctx.device)
            self.tasks[k : k + 1] = [task]
        return self.tasks[k]

    def refit(self, probe: Probe) -> dict:
        """Rec-tuning on the current texts (u → greedy text); returns the mean SFT loss per fold."""
        from torch.utils.data import DataLoader

        from rlrec.llm.data import SFTDataset
        from rlrec.tasks.sft import fit_sft

        self.summaries = dict(probe.texts)
        labels = self.prep.frame["label"].to_numpy()
        losses = []
        for k in range(self.folds.folds):
            task = self._task(k)
            if not self.tune:
                continue
            rng = np.random.default_rng(self.seed + k)
            pool = [(u, r) for u, rows in self.rows_of.items() if self.folds.of[u] != k for r in rows]
            pick = rng.choice(len(pool), min(self.tune_samples, len(pool)), replace=False) if pool else []
            examples = [
                {"prompt": self.prompt(u, r, self.summaries.get(u)), "completion": "Yes." if labels[r] > 0 else "No."}
                for u, r in (pool[i] for i in pick)
            ]
            ds = SFTDataset(examples, task.tokenizer, self.max_prompt_len, 4, chat_template=True)
            loader = DataLoader(
                ds,
                batch_size=self.batch_size,
                shuffle=True,
                collate_fn=ds.collate,
                generator=torch.Generator().manual_seed(self.seed + k),
            )
            task, _, last = fit_sft(task, loader, self.ctx.llm_trainer, self.epochs)
            task.configure_model()  # a fit on launched ranks sends the task back without its frozen weights
            self.tasks[k] = task.to(self.ctx.device)
            losses.append(last.get("train/sft_loss", float("nan")))
        return {"validator/sft_loss": float(np.mean(losses))} if losses else {}

    def p_yes(self, k: int, prompts: list[str]) -> np.ndarray:
        from rlrec.llm.logps import chat_choice_probs

        task = self._task(k) if len(self.tasks) <= k else self.tasks[k]
        return chat_choice_probs(task.policy.eval(), task.tokenizer, prompts, ("Yes", "No"), self.batch_size)[
            :, 0
        ].numpy()

    def score(self, users: np.ndarray, texts: list[list[str]], vectors=None) -> np.ndarray:
        users = np.asarray(users)
        N = len(texts[0]) if texts else 0
        rewards = np.full((len(users), N), np.nan)
        labels = self.prep.frame["label"].to_numpy()
        for k, sel in self.folds.groups(users):
            jobs = [(s, j, r) for s in sel for j in range(N) for r in self.rows_of.get(int(users[s]), [])]
            if not jobs:
                continue
            p = self.p_yes(k, [self.prompt(int(users[s]), r, texts[s][j]) for s, j, r in jobs])
            pt = p_true(p, labels[[r for _, _, r in jobs]])
            sums, counts = np.zeros((len(users), N)), np.zeros((len(users), N))
            for (s, j, _), x in zip(jobs, pt):  # mean P(true label) per (user, text)
                sums[s, j] += x
                counts[s, j] += 1
            done = counts > 0
            rewards[done] = sums[done] / counts[done]
        return rewards
