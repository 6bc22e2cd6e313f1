"""SetRank (Pang et al., SIGIR 2020)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.rerankers import InitialRanking, candidate_inputs, masked_scores, num_inputs


class SetRank(nn.Module):
    """Stacked multi-head self-attention blocks (MSAB, eq. 8–10: MAB(X, X) with residual + LayerNorm
    and a row-wise FFN) over the candidate set, with NO position encoding, so the scores are
    permutation-equivariant: permuting the input list permutes the scores the same way. A row-wise
    linear layer gives one score per document (eq. 12)."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        model_dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        adapter: Callable[..., nn.Module] | None = None,
        initial_input: bool = False,
        personal_vector: bool = False,
        personal_dim: int = 0,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        self.initial = InitialRanking(embed_dim) if initial_input else None
        self.personal_dim = personal_dim if initial_input and personal_vector else 0
        self.proj = nn.Linear(num_inputs(self.embedding, initial_input, self.personal_dim), model_dim)
        layer = nn.TransformerEncoderLayer(model_dim, num_heads, ffn_dim, dropout, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out = nn.Linear(model_dim, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["mask"]  # (B, N)
        B, N = mask.shape
        x = self.proj(candidate_inputs(self.embedding, self.initial, batch, self.personal_dim))  # (B, N, M)
        h = self.blocks(x, src_key_padding_mask=~mask)  # (B, N, M)
        return masked_scores(self.out(h).squeeze(-1), mask)
