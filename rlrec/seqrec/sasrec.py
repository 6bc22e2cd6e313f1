"""SASRec — Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018).

    model = fit_sasrec({"u1": [3, 7, 2, 9], ...}, num_items=20, max_epochs=50)
    order = rank_candidates(model, histories, candidates)  # (B, N) columns of `candidates`, best first

Item ids are 1..num_items; 0 is padding. Sequences are left-padded, so the most recent item is
always the last column.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from rlrec.runtime import launch
from rlrec.tasks.callbacks import KeepBest


def pad_left(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """(B, max_len) int64: the last `max_len` items of each sequence, left-padded with 0.

    >>> pad_left([[1, 2, 3], [4]], 2).tolist()
    [[2, 3], [0, 4]]
    """
    out = torch.zeros(len(seqs), max_len, dtype=torch.long)
    for row, s in enumerate(seqs):
        s = list(s)[-max_len:] if max_len > 0 else []
        if s:
            out[row, max_len - len(s) :] = torch.as_tensor(s, dtype=torch.long)
    return out


class SASRecBlock(nn.Module):
    """One self-attention block (paper §III-B/C). Each sub-layer g gets the paper's residual form
    x + Dropout(g(LayerNorm(x))):
    g₁ = causal self-attention S = softmax(QKᵀ/√d)V with Q, K, V = x W^Q, x W^K, x W^V (heads are
         concatenated with no output projection, as in the authors' code);
    g₂ = point-wise feed-forward network F = ReLU(S W⁽¹⁾ + b⁽¹⁾) W⁽²⁾ + b⁽²⁾."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        assert embed_dim % num_heads == 0, f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}"
        self.num_heads, self.dropout = num_heads, dropout
        self.attn_norm, self.ffn_norm = nn.LayerNorm(embed_dim, eps=1e-8), nn.LayerNorm(embed_dim, eps=1e-8)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(embed_dim, embed_dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), attend (B, 1, L, L) bool (True = query may attend key) → (B, L, D)."""
        B, L, D = x.shape
        q, k, v = (
            self.qkv(self.attn_norm(x)).view(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        )  # each (B, H, L, d)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, d)
        x = x + self.drop(att.transpose(1, 2).reshape(B, L, D))  # (B, L, D)
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class SASRec(nn.Module):
    """Embedding layer (§III-A): Ê_t = M_{s_t}·√D + P_t with a learned positional embedding P
    (the √D scale is the authors' code), then dropout; `num_layers` stacked causal self-attention
    blocks (§III-C); a final LayerNorm (pre-norm blocks need it, as in the authors' code); prediction
    with the shared item embedding (§III-D): r_{i,t} = F_t M_iᵀ.

    Positions are counted from the right end of a `max_len` window (the last column is position
    max_len − 1), which for full-width inputs is exactly the paper's left-padded layout and makes
    extra left padding a no-op. Padding slots attend only to themselves and are zeroed after every
    block, so real positions never see them."""

    def __init__(
        self,
        num_items: int,
        embed_dim: int = 64,  # D; the paper uses 50 — 64 is the usual rounded choice
        num_layers: int = 2,  # self-attention blocks (paper: 2)
        num_heads: int = 1,  # the paper's single head; multi-head split D across heads
        dropout: float = 0.2,  # embedding / attention / FFN dropout (paper: 0.2 dense, 0.5 sparse data)
        max_len: int = 50,  # n, the longest history the model sees (paper: 50 / 200 for ML-1M)
    ):
        super().__init__()
        self.num_items, self.embed_dim, self.max_len = num_items, embed_dim, max_len
        self.item_embedding = nn.Embedding(num_items + 1, embed_dim, padding_idx=0)  # M, row 0 = padding
        self.position_embedding = nn.Embedding(max_len, embed_dim)  # P
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(embed_dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-8)
        for emb in (self.item_embedding, self.position_embedding):
            nn.init.xavier_normal_(emb.weight)  # as the reference PyTorch port; N(0, 1) rows saturate σ(r)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) item ids, 0 = padding, left-padded, L ≤ max_len → hidden states F (B, L, D)."""
        B, L = seq.shape
        assert self.max_len >= L, f"sequence length {L} > SASRec max_len {self.max_len}; keep the last max_len"
        real = seq > 0  # (B, L)
        pos = self.position_embedding.weight[self.max_len - L :]  # (L, D)
        x = self.drop(self.item_embedding(seq) * self.embed_dim**0.5 + pos)  # (B, L, D)
        x = x * real.unsqueeze(-1)
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()  # (L, L)
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        attend = ((causal & real.unsqueeze(1)) | eye).unsqueeze(1)  # (B, 1, L, L); pads see only themselves
        for block in self.blocks:
            x = block(x, attend) * real.unsqueeze(-1)  # (B, L, D)
        return self.norm(x)

    def _last(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, D) hidden state of the last position; histories longer than max_len keep their most
        recent max_len items (all the model was trained to see)."""
        return self(seq[:, -self.max_len :])[:, -1]

    def score(self, seq: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """seq (B, L), candidates (B, N) item ids → (B, N) logits r_{i,t} = F_t M_iᵀ of the next item."""
        h = self._last(seq)  # (B, D)
        return torch.einsum("bd,bnd->bn", h, self.item_embedding(candidates))  # (B, N)

    def predict_all(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) → (B, num_items + 1) logits over the whole catalogue; column 0 (padding) is -inf."""
        logits = self._last(seq) @ self.item_embedding.weight.T  # (B, num_items + 1)
        return logits.index_fill(1, torch.tensor([0], device=logits.device), float("-inf"))


def sample_negatives(positive: torch.Tensor, exclude: torch.Tensor, num_items: int, rounds: int = 20) -> torch.Tensor:
    """positive (B, L), exclude (B, M) the rows' own items (0 = padding) → (B, L) uniform negatives
    from 1..num_items. A draw that hits one of its row's items is redrawn, up to `rounds` times; one
    still equal to its positive after that (tiny catalogues) moves to the next id, so a negative is
    never its own positive."""
    assert num_items > 1, "negative sampling needs at least 2 items"
    neg = torch.randint(1, num_items + 1, positive.shape, device=positive.device)
    for _ in range(rounds):
        hit = (neg.unsqueeze(-1) == exclude.unsqueeze(1)).any(-1)  # (B, L)
        if not hit.any():
            break
        neg = torch.where(hit, torch.randint_like(neg, 1, num_items + 1), neg)
    return torch.where(neg == positive, neg % num_items + 1, neg)


def hit_ndcg(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Mean HR@k and NDCG@k (one relevant item: 1 / log2(rank + 2) if rank < k) from 0-based ranks.

    >>> {k: round(v, 4) for k, v in hit_ndcg(torch.tensor([0, 1, 5]), ks=(1, 2)).items()}
    {'hit@1': 0.3333, 'ndcg@1': 0.3333, 'hit@2': 0.6667, 'ndcg@2': 0.5436}
    """
    out = {}
    r = ranks.float()
    for k in ks:
        hit = (r < k).float()
        out[f"hit@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float((hit / torch.log2(r + 2)).mean())
    return out


class SASRecTask(pl.LightningModule):
    """Training (§III-E): −Σ_t [log σ(r_{o_t,t}) + log(1 − σ(r_{j,t}))] at every real position t,
    with o_t the next item and j one uniformly sampled item not in the user's window (the paper:
    j ∉ S^u), averaged over real positions. Optimiser default: Adam, lr 1e-3, β2 = 0.98 (the paper).
    Train batches: {"seq": (B, L) inputs, "target": (B, L) next items, 0 where padding}.
    Eval batches: {"seq": (B, L), "target": (B,)[, "candidates": (B, N) holding the target]}; without
    candidates the whole catalogue is ranked. Ties count against the target (a constant model scores
    0, not 1). Metric keys: val/hit@k, val/ndcg@k, test/…, train/loss."""

    def __init__(
        self,
        model: SASRec,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        ks: tuple[int, ...] = (1, 3, 10),
        config: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer or functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.9, 0.98))
        self.ks, self.config = tuple(ks), config  # config: the resolved run config, stored in checkpoints
        self._ranks: dict[str, list[torch.Tensor]] = {"val": [], "test": []}

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.model(seq)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        seq, target = batch["seq"], batch["target"]  # (B, L), (B, L)
        real = target > 0  # (B, L)
        window = torch.cat([seq[:, :1], target], dim=1)  # (B, L+1): s_1..s_n, every item of the window
        neg = sample_negatives(target, window, self.model.num_items)  # (B, L)
        h = self.model(seq)  # (B, L, D)
        emb = self.model.item_embedding
        pos_logit = (h * emb(target)).sum(-1)  # (B, L)
        neg_logit = (h * emb(neg)).sum(-1)  # (B, L)
        loss = F.binary_cross_entropy_with_logits(
            pos_logit, torch.ones_like(pos_logit), reduction="none"
        ) + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none")
        loss = (loss * real).sum() / real.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(seq))
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        seq, target = batch["seq"], batch["target"]  # (B, L), (B,)
        if "candidates" in batch:
            cand = batch["candidates"]  # (B, N)
            is_target = cand == target.unsqueeze(1)  # (B, N)
            assert is_target.any(1).all(), "every candidate list must contain its target"
            scores = self.model.score(seq, cand)  # (B, N)
            col = is_target.float().argmax(1, keepdim=True)  # (B, 1)
        else:
            scores = self.model.predict_all(seq)  # (B, num_items + 1)
            col = target.unsqueeze(1)
        s_t = scores.gather(1, col)  # (B, 1), read from the same matrix so it ties with itself exactly
        self._ranks[stage].append(((scores >= s_t).sum(1) - 1).cpu())  # (B,) 0-based rank

    def _eval_end(self, stage: str) -> None:
        if not self._ranks[stage]:
            return
        ranks = torch.cat(self._ranks[stage])
        self._ranks[stage].clear()
        for name, value in hit_ndcg(ranks, self.ks).items():
            self.log(f"{stage}/{name}", value, prog_bar=name == f"ndcg@{max(self.ks)}")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rlrec_config"] = self.config


def training_tensors(sequences: Sequence[Sequence[int]], max_len: int) -> dict[str, torch.Tensor]:
    """The paper's one training sequence per user: inputs s_1..s_{n-1}, targets s_2..s_n over the
    last max_len + 1 items, left-padded to (U, max_len). Users with fewer than 2 items are skipped.

    >>> {k: v.tolist() for k, v in training_tensors([[1, 2, 3], [4]], 3).items()}
    {'seq': [[0, 1, 2]], 'target': [[0, 2, 3]]}
    """
    windows = [list(s)[-(max_len + 1) :] for s in sequences if len(s) >= 2]
    return {"seq": pad_left([w[:-1] for w in windows], max_len), "target": pad_left([w[1:] for w in windows], max_len)}


def _as_sequences(sequences, num_items: int) -> list[list[int]]:
    """dict user → items, a list of item lists, or a (U, L) 0-padded array → list of id lists."""
    rows = sequences.values() if isinstance(sequences, Mapping) else sequences
    out = []
    for r in rows:
        a = np.asarray(r, dtype=np.int64).reshape(-1)
        a = a[a > 0]  # drop padding
        assert a.size == 0 or a.max() <= num_items, f"item id {a.max()} > num_items {num_items}"
        out.append(a.tolist())
    return out


def fit_sasrec(
    sequences: Mapping[object, Sequence[int]] | Sequence[Sequence[int]] | np.ndarray,
    num_items: int,
    valid: dict[str, torch.Tensor] | None = None,
    model: SASRec | Callable[..., SASRec] | None = None,
    optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    max_epochs: int = 200,
    max_steps: int = -1,
    batch_size: int = 128,
    patience: int | None = None,
    monitor: str = "val/ndcg@10",
    seed: int = 0,
    enable_progress_bar: bool = False,
    trainer: Callable[..., pl.Trainer] | None = None,
) -> SASRec:
    """Train SASRec on user sequences (chronological item ids 1..num_items) and return it in eval mode.

    `model`: a built SASRec, a factory called as `model(num_items=num_items)` (a `_partial_`
    config), or None for SASRec's defaults. `valid`: an eval batch dict (see SASRecTask); then the
    weights with the best `monitor` (one of val/{hit,ndcg}@{1,3,10}) are kept in memory and loaded,
    with early stopping after `patience` epochs without improvement if set. Without `valid`, the
    last weights are returned. `seed` seeds torch (model init, shuffling, negatives, dropout).
    `trainer(max_epochs=, callbacks=, progress=, max_steps=)` builds the Lightning Trainer (a run's
    `Context.trainer`, so the accelerator comes from config); None = a CPU Trainer with no logger.
    Nothing is written to disk."""
    from rlrec.data.ctr import TensorBatches

    torch.manual_seed(seed)
    if model is None:
        model = SASRec(num_items)
    elif not isinstance(model, nn.Module):
        model = model(num_items=num_items)
    assert model.num_items == num_items, f"model has {model.num_items} items, data {num_items}"
    train = training_tensors(_as_sequences(sequences, num_items), model.max_len)
    assert len(train["seq"]), "no user has at least 2 items to train on"

    make = trainer or _plain_trainer
    train = TensorBatches(train, batch_size, shuffle=True, seed=seed)
    valid = TensorBatches(valid, max(batch_size, 1024)) if valid is not None else None
    return launch.run(
        _fit,
        make,
        SASRecTask(model, optimizer),
        train,
        valid,
        monitor,
        patience,
        max_epochs,
        max_steps,
        enable_progress_bar,
        factory=make,
    )


def _fit(make, task, train, valid, monitor, patience, max_epochs, max_steps, progress) -> SASRec:
    """The fit of `fit_sasrec`, in this process or on each launched rank (`rlrec.runtime.launch`)."""
    model = task.model
    callbacks: list[pl.Callback] = []
    keep = KeepBest(monitor) if valid is not None else None
    if keep is not None:
        callbacks.append(keep)
        if patience is not None:
            callbacks.append(pl.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience))
    fitter = make(max_epochs=max_epochs, callbacks=callbacks, progress=progress, max_steps=max_steps)
    fitter.fit(task, train, valid)
    if keep is not None:
        assert keep.state is not None, f"{monitor!r} was never logged; SASRecTask logs val/{{hit,ndcg}}@{{1,3,10}}"
        model.load_state_dict(keep.state)
    return model.eval()


def _plain_trainer(max_epochs: int, callbacks, progress: bool, **kw) -> pl.Trainer:
    """The Trainer of a standalone `fit_sasrec` call (library use, outside a run)."""
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_progress_bar=progress,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


@torch.no_grad()
def rank_candidates(
    model: SASRec, histories: torch.Tensor | np.ndarray, candidates: torch.Tensor | np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """histories (B, L) left-padded item ids, candidates (B, N) → (B, N) int64 column indices into
    `candidates`, highest score first (ties keep candidate order). Ranked ids:
    `np.take_along_axis(candidates, order, 1)`."""
    hist, cand = torch.as_tensor(histories, dtype=torch.long), torch.as_tensor(candidates, dtype=torch.long)
    assert hist.shape[0] == cand.shape[0], f"{hist.shape[0]} histories for {cand.shape[0]} candidate lists"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores = torch.cat(
        [
            model.score(hist[s : s + batch_size].to(device), cand[s : s + batch_size].to(device)).cpu()
            for s in range(0, len(hist), batch_size)
        ]
    )  # (B, N)
    model.train(was_training)
    return np.argsort(-scores.numpy(), axis=1, kind="stable")
