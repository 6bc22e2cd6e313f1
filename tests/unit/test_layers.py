"""Shared CTR layers against their definitions: the batch-last few-field attention (AutoInt's CPU
path), the bilinear interaction's pair order and hand-written backward, the v1 cross stack's
backward, the embedding lookups' scatter backwards, and the first-order column of the embedding
table."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from rlrec.backbones.dcn import DCN
from rlrec.layers import compiled
from rlrec.layers.attention import (
    FewFieldAttention,
    FieldSelfAttention,
    TargetAttention,
    few_field_attention,
    few_field_attention_grad,
)
from rlrec.layers.embedding import FeatureEmbedding, GatherRows, WeightedBag, gather_rows, weighted_bag
from rlrec.layers.interaction import (
    BilinearInteraction,
    CrossNet,
    FactorizationMachine,
    bilinear_combination,
    cross_v1_grad,
)
from rlrec.layers.mlp import MLP, Dice, DiceTrain, dice_backward, dice_forward


def reference_attention(q, k, v, scale):
    """softmax(q kᵀ · scale) v written out for (H, d, F, B) inputs."""
    s = torch.einsum("htib,htjb->hijb", q, k) * scale
    return torch.einsum("hijb,htjb->htib", s.softmax(dim=2), v)


def assert_same_values_and_gradients(out, ref, inputs):
    """`out` equals `ref`, and so do their gradients w.r.t. `inputs` for one random upstream gradient."""
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(got, want)


def test_few_field_attention_matches_definition_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 2, 3, 5, 4, generator=g, dtype=torch.double, requires_grad=True)
    out = FewFieldAttention.apply(qkv, 0.7)
    assert out.shape == (2, 3, 5, 4)
    torch.testing.assert_close(out, reference_attention(*qkv, 0.7))
    assert gradcheck(lambda x: FewFieldAttention.apply(x, 0.7), (qkv,))
    # each output is a convex combination of the value vectors: constant v gives that constant back
    const = qkv.detach().clone()
    const[2] = 3.0
    torch.testing.assert_close(FewFieldAttention.apply(const, 1.0), const[2])


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("residual", [True, False])
def test_field_self_attention_cpu_path_equals_sdpa(scale, residual):
    torch.manual_seed(0)
    layer = FieldSelfAttention(6, head_dim=4, num_heads=2, residual=residual, scale=scale)
    x = torch.randn(7, 5, 6, requires_grad=True)  # (B, F, D_in)
    q, k, v = layer.qkv(x).view(7, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(q, k, v, scale=None if scale else 1.0).transpose(1, 2).reshape(7, 5, 8)
    if residual:
        ref = ref + layer.residual(x)
    ref = torch.relu(ref)
    out = layer(x)
    assert out.shape == (7, 5, 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    (gr,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(gx, gr, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", BilinearInteraction.TYPES)
def test_bilinear_interaction_pairs_follow_the_definition(kind):
    torch.manual_seed(0)
    layer = BilinearInteraction(6, 4, kind)
    x = torch.randn(3, 6, 4)
    i, j = torch.triu_indices(6, 6, offset=1)
    w = {"field_all": torch.zeros_like(i), "field_each": i, "field_interaction": torch.arange(len(i))}[kind]
    w = layer.weight[w]  # the matrix each pair uses: W, W_i or W_ij
    expected = torch.einsum("bpd,pde->bpe", x[:, i], w) * x[:, j]  # p_ij = (v_i W_·) ⊙ v_j, i < j
    out = layer(x)
    assert out.shape == (3, 15, 4)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("kind", BilinearInteraction.TYPES)
def test_bilinear_combination_is_the_concatenation_with_exact_gradients(kind):
    """FiBiNet's [p, q] written in one pass equals cat([layer_e(e), layer_v(v)]) flattened, and its
    hand-written backward passes gradcheck for inputs and weights."""
    torch.manual_seed(0)
    a, b = BilinearInteraction(5, 3, kind).double(), BilinearInteraction(5, 3, kind).double()
    e, v = (torch.randn(4, 5, 3, dtype=torch.double, requires_grad=True) for _ in range(2))
    out = bilinear_combination([a, b], [e, v])
    assert out.shape == (4, 2 * 10 * 3)
    torch.testing.assert_close(out, torch.cat([a(e), b(v)], dim=1).flatten(1))
    for layer, x, half in ((a, e, out[:, :30]), (b, v, out[:, 30:])):
        i, j = layer.i, layer.j
        ref = torch.einsum("bpd,pde->bpe", x[:, i], layer.pair_weights()) * x[:, j]
        torch.testing.assert_close(half, ref.flatten(1))
    assert gradcheck(lambda x, y, wa, wb: bilinear_combination([a, b], [x, y]), (e, v, a.weight, b.weight))


def test_cross_v1_backward_matches_autograd_of_the_definition():
    torch.manual_seed(0)
    net = CrossNet(6, num_layers=3, version="v1").double()
    for bias in net.b:
        torch.nn.init.normal_(bias)
    x0 = torch.randn(5, 6, dtype=torch.double, requires_grad=True)

    def definition(x0):  # x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l
        x = x0
        for w, bias in zip(net.w, net.b):
            x = x0 * (x @ w.weight[0]).unsqueeze(1) + bias + x
        return x

    assert_same_values_and_gradients(net(x0), definition(x0), [x0, *net.parameters()])
    assert gradcheck(net, (x0,))


@pytest.mark.parametrize("out_dim", [1, None])  # an output layer (DeepFM, FiBiNet) or a ReLU on top (DCN)
def test_relu_stack_equals_the_layers_one_by_one(out_dim):
    torch.manual_seed(0)
    mlp = MLP(7, (9, 8), out_dim).double()
    assert mlp.relu_stack
    for m in mlp:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.bias)  # some units dead, some alive: the masks matter
    x = torch.randn(33, 7, dtype=torch.double, requires_grad=True)

    def layers(x):  # Linear → ReLU → … as plain autograd, out of place
        for m in mlp:
            x = m(x) if isinstance(m, torch.nn.Linear) else torch.relu(x)
        return x

    out, ref = mlp(x), layers(x)
    assert out.shape == (33, out_dim or 8)
    hidden = torch.relu(mlp[0](x))
    assert (hidden == 0).any() and (hidden > 0).any()
    assert_same_values_and_gradients(out, ref, [x, *mlp.parameters()])
    assert gradcheck(mlp, (x,))
    seq = torch.randn(4, 5, 7, dtype=torch.double)  # (B, L, in) rows, as DIN's attention unit feeds it
    torch.testing.assert_close(mlp(seq), layers(seq.reshape(-1, 7)).reshape(4, 5, -1))


def test_mlp_with_batch_norm_or_dropout_runs_layer_by_layer():
    assert not MLP(7, (9,), 1, dropout=0.1).relu_stack
    assert not MLP(7, (9,), 1, batch_norm=True).relu_stack
    assert not MLP(7, (9,), 1, activation_fn="tanh").relu_stack


def test_fm_is_the_sum_over_field_pairs_with_exact_gradients():
    torch.manual_seed(0)
    fields = torch.randn(6, 5, 3, dtype=torch.double, requires_grad=True)
    out = FactorizationMachine()(fields)
    pairs = sum((fields[:, i] * fields[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert_same_values_and_gradients(out, pairs, [fields])
    assert gradcheck(FactorizationMachine(), (fields,))


@pytest.mark.parametrize("mlp_dims", [(8, 6), ()])
def test_dcn_combination_layer_is_the_linear_layer_on_the_concatenation(tiny_prep, tiny_batch, mlp_dims):
    torch.manual_seed(0)
    model = DCN(tiny_prep.spec, embed_dim=4, mlp_dims=mlp_dims, num_layers=2)
    x0 = model.embedding(tiny_batch, pool_history=True).flatten(1)
    if model.deep is None:
        torch.testing.assert_close(model(tiny_batch), model.out(model.cross(x0)).squeeze(-1))
        return
    *hidden, head = list(model.deep)  # the deep MLP's output layer holds w_d and the bias b
    h = x0
    for layer in hidden:
        h = layer(h)
    assert h.shape[1] == mlp_dims[-1] and head.out_features == 1
    combination = nn.Linear(x0.shape[1] + h.shape[1], 1)  # w·[x_L; h_L] + b, DCN eq. 5
    with torch.no_grad():
        combination.weight.copy_(torch.cat([model.out.weight, head.weight], 1))
        combination.bias.copy_(head.bias)
    want = combination(torch.cat([model.cross(x0), h], 1)).squeeze(-1)
    torch.testing.assert_close(model(tiny_batch), want)


def test_weighted_bag_and_gather_rows_match_torch_with_exact_gradients():
    """The CPU lookups with scatter backwards equal embedding_bag (mean over real ids, padding 0
    excluded, an empty bag gives 0) and F.embedding, values and gradients."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 3, dtype=torch.double, generator=g, requires_grad=True)
    idx = torch.tensor([[1, 4, 4, 0], [0, 0, 0, 0], [8, 2, 1, 5]])  # a repeat, padding, an empty bag
    real = (idx > 0).double()
    w = real / real.sum(1, keepdim=True).clamp_min(1)
    out = weighted_bag(table, idx, w)
    ref = F.embedding_bag(idx, table, mode="mean", padding_idx=0)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out[1], torch.zeros(3, dtype=torch.double))
    grad = torch.randn(3, 3, dtype=torch.double, generator=g)
    (got,) = torch.autograd.grad(out, table, grad)
    (want,) = torch.autograd.grad(ref, table, grad)
    torch.testing.assert_close(got, want)
    assert got[0].abs().sum() == 0  # padding rows get no gradient
    assert gradcheck(lambda t: WeightedBag.apply(t, idx, w), (table,))

    rows = gather_rows(table, idx)
    assert rows.shape == (3, 4, 3)
    torch.testing.assert_close(rows, F.embedding(idx, table))
    grad = torch.randn(3, 4, 3, dtype=torch.double, generator=g)
    torch.testing.assert_close(
        torch.autograd.grad(rows, table, grad)[0], torch.autograd.grad(F.embedding(idx, table), table, grad)[0]
    )
    assert gradcheck(lambda t: GatherRows.apply(t, idx), (table,))


