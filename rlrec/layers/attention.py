"""Attention blocks: DIN's target attention and multi-head self-attention over fields."""

from __future__ import annotations

import torch
from torch import nn

from rlrec.layers.mlp import MLP


class TargetAttention(nn.Module):
    """DIN's local activation unit (Zhou et al. 2018, eq. 3): weight_j = a([q, k_j, q − k_j, q ⊙ k_j]),
    pooled interest = Σ_j weight_j · k_j over real (unmasked) behaviours. No softmax (the paper keeps
    the intensity of interest), unless `softmax=True`."""

    def __init__(
        self, dim: int, hidden: tuple[int, ...] = (80, 40), activation_fn: str = "dice", softmax: bool = False
    ):
        super().__init__()
        self.unit = MLP(4 * dim, hidden, 1, activation_fn=activation_fn)
        self.softmax = softmax

    def scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query (B, D), keys (B, L, D), mask (B, L) → (B, L) weights, 0 on padding."""
        q = query.unsqueeze(1).expand_as(keys)  # (B, L, D)
        w = self.unit(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # (B, L)
        if self.softmax:
            return w.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
        return w * mask.to(w.dtype)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bl,bld->bd", self.scores(query, keys, mask), keys)  # (B, D)


class FieldSelfAttention(nn.Module):
    """AutoInt's interacting layer (Song et al. 2019, eqs. 5–8): multi-head scaled dot-product
    attention over fields, with a residual projection and ReLU. (B, F, D_in) → (B, F, H·d)."""

    def __init__(
        self, in_dim: int, head_dim: int = 16, num_heads: int = 2, residual: bool = True, scale: bool = True
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, scale
        out = head_dim * num_heads
        self.qkv = nn.Linear(in_dim, 3 * out, bias=False)
        self.residual = nn.Linear(in_dim, out, bias=False) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, F, _ = x.shape
        q, k, v = (
            self.qkv(x).view(B, F, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # each (B, H, F, d)
        # softmax(q kᵀ [/ √d]) v in one fused kernel (eq. 5–6; AutoInt's paper does not scale)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, scale=None if self.scale else 1.0
        )  # (B, H, F, d)
        out = out.transpose(1, 2).reshape(B, F, -1)  # (B, F, H·d)
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out)
