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
        # The combination layer w·[x_L; h_L] + b (DCN eq. 5) split by its input: `out` holds the
        # cross part w_c (and b when there is no deep part); the deep part's w_d and b are the
        # deep MLP's output layer, so the MLP runs as one fused stack down to the logit.
        self.deep = MLP(in_dim, tuple(mlp_dims), 1, dropout, activation, batch_norm) if len(mlp_dims) else None
        self.out = nn.Linear(in_dim, 1, bias=self.deep is None)
        if self.deep is not None:  # the init of one Linear over the concatenation [x_L; h_L]
            bound = (in_dim + mlp_dims[-1]) ** -0.5
            with torch.no_grad():
                for p in (self.out.weight, self.deep[-1].weight, self.deep[-1].bias):
                    p.uniform_(-bound, bound)

    def forward(self, batch: dict) -> torch.Tensor:
        x0 = self.embedding(batch, pool_history=True).flatten(1)  # (B, F, D) → (B, F·D)
        cross = self.cross(x0)  # (B, F·D)
        if self.deep is None:
            return self.out(cross).squeeze(-1)  # (B,)
        h = self.deep(x0).view(-1).to(cross.dtype)  # bf16 under autocast; addmv wants one dtype
        return torch.addmv(h, cross, self.out.weight[0])  # h_L·w_d + b + x_L·w_c
