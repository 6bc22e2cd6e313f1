"""Reward noise, reduced and measured.

A trained feedback (validator, recommender, LLM validator) rewards a text through a model whose
own training noise — its seed and the user folds it was cross-fitted on — can move a text's reward
more than switching between a user's texts does. `Ensemble` averages K independent members
(`feedback.ensemble=K`; member m uses seed + m, so both the init and the fold assignment differ),
and every feedback that can exposes two independent *halves* of its last `score` call (the even
and the odd members of an ensemble; the two presentation orders of the judge). `split_half`
compares the halves within each user:

    spearman   mean within-user Spearman correlation between the halves' rewards
    same_best  how often both halves pick the same best text (chance = 1/N)
    full       Spearman–Brown projection 2ρ/(1+ρ): the reliability of the whole reward

>>> a = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
>>> {k: round(v, 3) for k, v in split_half(a, a + 0.01).items()}
{'reliability/spearman': 1.0, 'reliability/same_best': 1.0, 'reliability/full': 1.0, 'reliability/users': 2.0}
"""

from __future__ import annotations

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rlrec.feedback.base import Feedback
from rlrec.metrics import nan_rows_ok
from rlrec.runtime.cache import fingerprint


class Ensemble(Feedback):
    """K members of one feedback strategy behind the Feedback protocol: reward = the mean of the
    members' rewards; `halves()` = the means over the even and the odd members."""

    ensemble = True

    def __init__(self, members: list):
        if len(members) < 2:
            raise ValueError("an Ensemble needs at least 2 members (feedback.ensemble >= 2)")
        self.members = members
        self.key = fingerprint("ensemble", [m.key for m in members])
        self.continues, self.pairwise = members[0].continues, members[0].pairwise
        self.last: np.ndarray | None = None  # (K, U, N) rewards of the last score call

    def refit(self, probe) -> dict:
        per = [m.shards(probe) for m in self.members]
        if all(shards is not None for shards in per):  # every (member, fold) fit submitted together
            from rlrec.runtime.executor import stages

            ctx = self.members[0].ctx
            fits = iter(stages(ctx.executor, ctx.store, [s for shards in per for s in shards]))
            infos = [m.load(probe, [next(fits) for _ in shards]) for m, shards in zip(self.members, per)]
        else:
            infos = [m.refit(probe) for m in self.members]
        return {k: float(np.mean([i[k] for i in infos if k in i])) for k in infos[0]} if infos else {}

    def score(self, users, texts, vectors) -> np.ndarray:
        self.last = np.stack([m.score(users, texts, vectors) for m in self.members])
        return _nanmean(self.last)

    def member_rewards(self) -> np.ndarray | None:
        return self.last

    def halves(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.last is None:
            return None
        return _nanmean(self.last[0::2]), _nanmean(self.last[1::2])

    def score_info(self) -> dict:
        infos = [m.score_info() for m in self.members]
        return {k: float(np.mean([i[k] for i in infos])) for k in infos[0]} if infos else {}


def _nanmean(rewards: np.ndarray) -> np.ndarray:
    """The members' mean reward per (user, text); NaN where no member could score it."""
    with nan_rows_ok():
        return np.nanmean(rewards, 0)


def build_feedback(cfg: DictConfig, ctx, downstream):
    """`cfg.feedback` as a Feedback: one instance, or an `Ensemble` of `cfg.feedback.ensemble` members
    with seeds seed, seed + 1, …"""
    conf = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # `cfg` = the run's cfg.feedback
    with open_dict(conf):
        k = conf.pop("ensemble", 1)
    k = 1 if k is None else int(k)
    if k < 1:
        raise ValueError(f"feedback.ensemble must be >= 1, got {k}")
    if k == 1:
        return instantiate(conf)(ctx=ctx, downstream=downstream)
    if "seed" not in conf:
        raise ValueError(
            f"feedback.ensemble={k} needs members that differ: {conf.get('_target_')} has no `seed` "
            "(the judge's two orders are its halves; use feedback.ensemble=1)"
        )
    seed = int(conf.seed)
    return Ensemble([instantiate(conf, seed=seed + m)(ctx=ctx, downstream=downstream) for m in range(k)])


def split_half(a: np.ndarray, b: np.ndarray) -> dict:
    """Reliability of a (U, N) reward from two independent halves `a`, `b` of it (users whose texts
    all tie in either half are left out of the Spearman mean)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = np.asarray(a)[ok], np.asarray(b)[ok]
    rho = [spearmanr(x, y).statistic for x, y in zip(a, b) if np.ptp(x) > 0 and np.ptp(y) > 0]
    r = float(np.mean(rho)) if rho else float("nan")
    return {
        "reliability/spearman": r,
        "reliability/same_best": float(np.mean(a.argmax(1) == b.argmax(1))) if len(a) else float("nan"),
        "reliability/full": 2 * r / (1 + r) if rho and r > -1 + 1e-6 else float("nan"),
        "reliability/users": float(len(rho)),
    }
