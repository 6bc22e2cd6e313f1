"""Feature-interaction blocks shared by the CTR backbones: FM second-order term, cross network
(DCN / DCN-V2), squeeze-excitation and bilinear interaction (FiBiNet). The first-order term is a
column of the embedding table (`FeatureEmbedding(first_order=True)`, `.lookup`)."""

from __future__ import annotations

import torch
from torch import nn

from rlrec.layers.compiled import kernel
from rlrec.layers.mlp import activation, fused_ok


class FactorizationMachine(nn.Module):
    """FM second-order term (Rendle 2010, eq. 1 via the O(FD) identity of Lemma 3.1):
    Σ_{i<j} <e_i, e_j> = ½ Σ_d [(Σ_f e_{f,d})² − Σ_f e_{f,d}²]. (B, F, D) → (B,)."""

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        if fused_ok(fields):
            return FMPairs.apply(fields)  # (B,)
        s = fields.sum(1)  # the plain form (under autocast)
        return 0.5 * (s * s - (fields * fields).sum(1)).sum(-1)


class FMPairs(torch.autograd.Function):
    """The FM identity above with its gradient written out: ∂/∂e_{f,d} = Σ_f' e_{f',d} − e_{f,d}.
    Two passes over (B, F, D) forward (the field sum and the squared norm) and two backward, where
    autograd's graph of two pows, two sums and a subtraction makes several more, each allocating."""

    @staticmethod
    def forward(ctx, fields: torch.Tensor) -> torch.Tensor:
        total = fields.sum(dim=1)  # (B, D): Σ_f e_f
        squares = torch.linalg.vector_norm(fields.flatten(1), dim=1).square()  # (B,): Σ_f Σ_d e_{f,d}²
        ctx.save_for_backward(fields, total)
        return 0.5 * (total.square().sum(dim=1) - squares)  # (B,)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        fields, total = ctx.saved_tensors
        return torch.sub(total.unsqueeze(1), fields).mul_(grad.view(-1, 1, 1))  # (B, F, D)


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
        if self.version == "v1" and fused_ok(x0):
            return CrossV1.apply(x0, *(w.weight[0] for w in self.w), *self.b)
        if self.version == "v1":  # the plain form (under autocast): x_{l+1} = x0 (x_lᵀ w_l) + b_l + x_l
            x = x0
            for w, b in zip(self.w, self.b):
                x = x0 * w(x) + b + x
            return x
        x = x0
        for w in self.w:
            x = x0 * w(x) + x  # (B, d)
        return x


class CrossV1(torch.autograd.Function):
    """The v1 cross stack x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l (DCN eq. 3) with a hand-written
    backward: two passes over (B, d) per layer forward, five backward, where autograd's graph of
    a Linear(d, 1), a broadcast multiply and two adds makes about twice as many, each allocating.
    Arguments: x_0 (B, d), then the L weight vectors w_l (d,), then the L biases b_l (d,)."""

    @staticmethod
    def forward(ctx, x0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        L = len(params) // 2
        xs, ss, x = [], [], x0
        for w, b in zip(params[:L], params[L:]):
            s = (x @ w).unsqueeze(1)  # (B, 1): x_lᵀ w_l
            xs.append(x)
            ss.append(s)
            x = torch.addcmul(x, x0, s).add_(b)  # (B, d)
        ctx.save_for_backward(x0, *params[:L], *xs, *ss)
        ctx.L = L
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):
        L = ctx.L
        saved = ctx.saved_tensors
        x0, ws, xs, ss = saved[0], saved[1 : 1 + L], saved[1 + L : 1 + 2 * L], saved[1 + 2 * L :]
        gx0, gw, gb = cross_v1_grad(g.contiguous(), x0, tuple(ws), tuple(xs), tuple(ss))
        return (gx0, *gw, *gb)


def _cross_v1_grad_in_place(g, x0, ws, xs, ss):
    """`cross_v1_grad` for eager torch: the running gradients updated in place."""
    L = len(ws)
    gx0 = torch.zeros_like(x0)
    gw, gb = [None] * L, [None] * L
    for l in reversed(range(L)):
        gb[l] = g.sum(0)
        gs = (g * x0).sum(1)  # (B,)
        gx0.addcmul_(g, ss[l])
        gw[l] = xs[l].t() @ gs  # (d,)
        g = torch.addr(g, gs, ws[l])
    return gx0.add_(g), gw, gb


