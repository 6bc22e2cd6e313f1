"""MLP block shared by every model."""

from __future__ import annotations

import torch
from torch import nn

from rlrec.layers.compiled import kernel


def fused_ok(x: torch.Tensor) -> bool:
    """Whether the fused fp32 kernels of rlrec.layers (custom autograd Functions) may run on `x`:
    not under autocast (`trainer.precision=bf16-mixed`), where each layer takes its plain form of
    autocast-aware torch ops instead (a Function's backward runs outside autocast, with the dtypes
    its forward saw)."""
    return not torch.is_autocast_enabled(x.device.type)


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


@kernel
def dice_forward(x: torch.Tensor, alpha: torch.Tensor, eps: float):
    """Dice in training mode on rows x (N, C): y = x ∘ (α + (1 − α) p), p = σ(x̂),
    x̂ = (x − μ) ∘ r, r = 1 / √(σ² + ε), over the N rows (batch statistics, biased variance).
    Returns y, p, μ, σ², r."""
    mean = x.mean(0)
    xc = x - mean
    var = (xc * xc).mean(0)  # of the centred values (no cancellation)
    rstd = torch.rsqrt(var + eps)
    p = torch.sigmoid(xc * rstd)
    return x * (alpha + (1 - alpha) * p), p, mean, var, rstd


@kernel
def dice_backward(g, x, alpha, p, mean, rstd):
    """∂x and ∂α of `dice_forward` for the output gradient g:
    ∂p = g ∘ x ∘ (1 − α),   ∂x̂ = ∂p ∘ p (1 − p),
    ∂x = g ∘ (α + (1 − α) p) + (∂x̂ − mean(∂x̂) − x̂ ∘ mean(∂x̂ ∘ x̂)) ∘ r   (BatchNorm's),
    ∂α = Σ_rows g ∘ x ∘ (1 − p)."""
    gx = g * x
    xhat = (x - mean) * rstd
    d_xhat = gx * (1 - alpha) * p * (1 - p)
    d_x = g * (alpha + (1 - alpha) * p) + (d_xhat - d_xhat.mean(0) - xhat * (d_xhat * xhat).mean(0)) * rstd
    return d_x, (gx * (1 - p)).sum(0)


class DiceTrain(torch.autograd.Function):
    """Dice in training mode as one autograd node over `dice_forward` / `dice_backward` (compiled
    into fused loops where TorchInductor can, see rlrec.layers.compiled). Autograd of BatchNorm →
    sigmoid → the products instead allocates about ten (N, C) tensors and makes ~40 passes over
    them. Returns (y, μ, σ²) so the module can update its running statistics as BatchNorm does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, eps: float):
        # α as a Tensor, not a Parameter: one compiled variant instead of two
        y, p, mean, var, rstd = dice_forward(x, alpha.detach(), eps)
        ctx.save_for_backward(x, alpha, p, mean, rstd)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor, _mean, _var):
        d_x, d_alpha = dice_backward(g.contiguous(), *ctx.saved_tensors)
        return d_x, d_alpha, None


class Dice(nn.Module):
    """DIN's data-adaptive activation (Zhou et al. 2018, eq. 9): p(s)·s + (1 − p(s))·α·s with
    p(s) = sigmoid(BN(s)). Training on CPU in fp32 runs as one `DiceTrain` node (same values, same
    running statistics); elsewhere, and in eval mode, the plain form."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # BN over every leading position, e.g. (B*L, D)
        bn = self.bn
        if bn.training and flat.device.type == "cpu" and flat.shape[0] > 1 and fused_ok(flat):
            y, mean, var = DiceTrain.apply(flat, self.alpha, bn.eps)
            with torch.no_grad():  # BatchNorm's update: momentum, unbiased variance
                n = flat.shape[0]
                bn.num_batches_tracked.add_(1)
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.lerp_(mean, m)
                bn.running_var.lerp_(var * (n / (n - 1)), m)
            return y.reshape(shape)
        return self.forward_plain(x)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        p = torch.sigmoid(self.bn(x.reshape(-1, shape[-1]))).reshape(shape)
        return p * x + (1 - p) * self.alpha * x


