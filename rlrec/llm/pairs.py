"""Preference groups from scored samples: the best text of a user against the others (S-DPO,
TrackRec) or against the worst (DPO), after dropping near-duplicates and all-equal groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rlrec.knowledge.index import drop_near_duplicates


@dataclass
class PairStats:
    users: int = 0
    groups: int = 0
    dropped_all_equal: int = 0
    dropped_duplicates: int = 0  # near-duplicate texts removed before pairing
    dropped_ties: int = 0  # negatives tied with the best
    dropped_uncertain: int = 0  # groups whose best is not `min_z` standard errors above its closest negative
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {f"pairs/{k}": v for k, v in self.__dict__.items() if k != "extra"} | self.extra


def build_groups(
    prompts: list[str],
    texts: list[list[str]],
    rewards: np.ndarray,
    vectors: np.ndarray | None = None,
    mode: str = "best_vs_all",
    dedup_threshold: float | None = 0.98,
    min_gap: float = 0.0,
    members: np.ndarray | None = None,
    min_z: float = 0.0,
) -> tuple[list[dict], PairStats]:
    """Preference examples {prompt, chosen, rejected: [..], rewards} from scored samples.

    mode "best_vs_worst" (DPO): one rejected, the lowest reward. mode "best_vs_all" (S-DPO, TrackRec):
    every other text with a reward below best − min_gap. Near-duplicates of a kept text (cosine >
    dedup_threshold) are dropped first, so pairs are informative; all-equal groups are dropped.

    `members` (K, U, N), the rewards of an ensemble's K members (their mean is `rewards`), and
    `min_z` > 0 keep a group only when its best text beats its closest negative by at least
    `min_z` standard errors of the members' paired differences (the same member scores both
    texts, so a member's offset cancels): groups whose winner the ensemble cannot tell from noise
    train the policy on noise.

    >>> ex, st = build_groups(["p"], [["a", "b", "c"]], np.array([[0.2, 0.9, 0.5]]), mode="best_vs_worst")
    >>> ex[0]["chosen"], ex[0]["rejected"]
    ('b', ['a'])
    """
    assert mode in ("best_vs_all", "best_vs_worst"), (
        f"preference.pairs must be best_vs_all or best_vs_worst, got {mode!r}"
    )
    rewards = np.asarray(rewards, float)
    U, N = rewards.shape
    assert len(prompts) == len(texts) == U and all(len(t) == N for t in texts)
    keep = np.ones((U, N), bool)
    stats = PairStats(users=U)
    if vectors is not None and dedup_threshold is not None:
        groups = np.repeat(np.arange(U), N)
        keep = drop_near_duplicates(vectors.reshape(U * N, -1), dedup_threshold, groups=groups).reshape(U, N)
        # identical strings are duplicates whatever the encoder says
        for u in range(U):
            seen: set[str] = set()
            for j in range(N):
                if texts[u][j] in seen:
                    keep[u, j] = False
                seen.add(texts[u][j])
        stats.dropped_duplicates = int((~keep).sum())
    examples = []
    for u in range(U):
        idx = np.flatnonzero(keep[u])
        if len(idx) < 2:
            stats.dropped_all_equal += 1
            continue
        r = rewards[u, idx]
        if np.allclose(r, r[0]):
            stats.dropped_all_equal += 1
            continue
        best = idx[int(np.argmax(r))]
        worse = [j for j in idx if j != best and rewards[u, j] < rewards[u, best] - min_gap]
        stats.dropped_ties += len(idx) - 1 - len(worse)
        if not worse:
            stats.dropped_all_equal += 1
            continue
        if mode == "best_vs_worst":
            worse = [min(worse, key=lambda j: rewards[u, j])]
        if min_z > 0 and members is not None:
            closest = max(worse, key=lambda j: rewards[u, j])
            if paired_z(members[:, u, best], members[:, u, closest]) < min_z:
                stats.dropped_uncertain += 1
                continue
        examples.append(
            {
                "prompt": prompts[u],
                "chosen": texts[u][best],
                "rejected": [texts[u][j] for j in worse],
                "reward_chosen": float(rewards[u, best]),
                "reward_rejected": [float(rewards[u, j]) for j in worse],
            }
        )
    stats.groups = len(examples)
    return examples, stats


def paired_z(a: np.ndarray, b: np.ndarray) -> float:
    """mean(a − b) / its standard error over paired members (inf when every member agrees exactly).

    >>> round(paired_z(np.array([0.5, 0.6, 0.7]), np.array([0.4, 0.4, 0.6])), 3)
    4.0
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
    se = d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean() / se) if se > 0 else (float("inf") if d.mean() > 0 else float("-inf"))
