"""MLP block shared by every model."""

from __future__ import annotations

import torch
from torch import nn


def activation(name: str, dim: int | None = None) -> nn.Module:
    name = name.lower()
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU()
    if name == "dice":
        assert dim is not None, "Dice needs the layer width"
        return Dice(dim)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r} (relu, prelu, dice, tanh, sigmoid, gelu)")


class Dice(nn.Module):
    """DIN's data-adaptive activation (Zhou et al. 2018, eq. 9): p(s)·s + (1 − p(s))·α·s with
    p(s) = sigmoid(BN(s))."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # BN over every leading position, e.g. (B*L, D)
        p = torch.sigmoid(self.bn(flat)).reshape(shape)
        return p * x + (1 - p) * self.alpha * x


class MLP(nn.Sequential):
    """Linear → [BatchNorm] → activation → [Dropout] per hidden width, then an optional output layer."""

    def __init__(
        self,
        in_dim: int,
        dims: tuple[int, ...] = (200, 80),
        out_dim: int | None = None,
        dropout: float = 0.0,
        activation_fn: str = "relu",
        batch_norm: bool = False,
    ):
        layers: list[nn.Module] = []
        d = in_dim
        for h in dims:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(activation_fn, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(isinstance(m, nn.BatchNorm1d) for m in self) and x.dim() > 2:
            shape = x.shape
            return super().forward(x.reshape(-1, shape[-1])).reshape(*shape[:-1], self.out_dim)
        return super().forward(x)
