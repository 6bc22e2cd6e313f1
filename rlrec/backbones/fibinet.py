"""FiBiNet — Feature Importance and Bilinear feature Interaction (Huang et al., RecSys 2019)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.layers.interaction import BilinearInteraction, SqueezeExcitation, bilinear_combination
from rlrec.layers.mlp import MLP


class FiBiNet(nn.Module):
    """SENET re-weights the field embeddings E into V (squeeze / excitation / re-weight); the
    bilinear-interaction layer turns E into p and V into q (p_ij = (e_i · W) ⊙ e_j, one layer each,
    type `bilinear_type`); the combination layer concatenates [p, q] → DNN → y_d; the output layer
    is ŷ = σ(w_0 + Σ_i w_i x_i + y_d), so the returned logit adds the first-order term
    (one scalar per field value, a column of the embedding table; the DNN's output bias plays w_0;
    `first_order: false` drops it). Knowledge fields take part in SENET and both bilinear
    interactions."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (400, 400, 400),
        reduction_ratio: float = 3,
        bilinear_type: str = "field_interaction",
        excitation_activation: str = "relu",
        first_order: bool = True,
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        adapter: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter, first_order=first_order)
        num_fields = self.embedding.num_fields(pool_history=True)
        self.senet = SqueezeExcitation(num_fields, reduction_ratio, excitation_activation)
        self.bilinear_e = BilinearInteraction(num_fields, embed_dim, bilinear_type)
        self.bilinear_v = BilinearInteraction(num_fields, embed_dim, bilinear_type)
        in_dim = num_fields * (num_fields - 1) * embed_dim  # 2 · F(F−1)/2 pairs of D
        self.dnn = MLP(in_dim, tuple(mlp_dims), 1, dropout, activation, batch_norm)

    def forward(self, batch: dict) -> torch.Tensor:
        e, linear = self.embedding.lookup(batch, pool_history=True)  # (B, F, D), (B,) or None
        v = self.senet(e)  # (B, F, D)
        pq = bilinear_combination([self.bilinear_e, self.bilinear_v], [e, v])  # (B, 2P·D): [p, q]
        logit = self.dnn(pq).squeeze(-1)  # (B,)
        if linear is not None:
            logit = logit + linear  # (B,)
        return logit  # (B,)
