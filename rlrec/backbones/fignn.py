"""FiGNN — Feature Interaction Graph Neural Network (Li et al., CIKM 2019)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.functional import leaky_relu

from rlrec.data.features import FeatureSpec
from rlrec.layers.attention import FieldSelfAttention
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.layers.mlp import MLP


class FiGNN(nn.Module):
    """Field embeddings (history pooled into fields) → multi-head self-attention layer (§3.3) gives
    the initial node states H¹ of the fully connected feature graph (one node per field) → gated
    graph neural network for `num_layers` steps (§3.4) → attentional scoring layer (§3.5) → logit.

    Graph, per step t (edge weights once, from H¹; the paper computes them from the node embeddings):
        A[i, j] = softmax_{j ≠ i}(LeakyReLU(W_w [h_i¹ ‖ h_j¹])),  A[i, i] = 0           (eqs. 4–5)
        a_i^t = W_in^i Σ_j A[i, j] W_out^j h_j^{t−1} + b_p        (per-node edge transformation)
        h_i^t = GRU(h_i^{t−1}, a_i^t) + h_i¹                        (state update + residual, eqs. 8–10)
    Scoring: ŷ_i = MLP_1(h_i^T), a_i = MLP_2(h_i^T), logit = Σ_i a_i ŷ_i (eqs. 11–12; the sigmoid is
    left to the loss). Knowledge fields (if any) are nodes of the graph like every other field.

    `self_attention=False` drops the §3.3 layer: the node states H¹ are the D-wide field embeddings
    themselves (FuxiCTR's FiGNN, the BARS benchmark's)."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        num_heads: int = 2,
        head_dim: int = 16,
        num_layers: int = 3,
        self_attention: bool = True,
        residual: bool = True,
        leaky_slope: float = 0.2,
        score_dims: tuple[int, ...] = (),
        adapter: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        self.num_layers, self.residual, self.leaky_slope = num_layers, residual, leaky_slope
        F = self.embedding.num_fields(pool_history=True)
        d = num_heads * head_dim if self_attention else embed_dim
        # multi-head self-attention layer (§3.3): (B, F, D) → (B, F, d)
        self.self_attention = FieldSelfAttention(embed_dim, head_dim, num_heads) if self_attention else nn.Identity()
        self.edge_attention = nn.Linear(2 * d, 1, bias=False)  # W_w, eq. 4
        self.w_out = nn.Parameter(torch.empty(F, d, d))  # W_out^j, one per (source) node
        self.w_in = nn.Parameter(torch.empty(F, d, d))  # W_in^i, one per (target) node
        for w in (*self.w_out, *self.w_in):
            nn.init.xavier_uniform_(w)
        self.bias = nn.Parameter(torch.zeros(d))  # b_p
        self.gru = nn.GRUCell(d, d)  # shared by every node
        self.score = MLP(d, score_dims, 1)  # MLP_1, eq. 11
        self.weight = MLP(d, score_dims, 1)  # MLP_2, eq. 12

    def edge_weights(self, h: torch.Tensor) -> torch.Tensor:
        """Attentional adjacency (eqs. 4–5): h (B, F, d) → A (B, F, F), rows sum to 1 over j ≠ i."""
        w_src, w_dst = self.edge_attention.weight.view(2, -1)  # W_w = [w_i ‖ w_j], each (d,)
        logits = (h @ w_src).unsqueeze(2) + (h @ w_dst).unsqueeze(1)  # (B, F, F): W_w [h_i ‖ h_j]
        logits = leaky_relu(logits, self.leaky_slope)
        eye = torch.eye(h.shape[1], dtype=torch.bool, device=h.device)
        return logits.masked_fill(eye, float("-inf")).softmax(-1)  # (B, F, F), A[i, i] = 0

    def forward(self, batch: dict) -> torch.Tensor:
        fields = self.embedding(batch, pool_history=True)  # (B, F, D)
        B, F, _ = fields.shape
        h1 = self.self_attention(fields)  # (B, F, d) initial node states H¹
        A = self.edge_weights(h1)  # (B, F, F)
        h = h1
        for _ in range(self.num_layers):
            out = torch.einsum("bjd,jed->bje", h, self.w_out)  # (B, F, d) W_out^j h_j
            agg = torch.einsum("bfd,fed->bfe", A @ out, self.w_in) + self.bias  # (B, F, d) a_i^t
            h = self.gru(agg.reshape(B * F, -1), h.reshape(B * F, -1)).view(B, F, -1)  # (B, F, d)
            if self.residual:
                h = h + h1
        return (self.weight(h) * self.score(h)).sum(dim=(1, 2))  # (B,) Σ_i a_i ŷ_i
