"""DeepFM (Guo et al., IJCAI 2017)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.layers.interaction import FactorizationMachine
from rlrec.layers.mlp import MLP


class DeepFM(nn.Module):
    """ŷ = sigmoid(y_FM + y_DNN) (eq. 1; the model returns the logit y_FM + y_DNN).

    y_FM = <w, x> + Σ_{i<j} <V_i, V_j> (eq. 2): the first-order term is a learned scalar per field
    value (the paper's w: one more column of the embedding table, looked up with the same indices,
    `FeatureEmbedding(first_order=True)`; the DNN's output bias plays w_0), the second-order term
    is the FM identity over the field embeddings. y_DNN: MLP over the flattened field embeddings,
    which are shared with the FM part (eqs. 3–5). Fields: user, item, mean-pooled history per item
    field, knowledge (knowledge fields take part in the FM and DNN parts; they have no first-order
    weight)."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        adapter: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter, first_order=True)
        self.fm = FactorizationMachine()
        in_dim = self.embedding.num_fields(pool_history=True) * embed_dim
        self.dnn = MLP(in_dim, tuple(mlp_dims), 1, dropout, activation, batch_norm)

    def forward(self, batch: dict) -> torch.Tensor:
        fields, linear = self.embedding.lookup(batch, pool_history=True)  # (B, F, D), (B,)
        y_fm = linear + self.fm(fields)  # (B,)
        y_dnn = self.dnn(fields.flatten(1)).squeeze(-1)  # (B, F·D) → (B,)
        return y_fm + y_dnn  # (B,)
