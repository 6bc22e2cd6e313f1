"""One embedding module owns every field lookup, behaviour-history embeddings and the
knowledge field(s), so backbones only see tensors of shape (B, F, D) / (B, L, Fi, D)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rlrec.data.features import FeatureSpec


class WeightedBag(torch.autograd.Function):
    """out[r] = Σ_l w[r, l] · table[idx[r, l]] for idx, w (R, L): embedding_bag's weighted-sum
    forward (its fast path; mean mode with a padding_idx leaves it and is about 15× slower on
    CPU), and a backward that scatters g through one sparse (rows × R) matrix product instead of
    sorting the R·L indices. `w` gets no gradient."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx, w)
        ctx.rows = table.shape[0]
        return F.embedding_bag(idx, table, mode="sum", per_sample_weights=w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        idx, w = ctx.saved_tensors
        R, L = idx.shape
        bag = torch.arange(R, device=idx.device).repeat_interleave(L)
        scatter = torch.sparse_coo_tensor(
            torch.stack([idx.reshape(-1), bag]), w.reshape(-1), (ctx.rows, R), check_invariants=False
        )
        return torch.sparse.mm(scatter, g), None, None


class GatherRows(torch.autograd.Function):
    """table[idx] (idx of any shape → (*idx.shape, D)) with an `index_add_` backward: on CPU it
    beats the embedding backward's sort of the indices."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = table.shape[0]
        return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        (idx,) = ctx.saved_tensors
        flat = idx.reshape(-1)
        return g.new_zeros(ctx.rows, g.shape[-1]).index_add_(0, flat, g.reshape(len(flat), -1)), None


def _scatter_backward(table: torch.Tensor) -> bool:
    """Whether a lookup into `table` takes the Functions above: training on CPU (GPU keeps torch's
    kernels, and without a gradient there is no backward to replace)."""
    return table.device.type == "cpu" and torch.is_grad_enabled() and table.requires_grad


def weighted_bag(table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(R, D) = Σ_l w[r, l] · table[idx[r, l]]; idx, w (R, L)."""
    if _scatter_backward(table):
        return WeightedBag.apply(table, idx, w)
    return F.embedding_bag(idx, table, mode="sum", per_sample_weights=w)


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx]: (*idx.shape, D)."""
    if _scatter_backward(table):
        return GatherRows.apply(table, idx)
    return F.embedding(idx, table)


class FeatureEmbedding(nn.Module):
    """Field embeddings from catalogue indices.

    One table holds every field's rows (offsets per field), so a whole batch is one lookup.
    With `first_order=True` the table has one more column: each field value's first-order weight
    w (FM / LR's linear term), looked up with the same indices as its embedding, so models with a
    linear term pay for one lookup and one embedding backward, not two (`lookup`).
    Knowledge: per-user / per-item dense vectors (buffers `user_knowledge`, `item_knowledge`,
    set with `set_knowledge`, or given per sample in the batch) go through `adapter` into K more
    D-dim fields. With `features.knowledge_dims == ()` there is no adapter and no extra field:
    exactly the base model.
    """

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        adapter: Callable[..., nn.Module] | None = None,
        init_std: float = 1e-4,
        first_order: bool = False,
    ):
        """`adapter`: a factory `(in_dims, embed_dim) -> nn.Module` (a `_partial_` config), built
        only when the FeatureSpec carries knowledge dims."""
        super().__init__()
        self.features, self.embed_dim = features, embed_dim
        vocab = torch.tensor([f.vocab_size for f in features.fields])
        offsets = torch.cumsum(vocab, 0) - vocab
        n_user = len(features.user_fields)
        assert [f.side for f in features.fields] == ["user"] * n_user + ["item"] * len(features.item_fields), (
            "FeatureSpec fields must list user fields first, then item fields"
        )
        self.register_buffer("user_table", torch.as_tensor(features.user_table) + offsets[:n_user], persistent=False)
        self.register_buffer("item_table", torch.as_tensor(features.item_table) + offsets[n_user:], persistent=False)
        self.first_order = first_order
        self.embedding = nn.Embedding(int(vocab.sum()), embed_dim + int(first_order))
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.num_user_fields, self.num_item_fields = n_user, len(features.item_fields)

        dims = tuple(d for d in features.knowledge_dims if d)
        if dims:
            assert adapter is not None, "features.knowledge_dims are set but no knowledge adapter was given"
            self.adapter = adapter(in_dims=tuple(features.knowledge_dims), embed_dim=embed_dim)
            self.num_knowledge_fields = self.adapter.num_fields
            kd = list(features.knowledge_dims) + [0, 0]
            self.register_buffer("user_knowledge", torch.zeros(features.num_users + 1, kd[0]) if kd[0] else None)
            self.register_buffer("item_knowledge", torch.zeros(features.num_items + 1, kd[1]) if kd[1] else None)
        else:
            self.adapter = None
            self.num_knowledge_fields = 0

    def num_fields(self, pool_history: bool = False) -> int:
        """Fields `forward` returns: user + item (+ pooled history per item field) + knowledge."""
        return self.num_user_fields + self.num_item_fields * (2 if pool_history else 1) + self.num_knowledge_fields

    @torch.no_grad()
    def set_knowledge(self, user: torch.Tensor | None = None, item: torch.Tensor | None = None) -> None:
        """Load knowledge vectors: user (num_users + 1, Du), item (num_items + 1, Di); row 0 = padding."""
        for name, value in (("user_knowledge", user), ("item_knowledge", item)):
            if value is None:
                continue
            buf = getattr(self, name, None)
            assert buf is not None, f"this model has no {name} (features.knowledge_dims={self.features.knowledge_dims})"
            assert value.shape == buf.shape, f"{name}: expected {tuple(buf.shape)}, got {tuple(value.shape)}"
            buf.copy_(value)

    def knowledge_fields(self, batch: dict) -> torch.Tensor:
        """(B, K, D) adapted knowledge fields."""
        vectors = []
        if getattr(self, "user_knowledge", None) is not None:
            vectors.append(batch["user_knowledge"] if "user_knowledge" in batch else self.user_knowledge[batch["user"]])
        if getattr(self, "item_knowledge", None) is not None:
            vectors.append(batch["item_knowledge"] if "item_knowledge" in batch else self.item_knowledge[batch["item"]])
        return self.adapter(vectors)

    def list_knowledge_fields(self, batch: dict) -> torch.Tensor:
        """(B·N, K, D) adapted knowledge fields of every candidate of B lists of N: the user's
        vector goes through the adapter once per list and is shared by its N candidates (not N
        times: the adapter was most of a small re-ranker's step)."""
        B, N = batch["items"].shape
        vectors, per_list = [], []
        if getattr(self, "user_knowledge", None) is not None:
            u = batch["user_knowledge"] if "user_knowledge" in batch else self.user_knowledge[batch["user"]]
            vectors.append(u)  # (B, Du)
            per_list.append(True)
        if getattr(self, "item_knowledge", None) is not None:
            i = batch["item_knowledge"].reshape(B * N, -1) if "item_knowledge" in batch else None
            vectors.append(self.item_knowledge[batch["items"].reshape(-1)] if i is None else i)  # (B·N, Di)
            per_list.append(False)
        towers = self.adapter.towers(vectors)
        return torch.stack([t.repeat_interleave(N, dim=0) if p else t for t, p in zip(towers, per_list)], dim=1)

    def item_rows(self) -> torch.Tensor:
        """(num_items + 1, Fi·D): every catalogue item's field embeddings, flattened. Looking the
        history up in this small per-step table (instead of L·Fi rows of the big one per sample)
        cuts the embedding backward's index sort by about Fi× — it dominated small models."""
        return self.rows(self.item_table).flatten(1)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """(*idx.shape, D') rows of the field table (idx already offset per field)."""
        return gather_rows(self.embedding.weight, idx)

    def small_catalogue(self, hist: torch.Tensor) -> bool:
        """Whether the per-step item table (`item_rows`) is cheaper than per-sample lookups: it
        costs O(num_items) per step, so only when the catalogue is no larger than the batch's
        history (B·L positions); a large catalogue falls back to looking up L·Fi rows per sample."""
        return len(self.item_table) <= hist.numel()

    def history(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Behaviour history: (B, L, Fi, D) item-field embeddings and (B, L) bool mask of real items."""
        hist = batch["history"]  # (B, L) catalogue indices, 0 = padding
        if self.small_catalogue(hist):
            h = gather_rows(self.item_rows(), hist).view(*hist.shape, self.num_item_fields, -1)
        else:
            h = self.rows(self.item_table[hist])  # (B, L, Fi, D')
        return (h[..., : self.embed_dim] if self.first_order else h), hist > 0

    def pooled_history(self, hist: torch.Tensor) -> torch.Tensor:
        """(B, Fi, D') mean of the real history items' field embeddings (padding id 0 excluded; an
        empty history gives 0)."""
        B, L = hist.shape
        real = (hist > 0).to(self.embedding.weight.dtype)
        weights = real / real.sum(1, keepdim=True).clamp_min(1)  # (B, L): 1/len on real items
        if self.small_catalogue(hist):
            return weighted_bag(self.item_rows(), hist, weights).view(B, self.num_item_fields, -1)
        idx = self.item_table[hist].transpose(1, 2).reshape(B * self.num_item_fields, L)  # (B·Fi, L)
        w = weights.repeat_interleave(self.num_item_fields, dim=0)  # (B·Fi, L)
        return weighted_bag(self.embedding.weight, idx, w).view(B, self.num_item_fields, -1)

    def lookup(
        self, batch: dict, pool_history: bool = False, knowledge: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, F, D) fields as `forward`, and with `first_order=True` the (B,) first-order term
        Σ_f w_f over the user, target-item and (pooled) history fields (None otherwise; knowledge
        fields are dense vectors, not field values, so they have no first-order weight).
        `knowledge=False` leaves the knowledge fields out (the caller adds them)."""
        idx = torch.cat([self.user_table[batch["user"]], self.item_table[batch["item"]]], dim=1)  # (B, Fu + Fi)
        parts = [self.rows(idx)]  # (B, Fu + Fi, D')  D' = D (+ 1 with first_order)
        if pool_history:
            parts.append(self.pooled_history(batch["history"]))  # (B, Fi, D')
        linear = None
        if self.first_order:
            values = torch.cat(parts, dim=1)  # (B, F', D + 1)
            linear = values[..., -1].sum(1)  # (B,)
            parts = [values[..., :-1]]
        if self.adapter is not None and knowledge:
            parts.append(self.knowledge_fields(batch))
        return (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]), linear

    def forward(self, batch: dict, pool_history: bool = False) -> torch.Tensor:
        """(B, F, D): user fields, target-item fields, [mean-pooled history per item field], [knowledge]."""
        return self.lookup(batch, pool_history)[0]

    def list_fields(self, batch: dict) -> torch.Tensor:
        """Re-rank lists: batch {user (B,), items (B, N)[, user_knowledge (B, Du), item_knowledge (B, N, Di)]}
        → (B, N, F, D): every candidate's user fields, item fields and knowledge fields
        (the user's knowledge is shared by all candidates of its list, as in KAR)."""
        B, N = batch["items"].shape
        flat = {"user": batch["user"].repeat_interleave(N), "item": batch["items"].reshape(-1)}
        fields = self.lookup(flat, knowledge=False)[0]  # (B·N, Fu + Fi, D)
        if self.adapter is not None:
            fields = torch.cat([fields, self.list_knowledge_fields(batch)], dim=1)
        return fields.reshape(B, N, -1, self.embed_dim)  # (B, N, F, D)
