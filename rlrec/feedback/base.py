"""The protocol every feedback strategy follows (the second arrow of the loop):

    feedback.refit(probe)                          # (re)train on the policy's current texts
    rewards = feedback.score(users, texts, vectors)  # (U, N), higher = better

`users` (U,) catalogue indices, `texts` U lists of N strings, `vectors` (U, N, D) their encodings.
`refit` is TrackRec's Rec-tuning when called after each round; strategies with nothing to train
return {}. `key` identifies what the scores depend on besides the texts (the strategy's config,
the data, the encoder, model weights), so rewards are a stage keyed by content. Every strategy is
built by `rlrec.feedback.ensemble.build_feedback(cfg.feedback, ctx, downstream)`: one instance, or an
`Ensemble` of `feedback.ensemble` seeded members (which also exposes `halves()` for reliability).
"""

from __future__ import annotations

import numpy as np

from rlrec.knowledge.index import vector_table
from rlrec.outputs.results import Probe
from rlrec.runtime.cache import fingerprint


class Feedback:
    """The base of every feedback strategy: what the loop may call. A strategy overrides `score` (and
    `refit` when it trains); the optional capabilities below are declared here with the defaults of a
    strategy that lacks them, so the loop never probes a plug-in for an attribute."""

    key: str  # the identity of the scores besides the texts (`feedback_key`)
    continues: bool = False  # True: refit continues from the last fit (then every probe is fitted, in order)
    pairwise: bool = False  # True: a user's rewards rank its texts against each other (a judge), so the
    # held-out gain judges the texts after a round against those before it, head to head
    ensemble: bool = False  # True: `member_rewards()` holds each member's rewards of the last `score`

    def refit(self, probe: Probe) -> dict:
        """Train on the current knowledge of every user; returns metrics of the fit ({}: nothing to train)."""
        return {}

    def score(self, users: np.ndarray, texts: list[list[str]], vectors: np.ndarray) -> np.ndarray:
        """(U, N) rewards for N candidate texts of each user."""
        raise NotImplementedError(f"{type(self).__name__}.score")

    def shards(self, probe: Probe) -> list | None:
        """The fits `refit` would run, as executor shards (`rlrec.runtime.executor.Shard`) that an ensemble
        submits together with its other members'; None: `refit` does its own work."""
        return None

    def load(self, probe: Probe, fits: list) -> dict:
        """Take the built `shards(probe)` as this strategy's fitted models; returns `refit`'s metrics."""
        raise NotImplementedError(f"{type(self).__name__} has no shards")

    def halves(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Two independent halves of the last `score`'s rewards (split-half reliability), or None."""
        return None

    def score_info(self) -> dict:
        """Statistics of the last `score` call (a judge's consistency, say)."""
        return {}

    def member_rewards(self) -> np.ndarray | None:
        """(K, U, N): each member's rewards of the last `score` (`ensemble` strategies), else None."""
        return None


def feedback_key(ctx, name: str, config, *weights, llm: bool = False) -> str:
    """The identity of a strategy's scores: its name and config, the data's content, the encoder's
    vectors, the Trainer settings its fits use (`llm=True`: an LLM's fits), and any model weights it
    reads (fingerprints)."""
    trainer = ctx.llm_trainer_key if llm else ctx.trainer_key
    return fingerprint(name, config, ctx.data_key, ctx.encoder.key, trainer, *weights)


def knowledge_table(ctx, probe: Probe) -> np.ndarray:
    """The probe's knowledge vectors (num_users + 1, D), or its texts encoded into such a table when
    the downstream's probe carries no vectors (the LLM-as-recommender's answers)."""
    if probe.vectors is not None:
        return probe.vectors
    users = sorted(probe.texts)
    return vector_table(ctx.prep.spec.num_users, users, ctx.encoder.encode([probe.texts[u] for u in users]))
