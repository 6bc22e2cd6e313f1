"""AutoInt (Song et al., CIKM 2019) and AutoInt+ (with a parallel DNN)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.attention import FieldSelfAttention, FieldSelfAttentionStack
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.layers.mlp import MLP


class AutoInt(nn.Module):
    """`num_layers` stacked interacting layers (multi-head self-attention over the fields with a
    residual connection, eqs. 5–8) → flatten → ŷ = wᵀ(e_1^Res ⊕ … ⊕ e_F^Res) + b (eq. 9, logit).
    With `mlp_dims` non-empty this is AutoInt+: a DNN over the flattened field embeddings runs in
    parallel and its logit is added. Knowledge fields attend and are attended to like any field."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        num_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 16,
        residual: bool = True,
        scale: bool = False,
        mlp_dims: tuple[int, ...] = (),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        adapter: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        num_fields = self.embedding.num_fields(pool_history=True)
        dims = [embed_dim] + [num_heads * head_dim] * num_layers
        self.attention = FieldSelfAttentionStack(
            *(FieldSelfAttention(d, head_dim, num_heads, residual, scale) for d in dims[:-1])
        )
        self.out = nn.Linear(num_fields * dims[-1], 1)
        in_dim = num_fields * embed_dim
        self.dnn = MLP(in_dim, tuple(mlp_dims), 1, dropout, activation, batch_norm) if len(mlp_dims) else None

    def forward(self, batch: dict) -> torch.Tensor:
        fields = self.embedding(batch, pool_history=True)  # (B, F, D)
        interacted = self.attention(fields)  # (B, F, H·d)
        logit = self.out(interacted.reshape(len(fields), -1)).squeeze(-1)  # (B, F·H·d) → (B,)
        if self.dnn is not None:
            logit = logit + self.dnn(fields.flatten(1)).squeeze(-1)  # (B, F·D) → (B,)
        return logit  # (B,)
