"""Adapters that map dense knowledge vectors (user / item text embeddings) into field embeddings
(`towers(vectors)`: one field per vector, the vectors may differ in rows; `forward` stacks them),
so a backbone's own interaction layers see knowledge as just more fields."""

from __future__ import annotations

import torch
from torch import nn

from rlrec.layers.mlp import MLP


class MLPConnector(nn.Module):
    """TrackRec's connector: one MLP per knowledge vector, each → one D-dim field.
    Input: list of (B, Dk_j); output (B, K, D).

    `gate=True` multiplies each field by a learned scalar that starts at 0 (ReZero, Bachlechner et al.
    2020): the backbone starts as if it had no knowledge field, and the field opens only as far as
    the training loss pays for it, instead of a dense per-entity vector being fitted from the first
    step."""

    def __init__(
        self,
        in_dims: tuple[int, ...],
        embed_dim: int,
        hidden: tuple[int, ...] = (128,),
        dropout: float = 0.0,
        gate: bool = False,
    ):
        super().__init__()
        self.nets = nn.ModuleList(MLP(d, hidden, embed_dim, dropout) for d in in_dims if d)
        self.num_fields = len(self.nets)
        self.gates = nn.Parameter(torch.zeros(self.num_fields)) if gate else None

    def towers(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (B_j, D) field per knowledge vector (B_j, Dk_j); the towers may differ in rows."""
        assert len(vectors) == len(self.nets), f"expected {len(self.nets)} knowledge vectors, got {len(vectors)}"
        out = [net(v) for net, v in zip(self.nets, vectors)]
        if self.gates is not None:
            out = [g * f for g, f in zip(self.gates, out)]
        return out

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(self.towers(vectors), dim=1)  # (B, K, D)


class HybridExpertAdaptor(nn.Module):
    """KAR's hybrid-expert adaptor (Xi et al. 2023, §3.3): each knowledge vector is a "tower";
    `num_shared` experts are applied to every tower and `num_specific` experts to one tower
    only; a per-tower softmax gate mixes that tower's shared + specific expert outputs:
        r_j = Σ_e g_j(x_j)_e · expert_e(x_j).
    Each tower's output is one D-dim field. Input: list of (B, Dk) (equal dims); output (B, K, D)."""

    def __init__(
        self,
        in_dims: tuple[int, ...],
        embed_dim: int,
        num_shared: int = 2,
        num_specific: int = 5,
        hidden: tuple[int, ...] = (128,),
        dropout: float = 0.0,
    ):
        super().__init__()
        dims = [d for d in in_dims if d]
        assert len(set(dims)) == 1, f"HybridExpertAdaptor needs equal knowledge dims, got {dims}"
        d = dims[0]
        self.num_fields = len(dims)
        self.shared = nn.ModuleList(MLP(d, hidden, embed_dim, dropout) for _ in range(num_shared))
        self.specific = nn.ModuleList(
            nn.ModuleList(MLP(d, hidden, embed_dim, dropout) for _ in range(num_specific)) for _ in dims
        )
        self.gates = nn.ModuleList(nn.Linear(d, num_shared + num_specific) for _ in dims)

    def towers(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (B_j, D) field per knowledge vector (B_j, Dk); the towers may differ in rows."""
        assert len(vectors) == self.num_fields, f"expected {self.num_fields} knowledge vectors, got {len(vectors)}"
        out = []
        for j, x in enumerate(vectors):
            experts = torch.stack([e(x) for e in self.shared] + [e(x) for e in self.specific[j]], dim=1)  # (B, E, D)
            gate = self.gates[j](x).softmax(-1).unsqueeze(-1)  # (B, E, 1)
            out.append((gate * experts).sum(1))  # (B, D)
        return out

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(self.towers(vectors), dim=1)  # (B, K, D)
