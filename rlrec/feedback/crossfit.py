"""Cross-fitting over user folds, shared by the feedback models (CTR validator, recommender,
LLM validator): the model that scores user u never trained on u's data, so a text is rewarded
for knowledge that generalises, not for what the model memorised about u.

>>> folds = UserFolds(num_users=6, folds=2, seed=0)
>>> users = np.array([1, 2, 3, 4, 5, 6])
>>> sorted(len(sel) for _, sel in folds.groups(users))
[3, 3]
>>> mean_by_slot(np.array([1.0, 3.0, 5.0]), np.array([0, 0, 2]), 3)
array([ 2., nan,  5.])
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def user_folds(num_users: int, folds: int, seed: int) -> np.ndarray:
    """(num_users + 1,) fold id per user catalogue index (row 0 unused)."""
    rng = np.random.default_rng(seed)
    f = np.zeros(num_users + 1, np.int64)
    f[1:] = rng.permutation(num_users) % folds
    return f


class UserFolds:
    def __init__(self, num_users: int, folds: int, seed: int):
        if folds < 2:
            raise ValueError(f"cross-fitting needs feedback.folds >= 2, got {folds}")
        self.folds = int(folds)
        self.of = user_folds(num_users, folds, seed)

    def train_rows(self, row_users: np.ndarray, k: int) -> np.ndarray:
        """Boolean mask of the rows the model of fold k may train on: users of every other fold."""
        return self.of[np.asarray(row_users)] != k

    def groups(self, users: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(k, positions in `users` of the users in fold k) for every fold that has any."""
        fold = self.of[np.asarray(users)]
        for k in range(self.folds):
            sel = np.flatnonzero(fold == k)
            if len(sel):
                yield k, sel


def mean_by_slot(values: np.ndarray, slot: np.ndarray, n: int) -> np.ndarray:
    """(n,) mean of `values` per slot index (nan where a slot has none)."""
    sums = np.bincount(slot, weights=values, minlength=n)
    counts = np.bincount(slot, minlength=n)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
