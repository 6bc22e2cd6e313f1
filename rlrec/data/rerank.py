"""Re-rank lists in the two styles the papers use.

* KAR (`kar_lists`): walk each user's sample interactions of a split in chunks of `chunk` (4)
  consecutive items, pad each chunk with random catalogue negatives (label 0) to `list_len` (10)
  and shuffle. No initial ranker: list order carries no signal.
* LibRerank (`ranked_lists`): chunks of `list_len` consecutive held-out interactions of a user,
  ordered by an initial ranker's scores (highest first); the order *is* the initial ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from rlrec.data.features import PreparedData


@dataclass
class RerankLists:
    user: np.ndarray  # (M,) catalogue user index
    items: np.ndarray  # (M, N) catalogue item index, 0 = padding
    labels: np.ndarray  # (M, N) float32 relevance, 0 on padding
    initial: np.ndarray  # (M, N) float32 initial-ranker score (higher first), -inf on padding
    pv: np.ndarray | None = None  # (M, N, H) float32 the initial ranker's personalised vectors, 0 on padding

    def __len__(self) -> int:
        return len(self.user)

    @property
    def mask(self) -> np.ndarray:
        return self.items > 0

    def subset(self, keep: np.ndarray) -> RerankLists:
        pv = None if self.pv is None else self.pv[keep]
        return RerankLists(self.user[keep], self.items[keep], self.labels[keep], self.initial[keep], pv)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "user": torch.from_numpy(self.user.astype(np.int64)),
            "items": torch.from_numpy(self.items.astype(np.int64)),
            "labels": torch.from_numpy(self.labels.astype(np.float32)),
            "mask": torch.from_numpy(self.mask),
            "initial": torch.from_numpy(np.where(self.mask, self.initial, 0).astype(np.float32)),
            **({} if self.pv is None else {"initial_pv": torch.from_numpy(self.pv.astype(np.float32))}),
        }


def _user_chunks(prep: PreparedData, split: str, size: int, keep: np.ndarray | None = None):
    """Yield (user catalogue index, row indices) for consecutive chunks of `size` rows of each
    user's interactions in `split` (time order; the frame is sorted by user, time, item); with
    `keep` (a bool per row of the split) only those rows."""
    rows = prep.rows(split)
    if keep is not None:
        rows = rows[np.asarray(keep, bool)]
    users = prep.frame["u"].to_numpy()[rows]
    for chunk in np.split(rows, np.flatnonzero(np.diff(users)) + 1):
        for s in range(0, len(chunk), size):
            yield int(prep.frame["u"].iat[chunk[0]]), chunk[s : s + size]


def kar_lists(
    prep: PreparedData,
    split: str,
    chunk: int = 4,
    list_len: int = 10,
    seed: int = 12345,
    exclude_user_items: bool = True,
    keep: np.ndarray | None = None,
    scorer=None,
) -> RerankLists:
    """KAR's lists. KAR samples negatives from the whole catalogue, the user's own items included;
    `exclude_user_items=True` (default) skips items the user interacted with, so a "negative" is
    never an item the user actually rated highly. Set False to reproduce KAR exactly. Only the
    split's rows where `keep` (a bool per row) is set are listed.

    Without `scorer` the list is shuffled (KAR: no initial ranker). With one — `scorer(user (M,),
    items (M, N), anchor (M,))` → (scores (M, N), personalised vectors (M, N, H) or None), anchor
    being each list's first interaction (a row of `prep.frame`: the history the ranker sees) —
    each list is ordered by its scores, highest first, as LibRerank's lists are."""
    assert 0 < chunk <= list_len <= prep.spec.num_items, "need chunk <= list_len <= catalogue size"
    rng = np.random.default_rng(seed)
    f = prep.frame
    item_col, label_col = f["i"].to_numpy(), f["label"].to_numpy()
    seen = f.groupby("u")["i"].agg(lambda s: set(s.tolist())).to_dict() if exclude_user_items else {}
    n_items = prep.spec.num_items
    U, I, L, A = [], [], [], []
    for u, rows in _user_chunks(prep, split, chunk, keep):
        pos_items, pos_labels = item_col[rows], label_col[rows]
        need = list_len - len(rows)
        banned = seen.get(u, set()) | set(pos_items.tolist())
        negs: list[int] = []
        while len(negs) < need:
            cand = int(rng.integers(1, n_items + 1))
            if (cand not in banned or not exclude_user_items) and cand not in negs:
                negs.append(cand)
            if len(banned) + len(negs) >= n_items:  # tiny catalogues: allow the user's other items
                banned = set(pos_items.tolist())  # rather than loop forever, but never the chunk's own
        items = np.concatenate([pos_items, np.array(negs, dtype=np.int64)])
        labels = np.concatenate([pos_labels, np.zeros(need, np.float32)])
        perm = rng.permutation(list_len)
        U.append(u)
        I.append(items[perm])
        L.append(labels[perm])
        A.append(rows[0])
    user = np.array(U, dtype=np.int64)
    items = np.array(I, dtype=np.int64).reshape(-1, list_len)
    labels = np.array(L, dtype=np.float32).reshape(-1, list_len)
    if scorer is None:  # no initial ranker: every order is as good
        return RerankLists(user, items, labels, np.zeros(items.shape, np.float32))
    scores, pv = scorer(user, items, np.array(A, dtype=np.int64))
    scores = np.asarray(scores, np.float32).reshape(items.shape)
    order = np.argsort(-scores, axis=1, kind="stable")
    take = partial(np.take_along_axis, indices=order, axis=1)
    pv = None if pv is None else np.take_along_axis(np.asarray(pv, np.float32), order[..., None], axis=1)
    return RerankLists(user, take(items), take(labels), take(scores), pv)


