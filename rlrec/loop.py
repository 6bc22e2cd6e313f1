"""The loop the three papers share (DESIGN's arrow diagram):

    round 0: probe the policy (its greedy texts, as the downstream uses them)
    round t: refit the feedback on the last probe (TrackRec's Rec-tuning) → sample N texts for a
             seeded subset of training users → score them (feedback) → preference groups
             (best vs all / best vs worst) → preference-optimise the policy → probe it

It imports no paper: the policy, the feedback and the downstream are the three plug-ins, and
the store keys every expensive step by content (rewards by the texts they score and the probes
the feedback was fitted on; adapters by the groups they learned from), so a killed run resumes.
"""

from __future__ import annotations

import logging

import numpy as np

from rlrec.cache import fingerprint
from rlrec.llm.pairs import build_groups
from rlrec.results import Probe, Round

log = logging.getLogger("rlrec")


def align(
    policy, feedback, downstream, store, encode, *, rounds: int, users: int, seed: int, pairs: str = "best_vs_all",
    dedup_threshold: float | None = 0.98, min_gap: float = 0.0, first: str = "round0",
) -> list[Round]:  # fmt: skip
    """T = `rounds` preference rounds on `users` users each; returns [round 0, round 1, …]. A round
    whose samples give no informative group ends the loop with the policy unchanged."""
    history = [Round(0, first, policy.key, downstream.probe(policy, first))]
    history[0].metrics.update(history[0].probe.metrics)
    refit = Refit(feedback)
    for t in range(1, int(rounds) + 1):
        chosen = pick_users(downstream.train_users, users, seed, t)
        prompts = [downstream.questions[int(u)] for u in chosen]
        texts = policy.sample(prompts, seed=seed * 1000 + t)  # (U, N)
        vectors = encode([s for row in texts for s in row]).reshape(
            len(chosen), len(texts[0]), -1
        )  # (U, N, D)
        rewards, info = score(store, refit, [r.probe for r in history], chosen, texts, vectors)
        groups, stats = build_groups(prompts, texts, rewards, vectors, mode=pairs,
                                     dedup_threshold=dedup_threshold, min_gap=min_gap)  # fmt: skip
        metrics = {**reward_stats(rewards), **info, **stats.as_dict()}
        log.info("round %d/%d: %d users, mean reward %.4f, %d groups", t, rounds, len(chosen),
                 metrics["reward/mean"], len(groups))  # fmt: skip
        if not groups:
            log.warning(
                "round %d: no informative preference groups; the loop stops with the policy unchanged", t
            )
            history.append(Round(t, f"round{t}", policy.key, history[-1].probe, {**metrics, "stopped": 1.0}))
            break
        policy = policy.train_on(groups)
        probe = downstream.probe(policy, f"round{t}")
        history.append(
            Round(t, f"round{t}", policy.key, probe, {**metrics, **policy.training, **probe.metrics})
        )
    return history


def pick_users(pool: np.ndarray, n: int, seed: int, t: int) -> np.ndarray:
    """The users whose N samples are scored in round t: a seeded subset of `pool`, sorted."""
    rng = np.random.default_rng(seed * 1000 + t)
    return np.sort(rng.choice(np.asarray(pool), size=min(int(n), len(pool)), replace=False))


class Refit:
    """Refits the feedback only when a score is actually computed (cached rewards need no refit).
    A feedback whose state carries over refits (`continues`, e.g. a validator trained on, not
    restarted) is refit on every probe it has not seen yet, in order, so its state is the same
    whichever earlier rounds came from the cache."""

    def __init__(self, feedback):
        self.feedback = feedback
        self.fitted: list[str] = []  # probe keys, in the order they were fitted

    def __call__(self, probes: list[Probe]) -> dict:
        todo = probes if getattr(self.feedback, "continues", False) else probes[-1:]
        info: dict = {}
        for probe in todo:
            if probe.key not in self.fitted:
                info = self.feedback.refit(probe)
                self.fitted.append(probe.key)
        return info


def score(store, refit: Refit, probes: list[Probe], users, texts, vectors) -> tuple[np.ndarray, dict]:
    """(U, N) rewards of `texts`, a stage keyed by the feedback, the probes it was fitted on (in
    order) and the scored texts themselves."""
    feedback = refit.feedback
    deps = {"feedback": feedback.key, "fitted_on": [p.key for p in probes], "users": np.asarray(users).tolist(),
            "texts": fingerprint(texts)}  # fmt: skip

    def build(work) -> dict:
        info = refit(probes)
        rewards = feedback.score(users, texts, vectors)
        info.update(getattr(feedback, "score_info", dict)())
        np.save(work / "rewards.npy", rewards)
        return {"feedback": {k: float(v) for k, v in info.items()}}

    art = store.stage("score", deps, build)
    return np.load(art.path("rewards.npy")), art.data["feedback"]


def reward_stats(rewards: np.ndarray) -> dict:
    """Mean reward, mean of each user's best, mean spread (best − worst) of a round's rewards."""
    return {
        "reward/mean": float(np.nanmean(rewards)),
        "reward/best_mean": float(np.nanmean(np.nanmax(rewards, 1))),
        "reward/spread": float(np.nanmean(np.nanmax(rewards, 1) - np.nanmin(rewards, 1))),
    }
