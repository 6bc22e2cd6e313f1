"""Cosine similarity over cached text vectors (faiss, exact inner product on L2-normalised rows):
near-duplicate filtering of sampled texts, and nearest-neighbour retrieval.

faiss runs its own OpenMP threads; on a shared 2-core machine set `faiss.omp_set_num_threads(1)`
(the same spinning trap as torch, ENVIRONMENT.md). Both functions here are exact, not approximate.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous copy with unit-norm rows (zero rows stay zero).

    >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    x = np.array(vectors, dtype=np.float32, ndmin=2, copy=True)  # (N, D)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


def drop_near_duplicates(
    vectors: np.ndarray, threshold: float = 0.95, groups: Sequence | np.ndarray | None = None
) -> np.ndarray:
    """Keep mask (N,) bool. Within each group (e.g. the N samples of one user), rows are visited in
    order and a row is dropped when its cosine similarity to an already *kept* row of the same
    group exceeds `threshold`; `groups=None` is one group. So the texts that remain are pairwise at
    most `threshold` similar, and preference pairs built from them compare different texts.

    >>> drop_near_duplicates(np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])).tolist()
    [True, False, True]
    >>> drop_near_duplicates(np.array([[1.0, 0.0], [1.0, 0.0]]), groups=["u1", "u2"]).tolist()
    [True, True]
    """
    x = l2_normalize(vectors)  # (N, D)
    n = len(x)
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return keep
    if groups is None:
        members = [np.arange(n)]
    else:
        groups = np.asarray(groups)
        assert len(groups) == n, f"groups has {len(groups)} labels for {n} vectors"
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")  # grouped, original order inside each group
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    for idx in members:
        if len(idx) < 2:
            continue
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[idx])
        lims, sims, nbrs = index.range_search(x[idx], float(threshold))  # pairs with cos > threshold
        for i in range(len(idx)):
            earlier = nbrs[lims[i] : lims[i + 1]]
            earlier = earlier[earlier < i]
            if earlier.size and keep[idx[earlier]].any():
                keep[idx[i]] = False
    return keep


class VectorIndex:
    """Exact cosine nearest neighbours: faiss IndexFlatIP over L2-normalised vectors (N, D).
    `ids` (N,) label the rows (any dtype; default 0..N-1)."""

    def __init__(self, vectors: np.ndarray, ids: Sequence | np.ndarray | None = None):
        x = l2_normalize(vectors)  # (N, D)
        self.ids = np.arange(len(x)) if ids is None else np.asarray(ids)
        assert len(self.ids) == len(x), f"{len(self.ids)} ids for {len(x)} vectors"
        self.index = faiss.IndexFlatIP(x.shape[1])
        self.index.add(x)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) float32 cosine, descending; ids (Q, k)). `k` is capped at len(self);
        a single query (D,) is treated as (1, D)."""
        q = l2_normalize(queries)  # (Q, D)
        assert q.shape[1] == self.dim, f"queries have dim {q.shape[1]}, the index {self.dim}"
        k = min(int(k), len(self))
        scores, pos = self.index.search(q, k)  # (Q, k), (Q, k)
        return scores, self.ids[pos]


def vector_table(num_rows: int, ids, vectors: np.ndarray) -> np.ndarray:
    """(num_rows + 1, D) float32 lookup table with `vectors[k]` at row `ids[k]` and zeros elsewhere
    (row 0 = padding): how per-user / per-item knowledge vectors become an embedding table.

    >>> vector_table(3, [2], np.ones((1, 2))).tolist()
    [[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    """
    table = np.zeros((num_rows + 1, vectors.shape[1]), np.float32)
    table[list(ids)] = vectors
    return table