def test_first_order_column_is_the_linear_term(tiny_prep, tiny_batch):
    torch.manual_seed(0)
    emb = FeatureEmbedding(tiny_prep.spec, embed_dim=4, first_order=True)
    assert emb.embedding.weight.shape[1] == 5
    fields, linear = emb.lookup(tiny_batch, pool_history=True)
    assert fields.shape == (48, emb.num_fields(pool_history=True), 4)
    # the same lookup through a plain table: the last column summed over the (pooled) fields
    plain = FeatureEmbedding(tiny_prep.spec, embed_dim=5)
    plain.embedding.weight.data.copy_(emb.embedding.weight.data)
    full = plain(tiny_batch, pool_history=True)  # (B, F, 5)
    torch.testing.assert_close(fields, full[..., :4])
    torch.testing.assert_close(linear, full[..., 4].sum(1))
    assert FeatureEmbedding(tiny_prep.spec, embed_dim=4).lookup(tiny_batch)[1] is None


def test_large_catalogue_path_equals_per_step_item_table(tiny_prep, tiny_batch, monkeypatch):
    """The history lookups switch to per-sample rows when the catalogue outgrows the batch; both
    paths give the same embeddings, pooled means and gradients."""
    torch.manual_seed(0)
    emb = FeatureEmbedding(tiny_prep.spec, embed_dim=4, first_order=True)
    batch = {**tiny_batch, "history": tiny_batch["history"].clone()}
    batch["history"][0] = 0  # one empty history: its pooled mean is 0 on both paths

    def run():
        emb.zero_grad()
        fields, linear = emb.lookup(batch, pool_history=True)
        hist, mask = emb.history(batch)
        (fields.square().sum() + linear.sum() + hist.square().sum()).backward()
        return fields, linear, hist, mask, emb.embedding.weight.grad.clone()

    assert emb.small_catalogue(batch["history"])  # 40 items < 48 × 8 history positions
    small = run()
    monkeypatch.setattr(FeatureEmbedding, "small_catalogue", lambda self, hist: False)
    large = run()
    for a, b in zip(small, large):
        torch.testing.assert_close(a, b)
    n_item = emb.num_user_fields + emb.num_item_fields
    torch.testing.assert_close(small[0][0, n_item:], torch.zeros(emb.num_item_fields, 4))


