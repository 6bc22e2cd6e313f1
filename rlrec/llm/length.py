"""Text length, measured and controlled. A reward that prefers short (TrackRec's validator) or long
(DPO4Rec's re-ranker) texts teaches the policy to change length, which is not better knowledge. Per
round the loop reports the length of the sampled, chosen and rejected texts, the within-user
correlation of reward with length, and a held-out gain adjusted for length; `align.length_control=
residual` takes the reward's linear length effect out before the pairs are chosen.

Length is counted in words (whitespace-separated tokens): the same for every policy and tokenizer.

>>> r = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]]); n = np.array([[10, 20, 30], [5, 15, 25]])
>>> float(within_user_slope(r, n))
0.1
>>> residualise(r, n).round(6).tolist()  # all of the reward's spread was length: each user's texts tie
[[1.75, 1.75, 1.75], [1.25, 1.25, 1.25]]
"""

from __future__ import annotations

import numpy as np

from rlrec.metrics import nan_rows_ok

LENGTH_CONTROLS = ("none", "residual")


def words(texts) -> np.ndarray:
    """Word counts with the shape of `texts` (a list of strings, or U lists of N)."""
    if texts and isinstance(texts[0], list):
        return np.array([[len(t.split()) for t in row] for row in texts], dtype=float)
    return np.array([len(t.split()) for t in texts], dtype=float)


def within_user_slope(rewards: np.ndarray, lengths: np.ndarray) -> float:
    """The pooled within-user least-squares slope of reward on length (reward units per word): each
    user's rewards and lengths are centred on their own means, so it says how much a longer text of
    the same user scores more, not which users write long texts. 0 when lengths never vary."""
    r, n = np.asarray(rewards, float), np.asarray(lengths, float)
    ok = np.isfinite(r)
    with nan_rows_ok():
        rc = r - np.nanmean(np.where(ok, r, np.nan), 1, keepdims=True)
        nc = n - np.nanmean(np.where(ok, n, np.nan), 1, keepdims=True)
    rc, nc = np.where(ok, rc, 0.0), np.where(ok, nc, 0.0)
    den = float((nc * nc).sum())
    return float((nc * rc).sum() / den) if den > 0 else 0.0


def residualise(rewards: np.ndarray, lengths: np.ndarray, slope: float | None = None) -> np.ndarray:
    """Rewards with their linear length effect removed (`slope`: `within_user_slope` by default); a
    user's ranking then prefers a text for what it says, not for how long it is."""
    b = within_user_slope(rewards, lengths) if slope is None else slope
    n = np.asarray(lengths, float)
    return np.round(np.asarray(rewards, float) - b * (n - n.mean()), 12)  # float noise must not break a tie


def reward_length_corr(rewards: np.ndarray, lengths: np.ndarray) -> float:
    """Mean over users of the Pearson correlation between a user's rewards and their texts' lengths
    (users whose rewards or lengths do not vary are left out; nan when none is left)."""
    out = []
    for r, n in zip(np.asarray(rewards, float), np.asarray(lengths, float)):
        ok = np.isfinite(r)
        if ok.sum() > 2 and np.std(r[ok]) > 0 and np.std(n[ok]) > 0:
            out.append(float(np.corrcoef(r[ok], n[ok])[0, 1]))
    return float(np.mean(out)) if out else float("nan")


def round_lengths(texts: list[list[str]], rewards: np.ndarray, groups: list[dict]) -> dict:
    """A round's length metrics: mean words of the sampled, chosen and rejected texts, and the
    within-user reward–length correlation and slope."""
    n = words(texts)
    chosen = [len(g["chosen"].split()) for g in groups]
    rejected = [len(t.split()) for g in groups for t in g["rejected"]]
    return {
        "length/sampled": float(n.mean()) if n.size else float("nan"),
        "length/chosen": float(np.mean(chosen)) if chosen else float("nan"),
        "length/rejected": float(np.mean(rejected)) if rejected else float("nan"),
        "length/reward_corr": reward_length_corr(rewards, n),
        "length/reward_slope": within_user_slope(rewards, n),
    }


def length_adjusted_gain(before: np.ndarray, after: np.ndarray, n_before: np.ndarray, n_after: np.ndarray) -> dict:
    """The held-out gain with the length change taken out: each user's mean reward after minus before,
    minus slope × their mean length change, with the slope estimated within user and within each
    condition (so the round's own effect does not enter it); a paired t-test over users.

    >>> b, a = np.array([[0.1, 0.3], [0.2, 0.4]]), np.array([[0.2, 0.4], [0.3, 0.5]])
    >>> g = length_adjusted_gain(b, a, np.array([[1, 3], [1, 3]]), np.array([[2, 4], [2, 4]]))
    >>> round(g["heldout/reward_gain_length_adjusted"], 4)  # the whole gain came with one more word
    0.0
    """
    from scipy.stats import ttest_rel

    slope = within_user_slope(np.vstack([before, after]), np.vstack([n_before, n_after]))
    with nan_rows_ok():
        d = (np.nanmean(after, 1) - np.nanmean(before, 1)) - slope * (n_after.mean(1) - n_before.mean(1))
    d = d[np.isfinite(d)]
    out = {
        "heldout/length_before": float(n_before.mean()),
        "heldout/length_after": float(n_after.mean()),
        "heldout/reward_gain_length_adjusted": float(d.mean()) if len(d) else float("nan"),
    }
    if len(d) > 1 and np.any(d != 0):
        out["heldout/p_length_adjusted"] = float(ttest_rel(d, np.zeros_like(d)).pvalue)
    return out