def ranked_lists(
    prep: PreparedData,
    split: str,
    scores: np.ndarray,
    list_len: int = 10,
    min_len: int = 2,
    keep: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
) -> RerankLists:
    """LibRerank-style lists from `split`'s rows (only those where `keep`, a bool per row, is set);
    `scores` (len(prep.rows(split)),) are the initial ranker's scores for the split's rows and
    `vectors` (len(prep.rows(split)), H), optional, its personalised vectors. Lists shorter than
    `min_len` are dropped."""
    rows = prep.rows(split)
    scores = np.asarray(scores, dtype=np.float32)
    assert scores.shape == (len(rows),), f"need one score per {split} row: {scores.shape} vs {len(rows)}"
    if vectors is not None:
        assert len(vectors) == len(rows), f"need one vector per {split} row: {len(vectors)} vs {len(rows)}"
    position = {r: j for j, r in enumerate(rows.tolist())}
    f = prep.frame
    item_col, label_col = f["i"].to_numpy(), f["label"].to_numpy()
    U, I, L, S, V = [], [], [], [], []
    for u, chunk in _user_chunks(prep, split, list_len, keep):
        if len(chunk) < min_len:
            continue
        at = np.array([position[r] for r in chunk])
        s = scores[at]
        order = np.argsort(-s, kind="stable")
        pad = list_len - len(chunk)
        U.append(u)
        I.append(np.pad(item_col[chunk][order], (0, pad)))
        L.append(np.pad(label_col[chunk][order], (0, pad)))
        S.append(np.pad(s[order], (0, pad), constant_values=-np.inf))
        if vectors is not None:
            V.append(np.pad(vectors[at[order]], ((0, pad), (0, 0))))
    shape = (-1, list_len)
    pv = None
    if vectors is not None:
        pv = np.array(V, dtype=np.float32).reshape(-1, list_len, vectors.shape[1])
    return RerankLists(
        np.array(U, dtype=np.int64),
        np.array(I, dtype=np.int64).reshape(shape),
        np.array(L, dtype=np.float32).reshape(shape),
        np.array(S, dtype=np.float32).reshape(shape),
        pv,
    )
