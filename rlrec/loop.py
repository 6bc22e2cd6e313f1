"""The loop the three papers share (DESIGN's arrow diagram):

    round 0: probe the policy (its greedy texts, as the downstream uses them)
    round t: refit the feedback on the last probe (TrackRec's Rec-tuning) → sample N texts for a
             seeded subset of training users → score them (feedback; with its split-half
             reliability) → preference groups (best vs all / best vs worst) → preference-optimise
             the policy (held-out pairs evaluated) → held-out reward gain → probe it

It imports no paper: the policy, the feedback and the downstream are the three plug-ins, and
the store keys every expensive step by content (rewards by the texts they score and the probes
the feedback was fitted on; adapters by the groups they learned from), so a killed run resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlrec.feedback.ensemble import split_half
from rlrec.llm.pairs import build_groups
from rlrec.metrics import nan_rows_ok
from rlrec.outputs.results import Probe, Round
from rlrec.runtime.cache import fingerprint
from rlrec.runtime.console import bar

log = logging.getLogger("rlrec")


def align(
    policy,
    feedback,
    downstream,
    store,
    encode,
    *,
    rounds: int,
    users: int,
    seed: int,
    pairs: str = "best_vs_all",
    dedup_threshold: float | None = 0.98,
    min_gap: float = 0.0,
    min_z: float = 0.0,
    first: str = "round0",
    heldout: int = 0,
) -> list[Round]:
    """T = `rounds` preference rounds on `users` users each; returns [round 0, round 1, …]. A round
    whose samples give no informative group ends the loop with the policy unchanged.

    `heldout` users (a seeded subset of the training users, never in any training pair) measure
    each round: N texts sampled for them before and after the round, scored by the same feedback,
    give `heldout/reward_gain` with a paired t-test over users; the pairs of their "before" texts
    are the preference fit's held-out pairs. `min_z` > 0 keeps only groups whose best text an
    ensemble feedback ranks first with confidence (`build_groups`)."""
    history = [Round(0, first, policy.key, downstream.probe(policy, first), adapter=adapter_of(policy))]
    history[0].metrics.update(history[0].probe.metrics)
    refit = Refit(feedback)
    pool, held = split_users(downstream.train_users, heldout, seed)
    held_prompts = [downstream.questions[int(u)] for u in held]
    progress = bar(int(rounds), "align", "round")  # a bar, or one line where stderr is a log

    def groups_of(prompts: list[str], scored: Scored):  # the preference groups of scored samples
        kw = {"dedup_threshold": dedup_threshold, "min_gap": min_gap, "min_z": min_z}
        return build_groups(
            prompts, scored.texts, scored.rewards, scored.vectors, mode=pairs, members=scored.members, **kw
        )

    held_out = HeldOut(held, held_prompts, seed * 1000, feedback.pairwise)
    for t in range(1, int(rounds) + 1):
        chosen = pick_users(pool, users, seed, t)
        prompts = [downstream.questions[int(u)] for u in chosen]
        scorer = Scorer(store, refit, [r.probe for r in history], encode)
        scored = scorer.sample(policy, chosen, prompts, seed * 1000 + t)
        groups, stats = groups_of(prompts, scored)
        metrics = {**reward_stats(scored.rewards), **scored.info, **stats.as_dict()}
        log.info(
            "round %d/%d: %d users, mean reward %.4f, %d groups, split-half Spearman %.3f",
            t,
            rounds,
            len(chosen),
            metrics["reward/mean"],
            len(groups),
            metrics.get("reliability/spearman", np.nan),
        )
        if not groups:
            log.warning("round %d: no informative preference groups; the loop stops with the policy unchanged", t)
            history.append(Round(t, f"round{t}", policy.key, history[-1].probe, {**metrics, "stopped": 1.0}))
            break
        before = held_out.sample_before(policy, scorer)
        held_groups = groups_of(held_prompts, before)[0] if before is not None else []
        policy = policy.train_on(groups, heldout=held_groups)
        metrics.update(held_out.measure_after(policy, scorer, t, pairs=len(held_groups)))
        probe = downstream.probe(policy, f"round{t}")
        by_prompt = dict(zip(prompts, chosen.tolist()))
        history.append(
            Round(
                t,
                f"round{t}",
                policy.key,
                probe,
                {**metrics, **policy.training, **probe.metrics},
                curve=list(policy.curve),
                pairs=[{"user": by_prompt[g["prompt"]], **g} for g in groups],
                adapter=adapter_of(policy),
                samples=sample_roles(chosen, prompts, scored.texts, scored.rewards, groups),
            )
        )
        progress.update(1)
    progress.close()
    return history


def sample_roles(users, prompts, texts, rewards, groups) -> list[dict]:
    """Every scored sample of a round with its role in the preference data: `chosen`, `rejected`, or
    `dropped` (a near-duplicate, a tie, or a user without an informative group).

    >>> sample_roles([7], ["p"], [["a", "b", "c"]], np.array([[0.9, 0.1, 0.1]]),
    ...              [{"prompt": "p", "chosen": "a", "rejected": ["b"]}])[1:]
    [{'user': 7, 'text': 'b', 'reward': 0.1, 'role': 'rejected'}, {'user': 7, 'text': 'c', 'reward': 0.1, 'role': 'dropped'}]
    """
    by_prompt = {g["prompt"]: g for g in groups}
    out = []
    for u, p, row, r in zip(users, prompts, texts, rewards):
        g = by_prompt.get(p)
        rejected = list(g["rejected"]) if g else []
        seen_chosen = False
        for text, reward in zip(row, r):
            if g and text == g["chosen"] and not seen_chosen:
                role, seen_chosen = "chosen", True
            elif text in rejected:
                role = "rejected"
                rejected.remove(text)
            else:
                role = "dropped"
            out.append({"user": int(u), "text": text, "reward": float(reward), "role": role})
    return out


def adapter_of(policy) -> str | None:
    """The folder of the policy's trained weights (None: the base weights, or a policy without files)."""
    return None if policy.adapter is None else str(policy.adapter)


