"""RecLAIF's judge feedback (§4.2, Eq. 5): an LLM judge scores two sampled recommendations of the
same prompt on relevance, diversity and explainability (0–5 each, `reclaif_judge.j2`) and names
the chosen one; chosen/rejected become a DPO pair. Verdict parsing and combination (pure) are in
`verdict.py`; this module holds the LLM side.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlrec.feedback.base import Feedback, feedback_key
from rlrec.feedback.verdict import JudgeStats, explain_score, first_wins, judge_pairs, logit_winners
from rlrec.llm.generation import SamplingConfig
from rlrec.runtime.cache import fingerprint

# ---- the strategy: an LLM judge behind the Feedback protocol ------------------------------------
DECISION_PREFIX = "Chosen Option:"
EXPLAIN_PREFIX = "Explainability Score:"


class JudgeFeedback(Feedback):
    """`feedback=judge` (RecLAIF): rewards of a user's N sampled answers from pairwise judge verdicts
    (every pair i < j, both orders): reward_j = wins of j (a tie or an undecided pair gives each ½),
    so N = 2 gives the paper's DPO pair and all-equal groups (no decision) are dropped downstream.

    mode "generate" (the paper): the judge writes the template's full evaluation; the verdict is
    parsed, and kept only when both orders agree (`combine`). mode "logits" (small or local judges):
    the decision is read from the judge's next-token distribution over "A"/"B" after
    "Chosen Option:" in both orders, p(1 ≻ 2) = ½[P(A | 1 as A) + P(B | 2 as A)] — the position
    bias cancels — and a pair is decided only when both orders prefer the same answer and
    |p − ½| > `margin` (`logit_winners`). `halves()` gives the rewards each order gives alone. `explain` scores one answer's
    explainability on RecLAIF's 1–100 scale the same two ways (0–5 → 1 + 99·s/5).

    The question an answer was written for comes from `downstream.context(user, split)`, so the
    judge can compare any two texts the downstream asks for (recommendations, knowledge texts).
    Stats in logits mode: consistent / inconsistent = whether the two orders prefer the same answer
    on their own; ties = pairs left undecided (every inconsistent pair, and agreeing pairs within the
    margin)."""

    # a user's rewards rank its answers against each other: the loop's held-out gain judges head to head
    pairwise = True

    def __init__(
        self,
        downstream,
        llm,
        template,
        explain_template,
        mode: str = "logits",
        margin: float = 0.0,
        max_new_tokens: int = 384,
        batch_size: int = 8,
        cache_dir: str | None = None,
        progress: bool = True,
        base_url: str | None = None,
        api_model: str | None = None,
        ctx=None,
    ):
        from rlrec.data.prompts import PromptTemplate

        if mode not in ("generate", "logits"):
            raise ValueError(f"feedback.mode must be 'generate' or 'logits', got {mode!r}")
        if base_url and mode == "logits":
            raise ValueError("an endpoint judge (feedback.base_url) needs feedback.mode=generate")
        self.downstream, self.mode, self.margin = downstream, mode, float(margin)
        self.llm_cfg = instantiate(llm) if isinstance(llm, DictConfig) else llm
        template = downstream.judge_template if template is None else template  # the downstream's comparison
        self.template = PromptTemplate(template) if isinstance(template, str) else template
        self.explain_template = (
            PromptTemplate(explain_template) if isinstance(explain_template, str) else explain_template
        )
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
        self.ctx, self.progress, self.base_url, self.api_model = ctx, progress, base_url, api_model
        self.cache_dir = cache_dir if cache_dir is not None or ctx is None else ctx.generation_cache
        weights = api_model if base_url else (self.llm_cfg.fingerprint if self.llm_cfg is not None else None)
        config = [
            getattr(self.template, "fingerprint", template),
            getattr(self.explain_template, "fingerprint", None),
            mode,
            margin,
            max_new_tokens,
            base_url,
            weights,
        ]
        self.key = feedback_key(ctx, "judge", config) if ctx is not None else fingerprint("judge", config)
        self.stats = JudgeStats()
        self._halves: np.ndarray | None = None  # (2, U, N) of the last `score`

    # -- the judge model (a frozen policy, loaded on first use) ---------------------------------------
    @cached_property
    def judge(self):
        from rlrec.policy import Policy

        sampling = SamplingConfig.preset(batch_size=self.batch_size)
        if self.base_url:
            sampling = SamplingConfig.preset(backend="openai", base_url=self.base_url, api_model=self.api_model)
        device = self.ctx.device if self.ctx is not None else "cpu"
        return Policy.frozen(self.llm_cfg, sampling, self.cache_dir, device, progress=self.progress)

    def _generate(self, prompts: list[str]) -> list[str]:
        return self.judge.greedy(prompts, self.max_new_tokens)

    def _choice(self, prompts: list[str], prefix: str, choices: Sequence[str]):
        from rlrec.llm.logps import chat_choice_probs

        model, tok = self.judge.task.model, self.judge.tokenizer
        return chat_choice_probs(model, tok, prompts, choices, self.batch_size, prefix).numpy()  # (P, C)

    def judge_prompt(self, user: int, option_a: str, option_b: str) -> str:
        return self.template.render(option_a=option_a, option_b=option_b, **self.downstream.context(user, "train"))

    # -- Feedback protocol -------------------------------------------------------------------------
    def refit(self, probe=None) -> dict:
        return {}  # the judge is not trained

    def score(self, users, texts: list[list[str]], vectors=None) -> np.ndarray:
        """(U, N) rewards: pairwise wins of each answer."""
        users = [int(u) for u in users]
        self.stats = JudgeStats()  # this call's verdict counts
        N = len(texts[0]) if texts else 0
        pairs = [(u, i, j) for u in users for i in range(N) for j in range(i + 1, N)]
        rewards = np.zeros((len(users), N))
        halves = np.zeros((2, len(users), N))  # the in-order and the swapped verdicts on their own
        self._halves = halves
        row_of = {u: r for r, u in enumerate(users)}
        if not pairs:
            return rewards
        if self.mode == "generate":
            fns = [lambda a, b, _u=u: self.judge_prompt(_u, a, b) for u, _, _ in pairs]
            opts = [(texts[row_of[u]][i], texts[row_of[u]][j]) for u, i, j in pairs]
            results = judge_pairs(self._generate, fns, opts)
            self.stats.update(results)
            winners = [r.winner for r in results]
            # P(option i wins) per order: 1 / 0 for a verdict, ½ for a tie or an unreadable one
            p_first = np.array([[first_wins(r.verdicts[0], "A"), first_wins(r.verdicts[1], "B")] for r in results])
        else:
            prompts = []
            for u, i, j in pairs:
                a, b = texts[row_of[u]][i], texts[row_of[u]][j]
                prompts += [self.judge_prompt(u, a, b), self.judge_prompt(u, b, a)]
            p = self._choice(prompts, DECISION_PREFIX, ("A", "B"))  # (2P, 2)
            p_first = np.stack([p[0::2, 0], p[1::2, 1]], 1)  # P(option i ≻ option j) read in each order
            winners = logit_winners(p_first, self.margin)
            agree = (p_first[:, 0] > 0.5) == (p_first[:, 1] > 0.5)
            self.stats.pairs += len(pairs)
            self.stats.consistent += int(agree.sum())
            self.stats.inconsistent += int((~agree).sum())
            self.stats.ties += int(sum(w is None for w in winners))
        for (u, i, j), w, pf in zip(pairs, winners, p_first):
            r = row_of[u]
            if w is None:
                rewards[r, i] += 0.5
                rewards[r, j] += 0.5
            else:
                rewards[r, (i, j)[w]] += 1.0
            halves[:, r, i] += pf
            halves[:, r, j] += 1.0 - pf
        return rewards

    def halves(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The last `score` call's rewards from the in-order verdicts alone and from the swapped ones
        alone (soft wins): two independent halves of the judge for `split_half`."""
        h = self._halves
        return None if h is None else (h[0], h[1])

    def score_info(self) -> dict:
        """The verdict counts of the last `score` call."""
        return self.stats.as_dict()

    def explain(self, users, texts: list[str], split: str = "test") -> np.ndarray:
        """(U,) explainability 1–100 of each user's answer to their `split` question (nan where a
        generated score is unreadable)."""
        prompts = [
            self.explain_template.render(option=t, **self.downstream.context(int(u), split))
            for u, t in zip(users, texts)
        ]
        if not prompts:
            return np.zeros(0)
        if self.mode == "logits":
            p = self._choice(prompts, EXPLAIN_PREFIX, tuple("012345"))  # (U, 6)
            expected = p @ np.arange(6)
            return 1 + 99 * expected / 5
        return np.array([explain_score(answer) for answer in self._generate(prompts)])
