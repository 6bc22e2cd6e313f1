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
from rlrec.llm.length import LENGTH_CONTROLS, length_adjusted_gain, residualise, round_lengths, within_user_slope, words
from rlrec.llm.pairs import build_groups
from rlrec.metrics import nan_rows_ok
from rlrec.outputs.results import Probe, Round
from rlrec.runtime.cache import fingerprint
from rlrec.runtime.console import bar

log = logging.getLogger("rlrec")


@dataclass
class AlignConfig:
    """How the loop runs: conf/align/default.yaml, the one node `align` reads."""

    rounds: int  # T preference rounds (0: the un-aligned policy only)
    users: int  # training users whose N samples are scored per round
    heldout_users: int  # users never trained on: the held-out reward gain and pairs (0 = off)
    dedup_threshold: float | None  # drop near-duplicate samples before pairing (None = keep all)
    min_gap: float  # a rejected text scores below best − min_gap
    min_z: float  # > 0: keep a group only if an ensemble is confident in its best text
    pairs: str  # best_vs_all | best_vs_worst (the preference loss's groups)
    seed: int
    length_control: str  # none | residual: pairs chosen on rewards with their length effect removed

    def __post_init__(self):
        if self.length_control not in LENGTH_CONTROLS:
            raise ValueError(
                f"align.length_control={self.length_control!r}: expected one of {', '.join(LENGTH_CONTROLS)}"
            )


def align(
    policy, feedback, downstream, store, encode, cfg: AlignConfig, first: str = "round0", gold=None
) -> list[Round]:
    """T = `cfg.rounds` preference rounds; returns [round 0, round 1, …]. A round whose samples give
    no informative group ends the loop with the policy unchanged. `cfg.heldout_users` users (never in
    a training pair) measure each round (`HeldOut`), by the feedback and by the `gold` judge (a
    feedback that never chose a pair); `first` names round 0 (round0, or sft after distillation)."""
    history = [first_round(first, policy, downstream.probe(policy, first))]
    pool, held = split_users(downstream.train_users, cfg.heldout_users, cfg.seed)
    heldout = HeldOut(held, [downstream.questions[int(u)] for u in held], cfg.seed * 1000, feedback.pairwise)
    refit, progress = Refit(feedback), bar(int(cfg.rounds), "align", "round")
    gold_refit = Refit(gold) if gold is not None else None
    for t in range(1, int(cfg.rounds) + 1):
        scorer = Scorer(store, refit, [r.probe for r in history], encode)  # refits on the last probe when it scores
        users = pick_users(pool, cfg.users, cfg.seed, t)
        prompts = [downstream.questions[int(u)] for u in users]
        scored = scorer.sample(policy, users, prompts, cfg.seed * 1000 + t)  # (U, N) texts and rewards
        groups, metrics = preference_groups(prompts, scored, cfg, t)
        if not groups:
            log.warning("round %d: no informative preference groups; the loop stops with the policy unchanged", t)
            history.append(Round(t, f"round{t}", policy.key, history[-1].probe, {**metrics, "stopped": 1.0}))
            break
        held_groups = heldout.before(policy, scorer, lambda p, s: preference_groups(p, s, cfg)[0])
        policy = policy.train_on(groups, heldout=held_groups)
        judge = gold_refit and Scorer(store, gold_refit, [r.probe for r in history], encode)
        metrics.update(heldout.after(policy, scorer, t, gold=judge))
        probe = downstream.probe(policy, f"round{t}")
        history.append(trained_round(t, policy, probe, metrics, users, prompts, scored, groups))
        progress.update(1)
    progress.close()
    return history


def preference_groups(prompts: list[str], scored: Scored, cfg: AlignConfig, t: int | None = None):
    """(the preference groups of scored samples, the round's reward and pairing metrics); logs the
    round's summary when `t` is given."""
    kw = {"dedup_threshold": cfg.dedup_threshold, "min_gap": float(cfg.min_gap), "min_z": float(cfg.min_z or 0.0)}
    rewards, members, lengths = scored.rewards, scored.members, words(scored.texts)
    if cfg.length_control == "residual":  # the same slope for the mean and every member
        slope = within_user_slope(rewards, lengths)
        rewards = residualise(rewards, lengths, slope)
        members = None if members is None else np.stack([residualise(m, lengths, slope) for m in members])
    groups, stats = build_groups(prompts, scored.texts, rewards, scored.vectors, mode=cfg.pairs, members=members, **kw)
    metrics = {**reward_stats(scored.rewards), **scored.info, **stats.as_dict()}
    metrics.update(round_lengths(scored.texts, scored.rewards, groups))
    if t is not None:
        log.info(
            "round %d/%d: %d users, mean reward %.4f, %d groups, split-half Spearman %.3f",
            t,
            cfg.rounds,
            len(prompts),
            metrics["reward/mean"],
            len(groups),
            metrics.get("reliability/spearman", np.nan),
        )
    return groups, metrics


