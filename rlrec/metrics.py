"""Metrics no library has in the form the papers use. Standard ones come from torchmetrics."""

from __future__ import annotations

import numpy as np
import pandas as pd


def user_auc(users, scores, labels) -> float:
    """Mean per-user AUC over users that have both a positive and a negative sample (CoLLM's
    uAUC skips the others). Ties get average ranks (the Mann–Whitney form).

    >>> user_auc([1, 1, 1, 2, 2], [0.9, 0.1, 0.5, 0.3, 0.3], [1, 0, 0, 1, 1])
    1.0
    """
    df = pd.DataFrame(
        {"u": np.asarray(users), "s": np.asarray(scores, float), "y": np.asarray(labels, float)}
    )
    df["r"] = df.groupby("u")["s"].rank(method="average")
    g = df.groupby("u").agg(n=("y", "size"), pos=("y", "sum"))
    g["rank_pos"] = df[df["y"] > 0].groupby("u")["r"].sum()
    g = g[(g["pos"] > 0) & (g["pos"] < g["n"])]
    if g.empty:
        return float("nan")
    neg = g["n"] - g["pos"]
    auc = (g["rank_pos"] - g["pos"] * (g["pos"] + 1) / 2) / (g["pos"] * neg)
    return float(auc.mean())
