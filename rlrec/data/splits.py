"""Labels, split protocols, the KAR leakage guard, and behaviour histories.

Every row of the interactions frame gets a `split` in {prompt, train, valid, test}:

* `prompt` (leakage guard on): each user's first min(ceil(len/2), prompt_max_len) interactions in
  time order (KAR's `lm_hist_idx`). They feed the LLM prompt and never become samples.
* `temporal`: the remaining rows sorted by (timestamp, user_id, item_id) and cut by `ratios`
  (a global time cut, CoLLM/the reference protocol).
* `user`: users shuffled with `seed` and cut by `ratios` (KAR's 9:1 user split when ratios are
  0.8/0.1/0.1: 10% test users, and 1/9 of the remaining users carved out for validation).

Model selection uses `valid`, never `test`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlrec.data.schema import DataError

SPLITS = ("prompt", "train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    protocol: str = "temporal"  # temporal | user
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / valid / test (rows or users)
    leakage_guard: bool = True  # KAR: first half of each history (<= prompt_max_len) is prompt-only
    prompt_max_len: int = 30  # KAR's cap on the prompt history
    seed: int = 42  # only the user protocol is random

    def __post_init__(self):
        if self.protocol not in ("temporal", "user"):
            raise DataError(f"split.protocol must be 'temporal' or 'user', got {self.protocol!r}")
        r = tuple(float(x) for x in self.ratios)
        if len(r) != 3 or min(r) < 0 or abs(sum(r) - 1) > 1e-6:
            raise DataError(f"split.ratios must be three non-negative numbers summing to 1, got {list(self.ratios)}")


def add_labels(inter: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """label = rating >= threshold (ML: 4, Amazon: 5)."""
    out = inter.copy()
    out["label"] = (out["rating"] >= threshold).astype(np.float32)
    return out


def sort_by_user_time(inter: pd.DataFrame) -> pd.DataFrame:
    """Stable canonical order: user, then time, then item (ties in time broken by item id)."""
    return inter.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort").reset_index(drop=True)


def assign_splits(inter: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Return `inter` sorted by (user, time, item) with a `split` column and `pos` (the row's
    0-based position in its user's time-ordered sequence)."""
    df = sort_by_user_time(inter)
    df["pos"] = df.groupby("user_id", sort=False).cumcount().to_numpy()
    split = np.full(len(df), "train", dtype=object)
    if cfg.leakage_guard:
        n = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
        prompt_len = np.minimum((n + 1) // 2, cfg.prompt_max_len)
        split[df["pos"].to_numpy() < prompt_len] = "prompt"
    sample = np.flatnonzero(split != "prompt")
    r_train, r_valid, _ = cfg.ratios
    if cfg.protocol == "temporal":
        order = np.lexsort(
            (df["item_id"].to_numpy()[sample], df["user_id"].to_numpy()[sample], df["timestamp"].to_numpy()[sample])
        )
        ranked = sample[order]
        n_train = int(round(len(ranked) * r_train))
        n_valid = int(round(len(ranked) * r_valid))
        split[ranked[n_train : n_train + n_valid]] = "valid"
        split[ranked[n_train + n_valid :]] = "test"
    else:
        users = np.sort(df["user_id"].unique())
        rng = np.random.default_rng(cfg.seed)
        users = users[rng.permutation(len(users))]
        n_train = int(round(len(users) * r_train))
        n_valid = int(round(len(users) * r_valid))
        where = pd.Series("train", index=users, dtype=object)
        where.iloc[n_train : n_train + n_valid] = "valid"
        where.iloc[n_train + n_valid :] = "test"
        mapped = df["user_id"].map(where).to_numpy()
        split[sample] = mapped[sample]
    df["split"] = pd.Categorical(split, categories=list(SPLITS))
    return df


def previous_items(df: pd.DataFrame, items: np.ndarray, max_len: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """(R, max_len) int64 behaviour histories: for each row of `df` (sorted by user, time, item),
    the last `max_len` eligible rows of the same user with a *strictly earlier* timestamp, oldest
    first, right-padded with 0. `items` (R,) holds the value to emit per row (catalogue index).

    >>> df = pd.DataFrame({"user_id": [1, 1, 1, 2], "timestamp": [5, 5, 9, 1]})
    >>> previous_items(df, np.array([10, 11, 12, 13]), 3).tolist()
    [[0, 0, 0], [0, 0, 0], [10, 11, 0], [0, 0, 0]]
    """
    user = pd.factorize(df["user_id"], sort=False)[0].astype(np.int64)
    ts = df["timestamp"].to_numpy().astype(np.int64)
    ts = ts - ts.min()
    span = int(ts.max()) + 2
    assert (user.max() + 1) * span < 2**62, "timestamps span too wide to combine with user ids"
    key = user * span + ts  # non-decreasing because df is sorted by (user, time)
    assert np.all(np.diff(key) >= 0), "previous_items needs rows sorted by (user, timestamp)"
    el = np.ones(len(df), bool) if eligible is None else np.asarray(eligible, bool)
    el_key, el_items = key[el], np.asarray(items)[el]
    k = np.searchsorted(el_key, key, side="left")  # eligible rows strictly before (same user, earlier ts)
    seg = np.searchsorted(el_key, user * span, side="left")  # first eligible row of the user
    n = np.minimum(max_len, k - seg)
    idx = (k - n)[:, None] + np.arange(max_len)[None, :]
    valid = np.arange(max_len)[None, :] < n[:, None]
    out = np.where(valid, el_items[np.clip(idx, 0, max(len(el_items) - 1, 0))] if len(el_items) else 0, 0)
    return out.astype(np.int64)