@kernel(eager=_cross_v1_grad_in_place, dynamic=False)
def cross_v1_grad(g, x0, ws, xs, ss):
    """Gradients of the v1 cross stack for the output gradient g (B, d), layer by layer from the top:
        ∂b_l = Σ_rows g,   ∂s_l = g · x_0 (per row),   ∂w_l = Σ_rows x_l ∂s_l,
        ∂x_0 += g s_l,     g ← ∂x_l = g + ∂s_l w_lᵀ;   finally ∂x_0 += g.
    ws: the L weight vectors (d,); xs: the layer inputs x_l (B, d); ss: s_l = x_lᵀ w_l (B, 1)."""
    L = len(ws)
    gx0 = torch.zeros_like(x0)
    gw, gb = [], []
    for l in reversed(range(L)):
        gb.append(g.sum(0))
        gs = (g * x0).sum(1, keepdim=True)  # (B, 1)
        gx0 = gx0 + g * ss[l]
        gw.append((xs[l] * gs).sum(0))  # (d,)
        g = g + gs * ws[l]
    return gx0 + g, gw[::-1], gb[::-1]


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


class BilinearPairs(torch.autograd.Function):
    """FiBiNet's bilinear interaction and combination layer in one pass. For each input X_s (B, F, D)
    with its pair matrices W_s (P, D, D): p_ij = (x_i W_ij) ⊙ x_j for the P pairs i < j (i-major),
    written straight into slot s of the (B, S·P·D) output [p⁽¹⁾, …, p⁽ˢ⁾] that the DNN reads.
    For a left field i the blocks W_i,i+1 … W_i,F−1 side by side are one (D, n_i·D) matrix, so
    x_i W_ij for all j > i is one small matmul, and x_j for all j > i is a (B, n_i·D) view of X:
    no batched matmul over P tiny problems, no gathered (B, P, D) copies, no concatenations.
    The products x_i W_ij go to one (B, (F−1)·D) scratch buffer reused by every left field, which
    stays in cache, and the backward recomputes them there (a K = D matmul) instead of saving a
    (B, P·D) tensor per input: the step is bound by memory traffic, not by these matmuls. The
    backward is written by hand over the same views."""

    @staticmethod
    def forward(ctx, *args: torch.Tensor) -> torch.Tensor:
        S = len(args) // 2
        xs = [x.contiguous() for x in args[:S]]
        B, F_, D = xs[0].shape
        P = F_ * (F_ - 1) // 2
        out = xs[0].new_empty(B, S, P * D)
        scratch = xs[0].new_empty(B, (F_ - 1) * D)
        blocks = []
        for s in range(S):
            x = xs[s]
            blk = args[S + s].permute(1, 0, 2).reshape(D, P * D)  # (D, P·D): W_ij side by side
            for i, cols, n in _left_blocks(F_, D):
                left = torch.mm(x[:, i], blk[:, cols], out=scratch[:, : n * D])  # x_i W_ij, (B, n·D)
                torch.mul(left, x[:, i + 1 :].reshape(B, n * D), out=out[:, s, cols])
            blocks.append(blk)
        ctx.save_for_backward(*xs, *blocks)
        ctx.S = S
        return out.view(B, S * P * D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        S = ctx.S
        saved = ctx.saved_tensors
        xs, blocks = saved[:S], saved[S:]
        B, F_, D = xs[0].shape
        grad = grad.view(B, S, -1)
        scratch = grad.new_empty(2, B, (F_ - 1) * D)  # x_i W_ij and ∂L/∂(x_i W_ij) of one left field
        grad_x, grad_w = [], []
        for s in range(S):
            x, blk = xs[s], blocks[s]
            gx = torch.zeros_like(x)  # (B, F, D)
            gblk = torch.empty_like(blk)  # (D, P·D)
            for i, cols, n in _left_blocks(F_, D):
                g = grad[:, s, cols]  # (B, n·D) = ∂L/∂p_ij for j > i
                left = torch.mm(x[:, i], blk[:, cols], out=scratch[0, :, : n * D])  # x_i W_ij again
                gx[:, i + 1 :].reshape(B, n * D).addcmul_(g, left)  # ∂/∂x_j = g ⊙ x_i W_ij
                h = torch.mul(g, x[:, i + 1 :].reshape(B, n * D), out=scratch[1, :, : n * D])
                gx[:, i].addmm_(h, blk[:, cols].t())  # ∂/∂x_i = h W_ijᵀ, h = ∂L/∂(x_i W_ij)
                torch.mm(x[:, i].t(), h, out=gblk[:, cols])  # ∂/∂W_ij = x_iᵀ h
            grad_x.append(gx)
            grad_w.append(gblk.view(D, -1, D).permute(1, 0, 2))  # (P, D, D)
        return (*grad_x, *grad_w)


def _left_blocks(num_fields: int, dim: int):
    """(i, columns of the pairs (i, j > i) in a (·, P·D) row, n_i = F − 1 − i) for each left field."""
    start = 0
    for i in range(num_fields - 1):
        n = num_fields - 1 - i
        yield i, slice(start * dim, (start + n) * dim), n
        start += n


class BilinearInteraction(nn.Module):
    """FiBiNet's bilinear interaction (Huang et al. 2019, Bilinear-Interaction-layer equations):
    p_ij = (v_i · W) ⊙ v_j for every field pair i < j, with W shared by all fields ("field_all"),
    one W_i per field ("field_each") or one W_ij per pair ("field_interaction").
    (B, F, D) → (B, P, D), P = F(F−1)/2; `bilinear_combination` runs several layers into one
    (B, S·P·D) DNN input."""

    TYPES = ("field_all", "field_each", "field_interaction")

    def __init__(self, num_fields: int, embed_dim: int, bilinear_type: str = "field_interaction"):
        super().__init__()
        assert bilinear_type in self.TYPES, f"bilinear_type must be one of {self.TYPES}, got {bilinear_type!r}"
        self.bilinear_type = bilinear_type
        i, j = torch.triu_indices(num_fields, num_fields, offset=1)  # the P pairs i < j, i-major
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)
        # field_each: the last field is never the left side of a pair i < j, so F − 1 matrices
        n = {"field_all": 1, "field_each": num_fields - 1, "field_interaction": len(i)}[bilinear_type]
        self.weight = nn.Parameter(torch.empty(n, embed_dim, embed_dim))
        for w in self.weight:
            nn.init.xavier_uniform_(w)

    def pair_weights(self) -> torch.Tensor:
        """(P, D, D): the matrix W of every pair i < j under this layer's type."""
        P, D = len(self.i), self.weight.shape[-1]
        if self.bilinear_type == "field_interaction":
            return self.weight
        if self.bilinear_type == "field_all":
            return self.weight.expand(P, D, D)
        return self.weight.index_select(0, self.i)  # field_each: W_i for every pair of i

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        B, _, D = fields.shape
        return bilinear_combination([self], [fields]).view(B, -1, D)  # (B, P, D)


def bilinear_combination(layers: list[BilinearInteraction], inputs: list[torch.Tensor]) -> torch.Tensor:
    """FiBiNet's combination layer: [p⁽¹⁾, …, p⁽ˢ⁾] flattened, (B, S·P·D), where p⁽ˢ⁾ is
    `layers[s](inputs[s])` (each input (B, F, D))."""
    assert len(layers) == len(inputs), "one input per bilinear layer"
    if fused_ok(inputs[0]):
        return BilinearPairs.apply(*inputs, *(layer.pair_weights() for layer in layers))
    out = []  # the plain form (under autocast): p_ij = (e_i W_ij) ⊙ e_j
    for layer, x in zip(layers, inputs):
        left = torch.einsum("bpd,pde->bpe", x[:, layer.i], layer.pair_weights())
        out.append((left * x[:, layer.j]).flatten(1))
    return torch.cat(out, dim=1)
