"""The protocol every downstream follows (the second plug-in axis, `cfg.downstream`):

    downstream = instantiate(cfg.downstream)(ctx=ctx)
    downstream.questions[u]            # the prompt the policy is aligned on for training user u
    downstream.train_users             # (U,) users whose samples may be scored
    probe = downstream.probe(policy, "round1")   # what the downstream makes of a policy
    table, metrics = downstream.evaluate(rounds) # the paper-style table after the last round

`ctr` and `rerank` / `kar` (knowledge.py) turn the policy's greedy texts into a feature field of a
CTR backbone or a re-ranker; `recommend` (recommend.py) asks the policy for recommendations.
"""

from __future__ import annotations

import numpy as np

from rlrec.data.schema import DataError
from rlrec.outputs.results import Probe, Round, Table


class Downstream:
    """The base of every downstream: what the run and the loop may call. Optional capabilities are
    declared here with the defaults of a downstream that lacks them, so nothing probes a plug-in."""

    uses_policy: bool  # False: the table needs no LLM (a backbone or re-ranker alone)
    zero_shot_row: bool  # True: with distillation, the table also shows the policy before it
    judge_template: str  # the judge prompt that compares two of this downstream's texts
    questions: dict[int, str]
    train_users: np.ndarray

    def context(self, user: int, split: str = "train") -> dict:
        """What a judge sees of the question a text answers (history, candidates, target, domain)."""

    def valid_answer(self, user: int, text: str) -> bool:
        """Whether `text` is an acceptable answer to `user`'s question (distillation keeps only these)."""

    def probe(self, policy, name: str) -> Probe:
        """The policy's greedy texts as this downstream uses them (knowledge vectors or an evaluation)."""

    def evaluate(self, rounds: list[Round]) -> tuple[Table, dict]:
        """The final table and its flat metrics, from the rounds' probes."""

    # a downstream whose answers have a format (RecLAIF: items from the candidate list) overrides this
    # with `constraint(prompt)` → the policy's decoding constraint for that question
    constraint = None

    def from_files(self, source) -> Probe:
        """Knowledge from files in the export format (`knowledge.source`) as a probe, with no LLM."""
        raise DataError(
            f"knowledge.source={str(source)!r}: downstream {type(self).__module__}.{type(self).__qualname__} takes no "
            "knowledge (knowledge.source feeds a CTR backbone or a re-ranker: downstream=ctr, rerank or kar)"
        )
