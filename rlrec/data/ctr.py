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

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, shuffle: bool = False, seed: int = 0):
        sizes = {k: len(v) for k, v in tensors.items()}
        assert len(set(sizes.values())) == 1, f"tensors must have the same length: {sizes}"
        assert batch_size > 0
        self.tensors, self.batch_size, self.shuffle = tensors, int(batch_size), shuffle
        self.n = next(iter(sizes.values()))
        self.generator = torch.Generator().manual_seed(seed)

    def _rows(self) -> tuple[int, int]:
        """This process's rows [lo, hi). Inside a multi-process fit (a launched DDP rank) every rank
        draws the same seeded order: for training each takes an equal share of it (DDP steps together,
        so every rank needs as many batches; `__iter__` picks the rows), for evaluation its slice."""
        from rlrec.runtime.launch import world

        rank, size = world()
        if size == 1:
            return 0, self.n
        if self.shuffle:
            return 0, self.n // size
        return self.n * rank // size, self.n * (rank + 1) // size

    def _starts(self) -> range:
        lo, hi = self._rows()
        m = hi - lo
        n = (m + self.batch_size - 1) // self.batch_size
        if self.shuffle and m > 1 and m % self.batch_size == 1:
            n -= 1  # a training batch of one sample breaks BatchNorm/Dice; it is reshuffled next epoch
        return range(lo, lo + n * self.batch_size, self.batch_size)

    def __len__(self) -> int:
        return len(self._starts())

    def __iter__(self):
        if self.shuffle:
            from rlrec.runtime.launch import world

            perm = torch.randperm(self.n, generator=self.generator)
            rank, size = world()
            if size > 1:  # every size-th row of the shared order (DistributedSampler's interleave): the
                # ranks' k-th batches together are one process's k-th batch of size × batch_size rows
                perm = perm[rank::size][: self.n // size]
            data = {k: v[perm] for k, v in self.tensors.items()}  # one gather per epoch, then cheap slices
        else:
            data = self.tensors
        hi = self._rows()[1]
        for s in self._starts():
            yield {k: v[s : min(s + self.batch_size, hi)] for k, v in data.items()}
