"""DCN — Deep & Cross Network (Wang et al., ADKDD 2017) and DCN-V2 (Wang et al., WWW 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.layers.interaction import CrossNet
from rlrec.layers.mlp import MLP


class DCN(nn.Module):
    """x_0 = the stacked field embeddings (DCN eq. 2); a cross network of `num_layers` cross layers
    (v1: x_{l+1} = x_0 x_lᵀ w_l + b_l + x_l, DCN eq. 3; v2: x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,
    DCN-V2 eq. 1) runs in parallel with a deep MLP on x_0 (DCN eq. 4); the combination layer
    concatenates both outputs → linear logit (DCN eq. 5, DCN-V2's parallel structure).
    `mlp_dims: []` drops the deep part (cross network only). Knowledge fields are part of x_0."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (400, 400, 400),
        num_layers: int = 3,
        version: str = "v1",
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        adapter: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        in_dim = self.embedding.num_fields(pool_history=True) * embed_dim
        self.cross = CrossNet(in_dim, num_layers, version)
        self.deep = (
            MLP(in_dim, tuple(mlp_dims), None, dropout, activation, batch_norm) if len(mlp_dims) else None
        )
        self.out = nn.Linear(in_dim + (self.deep.out_dim if self.deep is not None else 0), 1)

    def forward(self, batch: dict) -> torch.Tensor:
        x0 = self.embedding(batch, pool_history=True).flatten(1)  # (B, F, D) → (B, F·D)
        cross = self.cross(x0)  # (B, F·D)
        # the combination layer w·[x_L; h_L] + b as one matrix-vector product per part, without
        # materialising the concatenation (same weights as `self.out`)
        w = self.out.weight[0]  # (F·D + H_last,)
        logit = torch.addmv(self.out.bias, cross, w[: cross.shape[1]])  # (B,)
        if self.deep is not None:
            logit = logit.addmv(self.deep(x0), w[cross.shape[1] :])  # + h_L · w_deep
        return logit  # (B,)