def first_round(name: str, policy, probe: Probe) -> Round:
    """Round 0: the policy before any preference round (its probe's metrics are the round's)."""
    return Round(0, name, policy.key, probe, dict(probe.metrics), adapter=adapter_of(policy))


def trained_round(t: int, policy, probe: Probe, metrics: dict, users, prompts, scored: Scored, groups) -> Round:
    """Round t after training: its metrics, the fit's curve, its pairs and every sample's role."""
    by_prompt = dict(zip(prompts, np.asarray(users).tolist()))
    return Round(
        t,
        f"round{t}",
        policy.key,
        probe,
        {**metrics, **policy.training, **probe.metrics},
        curve=list(policy.curve),
        pairs=[{"user": by_prompt[g["prompt"]], **g} for g in groups],
        adapter=adapter_of(policy),
        samples=sample_roles(users, prompts, scored.texts, scored.rewards, groups),
    )


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
    scored: Scored | None = None  # the texts before the round
    pairs: int = 0

    def before(self, policy, scorer: Scorer, grouping: Callable) -> list[dict]:
        """Sample and score the texts before the round; their preference groups (`grouping`)."""
        if not len(self.users):
            return []
        self.scored = scorer.sample(policy, self.users, self.prompts, self.seed)
        groups = grouping(self.prompts, self.scored)
        self.pairs = len(groups)
        return groups

    def after(self, policy, scorer: Scorer, t: int, gold: Scorer | None = None) -> dict:
        """The round's held-out metrics ({} without held-out users); with a `gold` scorer, the same
        texts before and after scored by it too (`heldout/gold_*`)."""
        if self.scored is None:
            return {}
        if self.pairwise:
            after_texts = policy.sample(self.prompts, seed=self.seed)  # (U, N)
            joint = [b + a for b, a in zip(self.scored.texts, after_texts)]  # (U, 2N): before's N, then after's N
            both, n = scorer.score(self.users, joint).rewards, len(self.scored.texts[0])
            before, after = both[:, :n], both[:, n:]
            out = {**heldout_gain(before, after), "heldout/head_to_head": 1.0}
        else:
            sampled = scorer.sample(policy, self.users, self.prompts, self.seed)
            before, after = self.scored.rewards, sampled.rewards
            out = heldout_gain(before, after)
            after_texts = sampled.texts
        out.update(length_adjusted_gain(before, after, words(self.scored.texts), words(after_texts)))
        if gold is not None:
            out.update(gold_gain(gold, self.users, self.scored.texts, after_texts))
        out["heldout/pairs"] = float(self.pairs)
        log.info(
            "round %d: held-out reward %.4f → %.4f (gain %+.4f, p = %.3g, %d users)%s",
            t,
            out["heldout/reward_before"],
            out["heldout/reward_after"],
            out["heldout/reward_gain"],
            out.get("heldout/p", np.nan),
            len(self.users),
            ""
            if gold is None
            else f"; gold judge: gain {out['heldout/gold_reward_gain']:+.4f}, p = {out.get('heldout/gold_p', np.nan):.3g}",
        )
        return out


def gold_gain(gold: Scorer, users, before: list[list[str]], after: list[list[str]]) -> dict:
    """The held-out gain as the gold judge sees it: the texts before and after the round, scored by a
    feedback that chose no training pair (`heldout/gold_*`, with its paired t-test and the gain
    adjusted for length)."""
    if gold.refit.feedback.pairwise:
        raise ValueError("gold: a pairwise judge cannot be the gold judge (its rewards rank a user's texts)")
    b, a = gold.score(users, before).rewards, gold.score(users, after).rewards
    out = {**heldout_gain(b, a), **length_adjusted_gain(b, a, words(before), words(after))}
    return {k.replace("heldout/", "heldout/gold_", 1): v for k, v in out.items() if not k.startswith("heldout/length_")}


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
