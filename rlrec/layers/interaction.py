"""Feature-interaction blocks shared by the CTR backbones: FM second-order term, cross network
(DCN / DCN-V2), squeeze-excitation and bilinear interaction (FiBiNet). The first-order term is a
column of the embedding table (`FeatureEmbedding(first_order=True)`, `.lookup`)."""

from __future__ import annotations

import torch
from torch import nn

from rlrec.layers.mlp import activation


class FactorizationMachine(nn.Module):
    """FM second-order term (Rendle 2010, eq. 1 via the O(FD) identity of Lemma 3.1):
    Σ_{i<j} <e_i, e_j> = ½ Σ_d [(Σ_f e_{f,d})² − Σ_f e_{f,d}²]. (B, F, D) → (B,)."""

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        square_of_sum = fields.sum(dim=1).pow(2)  # (B, D)
        sum_of_square = fields.pow(2).sum(dim=1)  # (B, D)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)  # (B,)


class CrossNet(nn.Module):
    """Cross network. v1 (Wang et al. 2017, eq. 3): x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l with a
    weight *vector* w_l; v2 (DCN-V2, Wang et al. 2021, eq. 1): x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l
    with a full matrix W_l. (B, d) → (B, d)."""

    def __init__(self, in_dim: int, num_layers: int = 3, version: str = "v1"):
        super().__init__()
        assert version in ("v1", "v2"), f"CrossNet version must be 'v1' or 'v2', got {version!r}"
        self.version = version
        if version == "v1":
            self.w = nn.ModuleList(nn.Linear(in_dim, 1, bias=False) for _ in range(num_layers))
            self.b = nn.ParameterList(nn.Parameter(torch.zeros(in_dim)) for _ in range(num_layers))
        else:
            self.w = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for i, w in enumerate(self.w):
            if self.version == "v1":
                x = x0 * w(x) + self.b[i] + x  # (B, d) · (B, 1) scalar per sample
            else:
                x = x0 * w(x) + x  # (B, d)
        return x


class SqueezeExcitation(nn.Module):
    """SENET layer (FiBiNet, Huang et al. 2019, SENET-layer equations): squeeze z_f = mean_d(e_f)
    (mean pooling per field), excitation A = σ₂(W₂ σ₁(W₁ z)) with W₁: F → F/r, W₂: F/r → F (no bias,
    ReLU both as in the paper), re-weight v_f = a_f · e_f. (B, F, D) → (B, F, D)."""

    def __init__(self, num_fields: int, reduction_ratio: float = 3, activation_fn: str = "relu"):
        super().__init__()
        reduced = max(1, int(num_fields / reduction_ratio))
        self.excitation = nn.Sequential(
            nn.Linear(num_fields, reduced, bias=False),
            activation(activation_fn, reduced),
            nn.Linear(reduced, num_fields, bias=False),
            activation(activation_fn, num_fields),
        )

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        z = fields.mean(dim=-1)  # (B, F)
        a = self.excitation(z)  # (B, F)
        return fields * a.unsqueeze(-1)  # (B, F, D)


class BilinearInteraction(nn.Module):
    """FiBiNet's bilinear interaction (Huang et al. 2019, Bilinear-Interaction-layer equations):
    p_ij = (v_i · W) ⊙ v_j for every field pair i < j, with W shared by all fields ("field_all"),
    one W_i per field ("field_each") or one W_ij per pair ("field_interaction").
    (B, F, D) → (B, P, D), P = F(F−1)/2."""

    TYPES = ("field_all", "field_each", "field_interaction")

    def __init__(self, num_fields: int, embed_dim: int, bilinear_type: str = "field_interaction"):
        super().__init__()
        assert bilinear_type in self.TYPES, (
            f"bilinear_type must be one of {self.TYPES}, got {bilinear_type!r}"
        )
        self.bilinear_type = bilinear_type
        i, j = torch.triu_indices(num_fields, num_fields, offset=1)  # the P pairs i < j, i-major
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)
        # field_each: the last field is never the left side of a pair i < j, so F − 1 matrices
        n = {"field_all": 1, "field_each": num_fields - 1, "field_interaction": len(i)}[bilinear_type]
        self.weight = nn.Parameter(torch.empty(n, embed_dim, embed_dim))
        for w in self.weight:
            nn.init.xavier_uniform_(w)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        B, F, D = fields.shape
        if self.bilinear_type == "field_interaction":
            # pairs run i-major (triu order): for a left field i, the blocks W_i,i+1 … W_i,F−1 side
            # by side are one (D, n_i·D) matrix, so v_i W_ij for all j > i is one small matmul — no
            # batched matmul over P tiny D×D problems, no (B, P, D) gather of v_i
            blocks = self.weight.permute(1, 0, 2).reshape(D, -1)  # (D, P·D)
            cols, parts, start = fields.unbind(1), [], 0
            for i in range(F - 1):
                n = F - 1 - i
                parts.append(cols[i] @ blocks[:, start * D : (start + n) * D])  # (B, n_i·D)
                start += n
            left = torch.cat(parts, dim=1).view(B, -1, D)  # (B, P, D): v_i W_ij
        else:
            if self.bilinear_type == "field_all":
                left = fields[:, :-1] @ self.weight[0]  # (B, F−1, D): v_i W
            else:
                left = torch.einsum("bfd,fde->bfe", fields[:, :-1], self.weight)  # v_i W_i
            left = left.index_select(1, self.i)  # (B, P, D)
        return left * fields.index_select(1, self.j)  # (B, P, D): p_ij = (v_i W) ⊙ v_j