@pytest.fixture()
def compiling():
    """rlrec.layers.compiled kernels compile inside the test (conftest turns them off elsewhere)."""
    was = compiled.enabled()
    compiled.set_enabled(True)
    yield
    compiled.set_enabled(was)


def test_compiled_kernels_equal_their_eager_form(compiling):
    g = torch.Generator().manual_seed(0)
    x, grad = torch.randn(300, 16, generator=g) * 2 + 0.5, torch.randn(300, 16, generator=g)
    alpha = torch.rand(16, generator=g)
    qkv, out_grad = torch.randn(3, 2, 4, 6, 32, generator=g), torch.randn(2, 4, 6, 32, generator=g)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "rlrec: compiling")  # a failed compilation falls back: fail
        fwd = dice_forward(x, alpha, 1e-8)
        bwd = dice_backward(grad, x, alpha, fwd[1], fwd[2], fwd[4])
        att = few_field_attention(qkv, 0.5)
        att_grad = few_field_attention_grad(out_grad, qkv, att[1], 0.5)
        ws = tuple(torch.randn(16, generator=g) * 0.1 for _ in range(3))  # gradients stay O(1): fp32 tolerances
        xs = tuple(torch.randn(300, 16, generator=g) for _ in range(3))
        ss = tuple(x @ w[:, None] for x, w in zip(xs, ws))
        cross = cross_v1_grad(grad, x, ws, xs, ss)
    gx0, gw, gb = cross_v1_grad.eager(grad, x, ws, xs, ss)
    cases = [
        ((cross[0], *cross[1], *cross[2]), (gx0, *gw, *gb)),
        (fwd, dice_forward.eager(x, alpha, 1e-8)),
        (bwd, dice_backward.eager(grad, x, alpha, fwd[1], fwd[2], fwd[4])),
        (att, few_field_attention.eager(qkv, 0.5)),
        ((att_grad,), (few_field_attention_grad.eager(out_grad, qkv, att[1], 0.5),)),
    ]
    for got, want in cases:
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the eager loops are the broadcast definitions, term for term
    torch.testing.assert_close(few_field_attention.eager(qkv, 0.5), few_field_attention.__wrapped__(qkv, 0.5))
    torch.testing.assert_close(
        few_field_attention_grad.eager(out_grad, qkv, att[1], 0.5),
        few_field_attention_grad.__wrapped__(out_grad, qkv, att[1], 0.5),
    )


