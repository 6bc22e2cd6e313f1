"""DIN — Deep Interest Network (Zhou et al., KDD 2018)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.attention import TargetAttention
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.layers.mlp import MLP


class DIN(nn.Module):
    """Target attention over the behaviour sequence (eq. 3) gives the user interest for the
    candidate item; [all field embeddings, interest] → MLP (200, 80, Dice) → logit.
    Knowledge fields (if any) are among the field embeddings."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (200, 80),
        attention_dims: tuple[int, ...] = (80, 40),
        activation: str = "dice",
        attention_softmax: bool = False,
        dropout: float = 0.0,
        batch_norm: bool = False,
        adapter: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        self.item_dim = embed_dim * self.embedding.num_item_fields
        self.attention = TargetAttention(self.item_dim, attention_dims, activation, attention_softmax)
        in_dim = self.embedding.num_fields() * embed_dim + self.item_dim
        self.mlp = MLP(in_dim, mlp_dims, 1, dropout, activation, batch_norm)

    def forward(self, batch: dict) -> torch.Tensor:
        fields = self.embedding(batch)  # (B, F, D)
        hist, mask = self.embedding.history(batch)  # (B, L, Fi, D), (B, L)
        B, L = mask.shape
        e = self.embedding
        target = fields[:, e.num_user_fields : e.num_user_fields + e.num_item_fields].reshape(B, -1)  # (B, Fi·D)
        interest = self.attention(target, hist.reshape(B, L, -1), mask)  # (B, Fi·D)
        return self.mlp(torch.cat([fields.reshape(B, -1), interest], dim=1)).squeeze(-1)  # (B,)
