"""Metrics no library has in the form the papers use. Standard ones come from torchmetrics."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pandas as pd


@contextmanager
def nan_rows_ok():
    """A user nothing could score (no samples to score on) is a row of NaN rewards: its nan-mean and
    nan-max are NaN, as they should be, without numpy's warnings about empty or all-NaN slices."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN slice", RuntimeWarning)
        yield


def user_auc(users, scores, labels) -> float:
    """Mean per-user AUC over users that have both a positive and a negative sample (CoLLM's
    uAUC skips the others). Ties get average ranks (the Mann–Whitney form).

    >>> user_auc([1, 1, 1, 2, 2], [0.9, 0.1, 0.5, 0.3, 0.3], [1, 0, 0, 1, 1])
    1.0
    """
    df = pd.DataFrame({"u": np.asarray(users), "s": np.asarray(scores, float), "y": np.asarray(labels, float)})
    df["r"] = df.groupby("u")["s"].rank(method="average")
    g = df.groupby("u").agg(n=("y", "size"), pos=("y", "sum"))
    g["rank_pos"] = df[df["y"] > 0].groupby("u")["r"].sum()
    g = g[(g["pos"] > 0) & (g["pos"] < g["n"])]
    if g.empty:
        return float("nan")
    neg = g["n"] - g["pos"]
    auc = (g["rank_pos"] - g["pos"] * (g["pos"] + 1) / 2) / (g["pos"] * neg)
    return float(auc.mean())


