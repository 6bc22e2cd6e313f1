"""Attention blocks: DIN's target attention and multi-head self-attention over fields."""

from __future__ import annotations

import torch
from torch import nn

from rlrec.layers.compiled import kernel
from rlrec.layers.mlp import MLP, fused_ok


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
        """query (B, D), keys (B, L, D), mask (B, L) → (B, L) weights, 0 on padding.

        The unit's first layer W [q, k, q − k, q ⊙ k] + b is computed as
        (W_q + W_d) q + b  (once per sample)  +  [W_k − W_d, W_p] [k, q ⊙ k]  (per behaviour),
        with W = [W_q, W_k, W_d, W_p] split by input block: the same parameters and function as
        `scores_plain`, with half the per-behaviour matmul and no (B, L, 4D) concatenation."""
        B, L, D = keys.shape
        first = self.unit[0]
        w_q, w_k, w_d, w_p = first.weight.split(D, dim=1)  # each (H1, D)
        per_sample = torch.addmm(first.bias, query, (w_q + w_d).t())  # (B, H1)
        pair = torch.cat([keys, query.unsqueeze(1) * keys], dim=-1).view(B * L, 2 * D)
        h = (pair @ torch.cat([w_k - w_d, w_p], dim=1).t()).view(B, L, -1) + per_sample.unsqueeze(1)
        h = h.view(B * L, -1)
        for layer in list(self.unit)[1:]:  # activation, further layers, output
            h = layer(h)
        w = h.view(B, L)
        return self._normalise(w, mask)

    def scores_plain(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`scores` as the paper writes it: the unit on the concatenation [q, k, q − k, q ⊙ k]."""
        q = query.unsqueeze(1).expand_as(keys)  # (B, L, D)
        w = self.unit(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)  # (B, L)
        return self._normalise(w, mask)

    def _normalise(self, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.softmax:
            return w.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
        return w * mask.to(w.dtype)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Σ_j weight_j k_j as a broadcast product and sum (einsum's batched matvec is ~2x slower on CPU)
        return (self.scores(query, keys, mask).unsqueeze(-1) * keys).sum(1)  # (B, D)


class FewFieldAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale) v over a handful of fields, in batch-last layout: qkv (3, H, d, F, B),
    the stacked q, k, v → (H, d, F, B). With F ≈ 10 and d ≈ 8 every (sample, head) is a tiny problem:
    batched matmuls and the fused SDPA kernel pay a per-problem overhead that dominates AutoInt's step
    on CPU. Here the batch is the innermost, contiguous dimension, so the scores, the softmax, the
    weighted sum and the hand-written backward are O(F + d) vectorised passes over all B samples at
    once. q, k, v come in (and their gradient goes out) as one stacked tensor: indexing q, k, v out
    of it under autograd would cost three zero-filled copies of the whole stack in the backward."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, scale: float) -> torch.Tensor:
        out, a = few_field_attention(qkv, scale)
        ctx.save_for_backward(qkv, a)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        qkv, a = ctx.saved_tensors
        return few_field_attention_grad(grad.contiguous(), qkv, a, ctx.scale), None


def _few_field_attention_loops(qkv, scale: float):
    """`few_field_attention` for eager torch: each sum as O(F + d) in-place passes over (…, B)."""
    q, k, v = qkv.unbind(0)
    d, F_ = q.shape[1], q.shape[2]
    s = q[:, 0, :, None] * k[:, 0, None]  # s[h, i, j] = Σ_t q[h, t, i] k[h, t, j]
    for t in range(1, d):
        s.addcmul_(q[:, t, :, None], k[:, t, None])
    if scale != 1.0:
        s.mul_(scale)
    a = torch.softmax(s, dim=2)  # over the attended fields j
    out = a[:, None, :, 0] * v[:, :, 0, None]  # out[h, :, i] = Σ_j a[h, i, j] v[h, :, j]
    for j in range(1, F_):
        out.addcmul_(a[:, None, :, j], v[:, :, j, None])
    return out, a


@kernel(eager=_few_field_attention_loops, dynamic=False)
def few_field_attention(qkv, scale: float):
    """qkv (3, H, d, F, B) → out (H, d, F, B), a (H, F, F, B):
    s[h, i, j] = Σ_t q[h, t, i] k[h, t, j] · scale,   a = softmax_j(s),   out[h, :, i] = Σ_j a[h, i, j] v[h, :, j]."""
    q, k, v = qkv.unbind(0)
    a = torch.softmax((q.unsqueeze(3) * k.unsqueeze(2)).sum(1) * scale, dim=2)  # (H, F_i, F_j, B)
    return (a.unsqueeze(1) * v.unsqueeze(2)).sum(3), a


def _few_field_attention_grad_loops(g, qkv, a, scale: float):
    """`few_field_attention_grad` for eager torch: each sum as O(F + d) in-place passes over (…, B)."""
    q, k, v = qkv.unbind(0)
    d, F_ = q.shape[1], q.shape[2]
    grad_a = g[:, 0, :, None] * v[:, 0, None]
    for t in range(1, d):
        grad_a.addcmul_(g[:, t, :, None], v[:, t, None])
    grad_s = a * (grad_a - (grad_a * a).sum(2, keepdim=True))
    if scale != 1.0:
        grad_s.mul_(scale)
    grad_qkv = torch.empty_like(qkv)
    grad_q, grad_k, grad_v = grad_qkv.unbind(0)
    torch.mul(a[:, None, 0], g[:, :, 0, None], out=grad_v)
    torch.mul(grad_s[:, None, :, 0], k[:, :, 0, None], out=grad_q)
    torch.mul(grad_s[:, None, 0], q[:, :, 0, None], out=grad_k)
    for i in range(1, F_):
        grad_v.addcmul_(a[:, None, i], g[:, :, i, None])
        grad_q.addcmul_(grad_s[:, None, :, i], k[:, :, i, None])
        grad_k.addcmul_(grad_s[:, None, i], q[:, :, i, None])
    return grad_qkv


@kernel(eager=_few_field_attention_grad_loops, dynamic=False)
def few_field_attention_grad(g, qkv, a, scale: float):
    """∂L/∂qkv of `FewFieldAttention` for the output gradient g (H, d, F, B), a = softmax(s):
    ∂a[h, i, j] = Σ_t g[h, t, i] v[h, t, j],        ∂v[h, :, j] = Σ_i a[h, i, j] g[h, :, i],
    ∂s = a ∘ (∂a − Σ_j ∂a ∘ a) · scale,
    ∂q[h, :, i] = Σ_j ∂s[h, i, j] k[h, :, j],      ∂k[h, :, j] = Σ_i ∂s[h, i, j] q[h, :, i]."""
    q, k, v = qkv.unbind(0)
    grad_a = (g.unsqueeze(3) * v.unsqueeze(2)).sum(1)  # (H, F_i, F_j, B)
    grad_v = (a.unsqueeze(1) * g.unsqueeze(3)).sum(2)  # (H, d, F_j, B)
    grad_s = a * (grad_a - (grad_a * a).sum(2, keepdim=True)) * scale
    grad_q = (grad_s.unsqueeze(1) * k.unsqueeze(2)).sum(3)  # (H, d, F_i, B)
    grad_k = (grad_s.unsqueeze(1) * q.unsqueeze(3)).sum(2)  # (H, d, F_j, B)
    return torch.stack([grad_q, grad_k, grad_v])


class FieldSelfAttention(nn.Module):
    """AutoInt's interacting layer (Song et al. 2019, eqs. 5–8): multi-head dot-product attention
    over fields, with a residual projection and ReLU. (B, F, D_in) → (B, F, H·d).

    On CPU the layer runs batch-last (`forward_batch_last`, `FewFieldAttention`); elsewhere (GPU)
    torch's fused `scaled_dot_product_attention`. Same parameters, same function."""

    def __init__(self, in_dim: int, head_dim: int = 16, num_heads: int = 2, residual: bool = True, scale: bool = True):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, scale
        out = head_dim * num_heads
        self.qkv = nn.Linear(in_dim, 3 * out, bias=False)
        self.residual = nn.Linear(in_dim, out, bias=False) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and fused_ok(x):
            return self.forward_batch_last(x.permute(2, 1, 0).contiguous()).permute(2, 1, 0)
        B, F, _ = x.shape
        q, k, v = self.qkv(x).view(B, F, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # each (B, H, F, d)
        # softmax(q kᵀ [/ √d]) v (eq. 5–6; AutoInt's paper does not scale)
        out = nn.functional.scaled_dot_product_attention(q, k, v, scale=None if self.scale else 1.0)  # (B, H, F, d)
        out = out.transpose(1, 2).reshape(B, F, -1)  # (B, F, H·d)
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out)

    def forward_batch_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer on (D_in, F, B) → (H·d, F, B): every projection is one matmul over all
        F·B positions, and stacked layers stay in this layout."""
        _, F, B = x.shape
        flat = x.reshape(x.shape[0], F * B)  # (D_in, F·B)
        qkv = (self.qkv.weight @ flat).view(3, self.num_heads, self.head_dim, F, B)
        scale = self.head_dim**-0.5 if self.scale else 1.0
        out = FewFieldAttention.apply(qkv, scale).reshape(-1, F * B)  # (H·d, F·B)
        if self.residual is not None:
            out = out + self.residual.weight @ flat
        return torch.relu(out).view(-1, F, B)


class FieldSelfAttentionStack(nn.Sequential):
    """Stacked `FieldSelfAttention` layers (AutoInt), (B, F, D) → (B, F, H·d). On CPU the whole
    stack runs batch-last, with one layout change on the way in and one on the way out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not fused_ok(x):
            return super().forward(x)
        x = x.permute(2, 1, 0).contiguous()  # (D, F, B)
        for layer in self:
            x = layer.forward_batch_last(x)
        return x.permute(2, 1, 0)  # (B, F, H·d)
