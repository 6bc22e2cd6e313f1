"""The training / evaluation protocol shared by both sides of `ctr_peer.py`.

Imported by `ctr_peer.py` (rlrec's environment) and by `_peer_side.py` / `_fuxictr_side.py` (the
peers' virtualenvs), so it needs nothing but torch and numpy: both sides train, select, time and
score with this exact code.

Protocol: Adam (lr 1e-3; each side builds it as its library does — rlrec from conf/train.yaml,
fused; DeepCTR-Torch as its `compile("adam")`, torch.optim.Adam with default lr; FuxiCTR as its
`compile("adam", lr)`, torch.optim.Adam), batches of 1024 cut from one seeded permutation of the
training set per epoch (the same permutation on both sides for the same seed), at most
`max_epochs` epochs, early stopping on validation AUC (patience 2: stop after two epochs without a
strict improvement), test AUC / log-loss of the best-validation epoch's weights. Gradient clipping
is off unless `max_grad_norm` is given: then every step clips the total gradient 2-norm to it
before the optimiser step (`torch.nn.utils.clip_grad_norm_`, as FuxiCTR's `train_step` does at its
default 10; ctr_peer.py clips both sides when the peer does).

Throughput: training samples / training seconds, where the clock runs from the start of each epoch
(the permutation gather included, i.e. data loading) to its last optimizer step; validation and
test are outside the clock.

Interleaved throughput (`StepClock`): the two sides run as two processes that take turns, a few
dozen training steps each, so that both see the same machine speed. A virtual machine's speed
drifts by tens of percent over minutes, which whole runs done one after the other cannot separate
from a real difference between the sides.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (Mann–Whitney, ties get their average rank). y in {0, 1}."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    ranks = (upper - (counts - 1) / 2.0)[inverse]
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _slices(n: int, batch_size: int):
    for s in range(0, n, batch_size):
        yield slice(s, min(s + batch_size, n))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: Batch, predict: Callable[[torch.nn.Module, Batch], torch.Tensor], batch_size: int
) -> dict:
    """AUC and log-loss of `predict` (probabilities) over `data` (needs a "label" tensor)."""
    model.eval()
    n = len(data["label"])
    probs = [predict(model, {k: v[s] for k, v in data.items()}).reshape(-1) for s in _slices(n, batch_size)]
    p = torch.cat(probs).double().numpy()
    y = data["label"].numpy()
    return {"auc": auc(y, p), "logloss": logloss(y, p)}


def build_optimizer(
    model: torch.nn.Module, optimizer: Callable[..., torch.optim.Optimizer] | None, lr: float
) -> torch.optim.Optimizer:
    """`optimizer(params)`, checked to use the protocol's lr; default torch.optim.Adam(params, lr)."""
    if optimizer is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    built = optimizer(model.parameters())
    got = {g["lr"] for g in built.param_groups}
    assert got == {lr}, f"the optimiser's lr {got} is not the protocol's {lr}"
    return built


def shuffled(train: Batch, generator: torch.Generator) -> Batch:
    """One epoch's order: every tensor gathered once by the same seeded permutation, then cut into
    batches by cheap slices."""
    perm = torch.randperm(len(train["label"]), generator=generator)
    return {k: v[perm] for k, v in train.items()}


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    batch: Batch,
    max_grad_norm: float | None = None,
) -> None:
    """One optimiser step on `batch`: the unit both throughput clocks time. With `max_grad_norm`
    the gradients are first clipped to that total 2-norm."""
    loss = loss_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()


def run(
    model: torch.nn.Module,
    train: Batch,
    valid: Batch,
    test: Batch,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    predict: Callable[[torch.nn.Module, Batch], torch.Tensor],
    seed: int,
    max_epochs: int = 10,
    patience: int = 2,
    lr: float = 1e-3,
    batch_size: int = 1024,
    eval_batch_size: int = 4096,
    limit_batches: int | None = None,
    optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    max_grad_norm: float | None = None,
) -> dict:
    """Train `model` under the protocol above; return test metrics of the best-validation epoch,
    training throughput and bookkeeping. `loss_fn(model, batch)` returns the scalar training loss
    (any data preparation it does per batch, e.g. negative sampling, is timed as training).
    `optimizer(params)` builds the optimiser (default: torch.optim.Adam(params, lr)); it must use
    the protocol's lr. `max_grad_norm`: clip the gradients' total 2-norm every step (None: off)."""
    optimizer = build_optimizer(model, optimizer, lr)
    generator = torch.Generator().manual_seed(seed)
    n = len(train["label"])
    best_auc, best_state, best_epoch, wait = -float("inf"), None, 0, 0
    best_val: dict = {}
    samples, seconds, epochs = 0, 0.0, 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        data = shuffled(train, generator)
        for b, s in enumerate(_slices(n, batch_size)):
            if limit_batches is not None and b >= limit_batches:
                break
            train_step(model, optimizer, loss_fn, {k: v[s] for k, v in data.items()}, max_grad_norm)
            samples += s.stop - s.start
        seconds += time.perf_counter() - t0
        epochs = epoch
        val = evaluate(model, valid, predict, eval_batch_size)
        if val["auc"] > best_auc:
            best_auc, best_val, best_epoch, wait = val["auc"], val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
            if wait >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result = evaluate(model, test, predict, eval_batch_size)
    return {
        "auc": result["auc"],
        "logloss": result["logloss"],
        "val_auc": best_val.get("auc", float("nan")),
        "val_logloss": best_val.get("logloss", float("nan")),
        "samples_per_s": samples / seconds if seconds else float("nan"),
        "train_seconds": seconds,
        "train_samples": samples,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "params": sum(p.numel() for p in model.parameters()),
    }


class StepClock:
    """Training throughput measured in turns. `steps(k)` trains `model` for the next k batches
    (batches of the same seeded per-epoch permutations as `run`; a new epoch's permutation gather
    is timed, as in `run`; gradients clipped at `max_grad_norm` as in `run`) and returns the seconds
    and samples of those k steps. Both sides of `ctr_peer.py` build one and the caller alternates
    between them, so the two clocks sample the same stretch of machine time."""

    def __init__(
        self,
        model: torch.nn.Module,
        train: Batch,
        loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
        seed: int,
        batch_size: int = 1024,
        lr: float = 1e-3,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        max_grad_norm: float | None = None,
    ):
        self.model, self.train, self.loss_fn, self.batch_size = model, train, loss_fn, batch_size
        self.max_grad_norm = max_grad_norm
        self.optimizer = build_optimizer(model, optimizer, lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.n = len(train["label"])
        self.data: Batch = {}
        self.slices: list[slice] = []

    def steps(self, k: int) -> dict:
        assert k > 0, f"steps(k) needs k >= 1, got {k}"
        self.model.train()
        samples = 0
        t0 = time.perf_counter()
        for _ in range(k):
            if not self.slices:  # a new epoch: permutation gather, as at the top of `run`'s epoch
                self.data = shuffled(self.train, self.generator)
                self.slices = list(_slices(self.n, self.batch_size))[::-1]
            s = self.slices.pop()
            batch = {key: v[s] for key, v in self.data.items()}
            train_step(self.model, self.optimizer, self.loss_fn, batch, self.max_grad_norm)
            samples += s.stop - s.start
        return {"seconds": time.perf_counter() - t0, "samples": samples}


def set_threads(threads: int) -> None:
    """Same intra-op thread count on both sides (OMP_NUM_THREADS is set by the caller's env)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work already started
        torch.set_num_interop_threads(1)