def test_kernel_falls_back_to_eager_once_when_compiling_fails(compiling, monkeypatch):
    calls = []

    def broken_compile(fn, **kw):
        def run(*a):
            calls.append(kw)
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)

    @compiled.kernel
    def double(x):
        return x * 2

    x = torch.arange(4.0)
    with pytest.warns(RuntimeWarning, match="compiling .*double failed .*no C\\+\\+ compiler"):
        torch.testing.assert_close(double(x), x * 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "rlrec: compiling")  # warned once; then eager, no new try
        torch.testing.assert_close(double(x + 1), (x + 1) * 2)
    assert calls == [{"dynamic": True}]
    compiled.set_enabled(False)  # switched off: never compiled
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled while switched off"))

    @compiled.kernel
    def triple(x):
        return x * 3

    torch.testing.assert_close(triple(x), x * 3)


def test_dice_train_node_equals_batch_norm_form_with_running_statistics():
    x = torch.randn(50, 7, dtype=torch.double) * 3 + 1
    alpha = torch.randn(7, dtype=torch.double, requires_grad=True)
    assert gradcheck(lambda x, a: DiceTrain.apply(x, a, 1e-8)[0], (x.requires_grad_(), alpha))
    torch.manual_seed(0)
    fused = Dice(7).double()
    torch.nn.init.uniform_(fused.alpha, -1, 1)
    plain = copy.deepcopy(fused)
    for _ in range(3):  # three training steps: values, gradients and the running statistics agree
        x = torch.randn(4, 10, 7, dtype=torch.double, requires_grad=True) * 2
        out = fused(x)
        assert "DiceTrain" in type(out.grad_fn.next_functions[0][0]).__name__  # under the reshape
        ref = plain.forward_plain(x)
        torch.testing.assert_close(out, ref)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, fused.alpha], grad)
        for g, want in zip(got, torch.autograd.grad(ref, [x, plain.alpha], grad)):
            torch.testing.assert_close(g, want)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fused.bn, name), getattr(plain.bn, name))
    fused.eval()
    x = torch.randn(6, 7, dtype=torch.double)
    torch.testing.assert_close(fused(x), plain.eval().forward_plain(x))  # eval: running statistics


@pytest.mark.parametrize("hidden", [(64,), (8, 4)])
@pytest.mark.parametrize("act", ["dice", "relu"])
def test_target_attention_split_first_layer_equals_the_concatenation(hidden, act):
    torch.manual_seed(0)
    att = TargetAttention(12, hidden, act).double()
    q = torch.randn(6, 12, dtype=torch.double, requires_grad=True)
    k = torch.randn(6, 5, 12, dtype=torch.double, requires_grad=True)
    mask = torch.rand(6, 5) > 0.3
    out = att.scores(q, k, mask)
    assert out.shape == (6, 5) and (out[~mask] == 0).all()
    assert_same_values_and_gradients(out, att.scores_plain(q, k, mask), [q, k, *att.parameters()])