def split_users(train_users, heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the users rounds draw from, the `heldout` users no round trains on): a seeded split."""
    pool = np.asarray(train_users)
    held = pick_users(pool, heldout, seed, 0) if heldout else pool[:0]
    return np.setdiff1d(pool, held), held


@dataclass
class Scored:
    """N texts sampled for each of U users, with their encodings and the feedback's rewards."""

    texts: list[list[str]]  # U lists of N
    vectors: np.ndarray  # (U, N, D)
    rewards: np.ndarray  # (U, N)
    info: dict  # the score's statistics (reliability, a judge's consistency, the refit's metrics)
    members: np.ndarray | None = None  # (K, U, N): an ensemble's members' rewards


@dataclass
class Scorer:
    """A round's texts scored by the feedback fitted on the round's `probes` (`score`: through the store)."""

    store: object
    refit: Refit
    probes: list[Probe]
    encode: Callable

    def score(self, users, texts: list[list[str]]) -> Scored:
        vectors = self.encode([s for row in texts for s in row]).reshape(len(users), len(texts[0]), -1)
        return Scored(texts, vectors, *score(self.store, self.refit, self.probes, users, texts, vectors))

    def sample(self, policy, users, prompts: list[str], seed: int) -> Scored:
        """N texts sampled for each of `users` (seeded), encoded and scored."""
        return self.score(users, policy.sample(prompts, seed=seed))  # (U, N)


