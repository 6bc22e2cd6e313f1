"""CTR samples as tensors, and a batch iterator that slices them (no per-sample collate:
for small CTR models the DataLoader's Python overhead would otherwise dominate)."""

from __future__ import annotations

import numpy as np
import torch

from rlrec.data.features import PreparedData


def ctr_tensors(prep: PreparedData, split: str) -> dict[str, torch.Tensor]:
    """One sample per interaction of `split`: user, item (catalogue indices), history (B, L)
    of strictly earlier items, label (B,)."""
    rows = prep.rows(split)
    f = prep.frame
    return {
        "user": torch.from_numpy(f["u"].to_numpy()[rows].astype(np.int64)),
        "item": torch.from_numpy(f["i"].to_numpy()[rows].astype(np.int64)),
        "history": torch.from_numpy(prep.history[rows]),
        "label": torch.from_numpy(f["label"].to_numpy()[rows].astype(np.float32)),
    }


class TensorBatches:
    """An iterable of dict batches cut from aligned tensors; reshuffled (seeded) every epoch.

    >>> b = TensorBatches({"x": torch.arange(5)}, batch_size=2)
    >>> [t["x"].tolist() for t in b]
    [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self, tensors: dict[str, torch.Tensor], batch_size: int, shuffle: bool = False, seed: int = 0
    ):
        sizes = {k: len(v) for k, v in tensors.items()}
        assert len(set(sizes.values())) == 1, f"tensors must have the same length: {sizes}"
        assert batch_size > 0
        self.tensors, self.batch_size, self.shuffle = tensors, int(batch_size), shuffle
        self.n = next(iter(sizes.values()))
        self.generator = torch.Generator().manual_seed(seed)

    def _starts(self) -> range:
        """Row offsets of this process's batches. Inside a multi-process fit (a launched DDP rank)
        every rank draws the same seeded order and takes every world-th batch: a training epoch
        gives each rank the same number of batches (DDP steps together), evaluation covers all."""
        from rlrec.launch import world

        n = (self.n + self.batch_size - 1) // self.batch_size
        if self.shuffle and self.n > 1 and self.n % self.batch_size == 1:
            n -= 1  # a training batch of one sample breaks BatchNorm/Dice; it is reshuffled next epoch
        rank, size = world()
        if size > 1 and self.shuffle:
            n -= n % size
        return range(rank * self.batch_size, n * self.batch_size, size * self.batch_size)

    def __len__(self) -> int:
        return len(self._starts())

    def __iter__(self):
        if self.shuffle:
            perm = torch.randperm(self.n, generator=self.generator)
            data = {k: v[perm] for k, v in self.tensors.items()}  # one gather per epoch, then cheap slices
        else:
            data = self.tensors
        for s in self._starts():
            yield {k: v[s : s + self.batch_size] for k, v in data.items()}
