"""`downstream=recommend` (RecLAIF): the LLM is the recommender. The policy is asked recommendation
questions (a history or a query, a candidate list; RecLAIF's prompt); a probe is the policy's
greedy answers to the test questions, parsed and scored (validity, Hit@k, NDCG@k, Precision@k,
diversity) and rated for explainability by an LLM rater (the judge's explain prompt). The table
puts every policy (zero-shot, SFT, each round) next to the classic baselines: SASRec (next item)
or BM25 and a dense retriever (query)."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlrec.data.prompts import DEFAULT_DOMAIN
from rlrec.downstream.base import Downstream
from rlrec.downstream.questions import RecommendationTask, next_item_instances
from rlrec.outputs.results import Probe, Round, Table
from rlrec.runtime.cache import fingerprint

COLUMNS = ("hit@1", "ndcg@3", "validity", "diversity", "explainability", "ndcg@5", "precision@5")
LABELS = {"zero_shot": "LLM zero-shot", "sft": "SFT", "round0": "LLM (round 0)"}


class RecommendDownstream(Downstream):
    uses_policy = True
    zero_shot_row = True  # RecLAIF's table: zero-shot, SFT, DPO rounds
    judge_template = "reclaif_judge"
    title = "Methods (RecLAIF table)"

    def __init__(
        self,
        ctx,
        prompt: str,
        rater: DictConfig,
        sasrec: DictConfig,
        max_new_tokens: int | None = None,
        constrained: bool = False,
        preamble_tokens: int = 64,
        reason_tokens: int = 32,
        compare_free: bool = True,
        **questions,
    ):
        self.ctx, self.prompt, self.max_new_tokens = ctx, prompt, max_new_tokens
        self.rater_cfg, self.sasrec_cfg, self.options = rater, sasrec, questions
        self.constrained, self.compare_free = bool(constrained), bool(compare_free)
        self.preamble_tokens, self.reason_tokens = int(preamble_tokens), int(reason_tokens)
        if self.preamble_tokens < 0 or self.reason_tokens < 1:
            raise ValueError(
                f"downstream.preamble_tokens must be >= 0 and reason_tokens >= 1, got {preamble_tokens}, {reason_tokens}"
            )

    @cached_property
    def task(self) -> RecommendationTask:
        dm = self.ctx.datamodule
        domain = {**DEFAULT_DOMAIN, **(dm.domain or {})}
        return RecommendationTask(dm.prep, dm.templates.get(self.prompt, self.prompt), domain, **self.options)

    @cached_property
    def questions(self) -> dict[int, str]:
        return self.task.prompts("train")

    @cached_property
    def train_users(self) -> np.ndarray:
        return np.array(sorted(self.questions), dtype=np.int64)

    def context(self, user: int, split: str = "train") -> dict:
        return self.task.context(user, split)

    @cached_property
    def _instances_by_prompt(self) -> dict[str, object]:
        return {self.task.prompt(i): i for split in ("train", "test") for i in self.task.instances[split].values()}

    def constraint(self, prompt: str):
        """The policy's decoding constraint for one of this downstream's questions (`constrained=true`):
        the preferences and reasons are free text, each recommendation line names a candidate not
        named yet, at most k lines (rlrec.llm.constrain). None for a prompt that is not a question."""
        if not self.constrained:
            return None
        inst = self._instances_by_prompt.get(prompt)
        if inst is None:
            return None
        from rlrec.downstream.parse import is_list_header
        from rlrec.llm.constrain import CandidateList

        plural = str(self.task.domain["plural"]).title()  # the template's `domain.plural | title`
        return CandidateList(
            tuple(self.task.titles[i] for i in inst.candidates),
            self.task.k,
            f"Recommended {plural} (from most to least likely):",
            is_header=is_list_header,
            max_preamble_tokens=self.preamble_tokens,
            max_reason_tokens=self.reason_tokens,
        )

    def valid_answer(self, user: int, text: str) -> bool:
        """An answer names candidates only (RecLAIF's validity), for distillation's rejection sampling."""
        return self.task.parse(self.task.instances["train"][user], text).valid

    @cached_property
    def rater(self):
        """Rates explainability (1–100) of an answer: the judge's explain prompt, its own LLM."""
        return instantiate(self.rater_cfg)(downstream=self, ctx=self.ctx)

    # ---- a probe: the policy's answers to the test questions, scored ---------------------------
    def probe(self, policy, name: str) -> Probe:
        prompts = self.task.prompts("test")
        users = sorted(prompts)
        texts = policy.greedy([prompts[u] for u in users], self.max_new_tokens)
        metrics = {f"eval/{k}": v for k, v in self._score(users, texts).items()}
        metrics["knowledge_tokens"] = float(np.mean([len(t.split()) for t in texts])) if texts else 0.0
        if self.constrained and self.compare_free and policy.constrain is not None:
            # the same policy writing freely: the row constrained decoding is compared against
            saved, policy.constrain = policy.constrain, None
            try:
                free = policy.greedy([prompts[u] for u in users], self.max_new_tokens)
            finally:
                policy.constrain = saved
            metrics.update({f"eval_free/{k}": v for k, v in self._score(users, free).items()})
        return Probe(name, fingerprint(texts), dict(zip(users, texts)), metrics=metrics)

    def _score(self, users: list[int], texts: list[str]) -> dict:
        """Test metrics of answers `texts` (one per user), with the rater's explainability: a stage."""
        key = fingerprint(texts)
        deps = {
            "answers": key,
            "questions": self.options,
            "data": self.ctx.data_key,
            "rater": [self.rater_cfg, self.rater.llm_cfg.fingerprint if self.rater.llm_cfg else None],
            "encoder": self.ctx.encoder.key,
        }

        def build(work) -> dict:
            metrics, parsed = self.task.evaluate("test", dict(zip(users, texts)), encode=self.ctx.encoder.encode)
            metrics["explainability"] = float(np.nanmean(self.rater.explain(users, texts, split="test")))
            examples = [{"user": u, "answer": t, "valid": parsed[u].valid} for u, t in zip(users[:5], texts)]
            return {"metrics": metrics, "examples": examples}

        art = self.ctx.store.stage("evaluate", deps, build)
        return {k: float(v) for k, v in art.data["metrics"].items()}

    # ---- the table ------------------------------------------------------------------------------
    def evaluate(self, rounds: list[Round]) -> tuple[Table, dict]:
        baselines = self.baselines()
        table = Table(self.title, list(COLUMNS), rows=dict(baselines), plot_metric=None)
        metrics: dict = {}
        for label, m in baselines.items():
            metrics.update({f"{label.lower()}/{k}": v for k, v in m.items()})
        free_rows: dict[str, dict] = {}  # the same policies writing freely, after the constrained rows
        for r in (r for r in rounds if r.t <= 0 or r.trained):  # a stopped round changed nothing
            label = LABELS.get(r.name, r.name.replace("round", "DPO round "))
            row = {k.removeprefix("eval/"): v for k, v in r.probe.metrics.items() if k.startswith("eval/")}
            table.rows[label] = row
            metrics.update({f"{r.name}/eval/{k}": v for k, v in row.items()})
            free = {k.removeprefix("eval_free/"): v for k, v in r.probe.metrics.items() if k.startswith("eval_free/")}
            if free:
                free_rows[f"{label} (unconstrained)"] = free
                metrics.update({f"{r.name}/eval_free/{k}": v for k, v in free.items()})
        table.rows.update(free_rows)
        t = self.task
        invalid = (
            "an invalid answer scores 0 on relevance"
            if t.metrics_on == "valid"
            else ("an answer's recognised candidates are scored even if it also names others")
        )
        table.notes.append(
            f"{len(t.instances['test'])} test questions ({t.setting}, top-{t.k}); {invalid}; diversity = mean pairwise cosine distance of the recommended items' encoder vectors; "
            "explainability = the rater's 0–5 rating mapped to 1–100."
        )
        if self.constrained:
            table.notes.append(
                "LLM rows decode each recommendation line from the question's candidates (downstream.constrained=true: "
                "no repeats, at most k lines; preferences and reasons free text); '(unconstrained)' rows are the same "
                "policy's free-text answers."
            )
        return table, metrics

    def baselines(self) -> dict[str, dict]:
        task = self.task
        test = [task.instances["test"][u] for u in sorted(task.instances["test"])]
        encode = self.ctx.encoder.encode
        if task.setting == "next_item":
            deps = {
                "data": self.ctx.data_key,
                "questions": self.options,
                "sasrec": self.sasrec_cfg,
                "seed": self.ctx.seed,
                "encoder": self.ctx.encoder.key,
                "trainer": self.ctx.trainer_key,
            }
            art = self.ctx.store.stage("baseline/sasrec", deps, lambda work: {"metrics": self._sasrec(test)})
            return {"SASRec": art.data["metrics"]}
        from rlrec.seqrec.retrieval import BM25Retriever, DenseRetriever

        corpus = task.texts[1:]  # corpus position p = catalogue item p + 1
        out = {}
        for name, retriever in (("BM25", BM25Retriever(corpus)), ("Dense", DenseRetriever(encode, corpus))):
            ranked = [[p + 1 for p in retriever.rank(i.query, [c - 1 for c in i.candidates], task.k)] for i in test]
            out[name] = {**task.score_lists(test, ranked, encode), "validity": 1.0}
        return out

    def _sasrec(self, test: list) -> dict:
        """SASRec on every user's positives before the test period; each test question's candidates
        ranked from the same history the LLM sees."""
        from rlrec.seqrec.sasrec import fit_sasrec, pad_left, rank_candidates

        prep, S, seed = self.ctx.prep, self.sasrec_cfg, self.ctx.seed
        f = prep.frame[(prep.frame["label"] > 0) & prep.frame["split"].isin(["prompt", "train"])]
        seqs = {int(u): g["i"].tolist() for u, g in f.groupby("u", sort=True)}
        num_items, max_len = prep.spec.num_items, int(S.model.max_len)
        valid = next_item_instances(
            prep.frame, "valid", num_items, len(test[0].history), len(test[0].candidates), 1, seed
        )
        v = [valid[u] for u in sorted(valid)]
        batch = (
            {
                "seq": torch.as_tensor(pad_left([i.history for i in v], max_len)),
                "target": torch.tensor([i.target for i in v]),
                "candidates": torch.tensor([i.candidates for i in v]),
            }
            if v
            else None
        )
        model = fit_sasrec(
            seqs,
            num_items,
            valid=batch,
            model=instantiate(S.model),
            max_epochs=int(S.max_epochs),
            batch_size=int(S.batch_size),
            patience=S.get("patience"),
            seed=seed,
            trainer=self.ctx.trainer,
        )
        cands = np.array([i.candidates for i in test])
        order = rank_candidates(model, pad_left([i.history for i in test], max_len), cands)
        ranked = np.take_along_axis(cands, order, 1)[:, : self.task.k].tolist()
        scored = self.task.score_lists(test, ranked, self.ctx.encoder.encode)
        return {**scored, "validity": 1.0, "explainability": float("nan")}