@dataclass
class HeldOut:
    """The held-out users' measure of a round: N texts sampled with one seed before and after the
    round, scored by the same feedback (`heldout_gain`); the "before" texts' groups are the preference
    fit's held-out pairs. The seed is the same every round, so a round's "before" texts are the last
    round's "after" ones. A pairwise feedback (a judge) ranks a user's texts against each other, so
    each user's mean reward is fixed: it judges the texts after the round against those before it,
    head to head."""

    users: np.ndarray
    prompts: list[str]
    seed: int
    pairwise: bool = False
    before: Scored | None = None

    def sample_before(self, policy, scorer: Scorer) -> Scored | None:
        self.before = scorer.sample(policy, self.users, self.prompts, self.seed) if len(self.users) else None
        return self.before

    def measure_after(self, policy, scorer: Scorer, t: int, pairs: int) -> dict:
        """The round's held-out metrics ({} without held-out users)."""
        if self.before is None:
            return {}
        if self.pairwise:
            after = policy.sample(self.prompts, seed=self.seed)  # (U, N)
            joint = [b + a for b, a in zip(self.before.texts, after)]  # (U, 2N): before's N, then after's N
            both, n = scorer.score(self.users, joint).rewards, len(self.before.texts[0])
            out = {**heldout_gain(both[:, :n], both[:, n:]), "heldout/head_to_head": 1.0}
        else:
            out = heldout_gain(self.before.rewards, scorer.sample(policy, self.users, self.prompts, self.seed).rewards)
        out["heldout/pairs"] = float(pairs)
        log.info(
            "round %d: held-out reward %.4f → %.4f (gain %+.4f, p = %.3g, %d users)",
            t,
            out["heldout/reward_before"],
            out["heldout/reward_after"],
            out["heldout/reward_gain"],
            out.get("heldout/p", np.nan),
            len(self.users),
        )
        return out


def heldout_gain(before: np.ndarray, after: np.ndarray) -> dict:
    """The loop's primary measure: each held-out user's mean reward over their N texts after the
    round minus before, averaged, with a paired t-test over users (two-sided p).

    >>> g = heldout_gain(np.array([[0.1, 0.3], [0.2, 0.2], [0.5, 0.1]]), np.array([[0.4, 0.4], [0.3, 0.5], [0.4, 0.4]]))
    >>> round(g["heldout/reward_gain"], 4), g["heldout/users"]
    (0.1667, 3.0)
    """
    from scipy.stats import ttest_rel

    with nan_rows_ok():
        b, a = np.nanmean(before, 1), np.nanmean(after, 1)
    ok = np.isfinite(a) & np.isfinite(b)
    b, a = b[ok], a[ok]
    out = {
        "heldout/reward_before": float(b.mean()) if len(b) else float("nan"),
        "heldout/reward_after": float(a.mean()) if len(a) else float("nan"),
        "heldout/reward_gain": float((a - b).mean()) if len(a) else float("nan"),
        "heldout/users": float(len(a)),
    }
    if len(a) > 1 and np.any(a != b):
        t = ttest_rel(a, b)
        out.update({"heldout/t": float(t.statistic), "heldout/p": float(t.pvalue)})
    return out


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
        todo = probes if self.feedback.continues else probes[-1:]
        info: dict = {}
        for probe in todo:
            if probe.key not in self.fitted:
                info = self.feedback.refit(probe)
                self.fitted.append(probe.key)
        return info


def score(store, refit: Refit, probes: list[Probe], users, texts, vectors):
    """((U, N) rewards of `texts`, the score's info, the ensemble members' (K, U, N) rewards or
    None): a stage keyed by the feedback, the probes it was fitted on (in order) and the scored
    texts themselves."""
    feedback = refit.feedback
    ensemble = feedback.ensemble
    deps = {
        "feedback": feedback.key,
        "fitted_on": [p.key for p in probes],
        "users": np.asarray(users).tolist(),
        "texts": fingerprint(texts),
        **({"members": True} if ensemble else {}),
    }

    def build(work) -> dict:
        info = refit(probes)
        rewards = feedback.score(users, texts, vectors)
        info.update(feedback.score_info())
        halves = feedback.halves()
        if halves is not None:  # the reward's own reliability (`feedback/ensemble.py`)
            info.update(split_half(*halves))
        np.save(work / "rewards.npy", rewards)
        if ensemble:
            np.save(work / "members.npy", feedback.member_rewards())
        return {"feedback": {k: float(v) for k, v in info.items()}}

    art = store.stage("score", deps, build)
    members = np.load(art.path("members.npy")) if ensemble else None
    return np.load(art.path("rewards.npy")), art.data["feedback"], members


def reward_stats(rewards: np.ndarray) -> dict:
    """Mean reward, mean of each user's best, mean spread (best − worst) of a round's rewards."""
    with nan_rows_ok():
        return {
            "reward/mean": float(np.nanmean(rewards)),
            "reward/best_mean": float(np.nanmean(np.nanmax(rewards, 1))),
            "reward/spread": float(np.nanmean(np.nanmax(rewards, 1) - np.nanmin(rewards, 1))),
        }