def rank_by_score(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Labels of each list (M, N) reordered by descending score; padded slots go last with label 0."""
    s = np.where(mask, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    ranked = np.take_along_axis(np.where(mask, labels, 0.0), order, axis=1)
    return ranked


def list_loglik(scores, labels, mask=None) -> np.ndarray:
    """Per-list listwise log-likelihood of the positives: the mean over a list's positives of
    log softmax(scores over the list's valid slots) — the smooth counterpart of NDCG (a small change
    of the scores moves it; NDCG moves only when two items swap). Lists with no positive: nan.
    scores/labels/mask (M, L) → (M,).

    >>> v = list_loglik([[2.0, 0.0, 0.0]], [[1, 0, 0]])
    >>> round(float(v[0]), 4)  # log(e² / (e² + 2))
    -0.2395
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    mask = np.ones_like(labels, bool) if mask is None else np.asarray(mask, bool)
    s = np.where(mask, scores, -np.inf)
    m = s.max(1, keepdims=True)
    logp = s - m - np.log(np.exp(s - m).sum(1, keepdims=True))  # (M, L)
    pos = (labels > 0) & mask
    n = pos.sum(1)
    total = np.where(pos, logp, 0.0).sum(1)
    return np.divide(total, n, out=np.full(len(n), np.nan), where=n > 0)


def list_metrics(scores, labels, mask=None, ks=(1, 3, 5), map_definition: str = "kar") -> dict[str, np.ndarray]:
    """Per-list ranking metrics, as KAR/LibRerank's `evaluate_rerank` defines them.

    NDCG@k: gain 2^rel − 1, discount log2(rank + 1), ideal DCG from the same list's labels.
    MAP@k ("kar"): Σ_{hits in top k} (hits so far / rank) ÷ (#hits in top k) — *not* divided by
    all relevant items; "standard" divides by min(k, #relevant in the list).
    CLICK@k: number of positives in the top k. Lists with no positive score 0 (KAR keeps them).
    Returns {"ndcg@k": (M,), "map@k": (M,), "click@k": (M,)}.

    >>> m = list_metrics([[0.9, 0.8, 0.1]], [[0, 1, 1]], ks=(2,))
    >>> round(float(m["ndcg@2"][0]), 4), float(m["map@2"][0]), float(m["click@2"][0])
    (0.3869, 0.5, 1.0)
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, float)
    mask = np.ones_like(labels, bool) if mask is None else np.asarray(mask, bool)
    assert map_definition in ("kar", "standard"), f"map_definition must be 'kar' or 'standard', got {map_definition!r}"
    ranked = rank_by_score(scores, labels, mask)
    ideal = -np.sort(-np.where(mask, labels, 0.0), axis=1)
    n = labels.shape[1]
    disc = 1.0 / np.log2(np.arange(2, n + 2))
    gains, ideal_gains = (2.0**ranked - 1) * disc, (2.0**ideal - 1) * disc
    hits = (ranked > 0).astype(float)
    cum_hits = np.cumsum(hits, axis=1)
    prec = cum_hits / np.arange(1, n + 1)
    out = {}
    for k in ks:
        dcg, idcg = gains[:, :k].sum(1), ideal_gains[:, :k].sum(1)
        out[f"ndcg@{k}"] = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
        ap = (prec[:, :k] * hits[:, :k]).sum(1)
        denom = hits[:, :k].sum(1) if map_definition == "kar" else np.minimum(k, (np.where(mask, labels, 0) > 0).sum(1))
        out[f"map@{k}"] = np.divide(ap, denom, out=np.zeros_like(ap), where=denom > 0)
        out[f"click@{k}"] = hits[:, :k].sum(1)
    return out


def mean_list_metrics(
    per_list: dict[str, np.ndarray], has_positive: np.ndarray | None = None, empty: str = "zero"
) -> dict:
    """Average per-list metrics. `empty="zero"` keeps lists without positives as 0 (KAR);
    `empty="skip"` drops them."""
    assert empty in ("zero", "skip"), f"empty must be 'zero' or 'skip', got {empty!r}"
    keep = slice(None) if empty == "zero" or has_positive is None else np.asarray(has_positive, bool)
    return {k: float(np.mean(v[keep])) if np.size(v[keep]) else float("nan") for k, v in per_list.items()}


# --- one recommended list (RecLAIF §5: Hit@k, NDCG@k, Prec@k, pairwise-distance diversity) ---
# `ranked_items` is the parsed answer's item ids, best first; pass [] (or None) for an invalid
# answer so it scores 0, as the paper counts invalid outputs against the method.


def _topk(ranked_items, k: int) -> list:
    assert k >= 1, f"k must be >= 1, got {k}"
    return [] if ranked_items is None else list(ranked_items)[:k]


def hit_at_k(ranked_items, target, k: int) -> float:
    """1.0 if `target` is among the first k items, else 0.0.

    >>> hit_at_k([3, 1, 2], 1, k=1), hit_at_k([3, 1, 2], 1, k=2), hit_at_k([], 1, k=3)
    (0.0, 1.0, 0.0)
    """
    return float(target in _topk(ranked_items, k))


def ndcg_at_k_single(ranked_items, target, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 2) for its 0-based rank within the first k
    (the ideal DCG is 1), else 0.

    >>> round(ndcg_at_k_single([3, 1, 2], 1, k=3), 4)  # 1 / log2(3)
    0.6309
    """
    top = _topk(ranked_items, k)
    return float(1.0 / np.log2(top.index(target) + 2)) if target in top else 0.0


def precision_at_k(ranked_items, relevant, k: int) -> float:
    """|distinct first-k items ∩ relevant| / k (a list shorter than k is not rewarded for it).

    >>> precision_at_k([3, 1, 2, 7], {1, 7, 9}, k=4)
    0.5
    """
    return len(set(_topk(ranked_items, k)) & set(relevant)) / k


def diversity(vectors) -> float:
    """Mean pairwise cosine distance 1 − cos(v_i, v_j) over i < j of the recommended items'
    embeddings (N, D); 0.0 for N < 2. A zero vector counts as orthogonal to everything.

    >>> diversity(np.eye(3)), diversity(np.ones((2, 4)))
    (1.0, 0.0)
    """
    v = np.asarray(vectors, dtype=np.float64)
    assert v.ndim == 2, f"vectors must be (N, D), got shape {v.shape}"
    n = v.shape[0]
    if n < 2:
        return 0.0
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # (N, D)
    cos = unit @ unit.T  # (N, N)
    i, j = np.triu_indices(n, k=1)
    return float(np.mean(np.clip(1.0 - cos[i, j], 0.0, 2.0)))  # clip rounding below 0