class ReLUStack(torch.autograd.Function):
    """Linear layers with ReLU after the first `num_relu` of them, x → (B, out), as one autograd node.
    Forward: per layer one matmul into a fresh buffer, then the bias and the ReLU in place on it.
    Backward, written by hand: every layer's input gradient is a fresh matmul result, so the ReLU mask
    of the layer below is applied to it in place (`threshold_backward` writing into its own input).
    Autograd of nn.Linear → nn.ReLU would instead copy the bias into each output before the matmul and
    allocate a new tensor for every ReLU output and every masked gradient: full (B, width) passes
    over memory, per layer together about three quarters of a 400×400 matmul's time in a CPU
    profile of DeepFM. Same values as the layers."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_relu: int, *params: torch.Tensor) -> torch.Tensor:
        inputs = []
        h = x
        for k in range(len(params) // 2):
            inputs.append(h)
            h = torch.mm(h, params[2 * k].t())  # (B, out_k)
            h.add_(params[2 * k + 1])
            if k < num_relu:
                h.relu_()
        top_relu = num_relu == len(params) // 2  # no output layer: the result itself is a ReLU output
        ctx.save_for_backward(*inputs, *params, *((h,) if top_relu else ()))
        ctx.layers, ctx.top_relu = len(inputs), top_relu
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        L = ctx.layers
        saved = ctx.saved_tensors
        inputs, params = saved[:L], saved[L : 3 * L]
        g = torch.ops.aten.threshold_backward(grad, saved[-1], 0) if ctx.top_relu else grad
        grads: list[torch.Tensor | None] = [None] * (2 * L)
        grad_x = None
        for k in reversed(range(L)):
            grads[2 * k] = g.t().mm(inputs[k])  # ∂W_k = gᵀ a_{k−1}
            grads[2 * k + 1] = g.sum(0)  # ∂b_k
            if k > 0:
                below = g.mm(params[2 * k])  # ∂a_{k−1}, a fresh buffer: mask it in place
                g = torch.ops.aten.threshold_backward.grad_input(below, inputs[k], 0, grad_input=below)
            elif ctx.needs_input_grad[0]:
                grad_x = g.mm(params[0])
        return (grad_x, None, *grads)


class MLP(nn.Sequential):
    """Linear → [BatchNorm] → activation → [Dropout] per hidden width, then an optional output layer.
    A plain ReLU stack (no BatchNorm, no dropout) runs as one `ReLUStack` node over the same
    parameters; anything else runs the layers one by one (ReLU in place)."""

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
        self.has_output = out_dim is not None
        for m in self:
            if isinstance(m, nn.ReLU):
                m.inplace = True  # its input is a Linear / BatchNorm output no backward needs
        self.relu_stack = all(isinstance(m, (nn.Linear, nn.ReLU)) for m in self) and len(self) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if x.dim() == 1:
            return super().forward(x)
        if x.dim() > 2:  # (…, in) → (N, in): BatchNorm and the fused stack work on 2-D rows
            return self.forward(x.reshape(-1, shape[-1])).reshape(*shape[:-1], self.out_dim)
        if self.relu_stack and fused_ok(x):
            linears = [m for m in self if isinstance(m, nn.Linear)]
            num_relu = len(self) - len(linears)
            params = [p for m in linears for p in (m.weight, m.bias)]
            return ReLUStack.apply(x, num_relu, *params)
        return super().forward(x)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's output (the input of the output layer; everything when there is
        none), rows of 2-D `x`: what PRM calls the personalised vector of a ranker."""
        for m in list(self)[:-1] if self.has_output else self:
            x = m(x)
        return x
