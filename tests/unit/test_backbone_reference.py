"""Every CTR backbone's logits against a hand-written reference of its paper's equations.

Each backbone is built from its conf/backbone yaml (shrunk: D = 4, two-layer towers) on a hand-made
FeatureSpec (2 user fields, 2 item fields) and a 6-row batch whose histories are full, partial,
repeated and empty (right-padded, id 0). Every parameter is redrawn from N(0, 0.3²) so the
interactions, not the biases, set the logits. The references below are written with plain torch ops
on the model's own parameter tensors (read by name) and choose their branches from the config, never
from the module: they share no code with the models' forwards or rlrec.layers. Where the code departs
from the paper the reference follows the code, and a comment says so.

Checked: eval mode with no gradient (torch's embedding kernels, Dice on its running statistics),
train mode with gradients (the scatter-backward lookups, Dice on batch statistics; the parameter
gradients against autograd through the reference), each on the fused fp32 kernels of rlrec.layers
and on their plain forms (`fused_ok` off, what bf16 autocast runs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import rlrec.layers.attention
import rlrec.layers.interaction
import rlrec.layers.mlp
from rlrec.data.features import FeatureSpec, Field
from rlrec.layers.mlp import Dice
from tests.conftest import CONF

FIELDS = (
    Field("user_id", 7, "user"),  # vocab: pad 0, OOV 1, five users 2..6
    Field("gender", 4, "user"),
    Field("item_id", 10, "item"),  # eight items 2..9
    Field("format", 4, "item"),
)
USER_TABLE = torch.tensor([[0, 0], [2, 2], [3, 3], [4, 2], [5, 3], [6, 1]])  # (num_users + 1, Fu)
ITEM_TABLE = torch.tensor([[0, 0], [2, 2], [3, 2], [4, 3], [5, 3], [6, 2], [7, 1], [8, 3], [9, 2]])
SPEC = FeatureSpec(FIELDS, 5, 5, 8, USER_TABLE.numpy(), ITEM_TABLE.numpy())
# every field's rows in the one shared table: offset = the vocab sizes of the fields before it
OFFSETS = torch.tensor(np.cumsum([0] + [f.vocab_size for f in FIELDS])[:-1])
BATCH = {
    "user": torch.tensor([1, 2, 3, 4, 5, 1]),
    "item": torch.tensor([3, 1, 8, 5, 2, 7]),
    "history": torch.tensor(
        [[2, 5, 7, 1, 4], [6, 3, 0, 0, 0], [0, 0, 0, 0, 0], [8, 8, 2, 0, 0], [1, 0, 0, 0, 0], [4, 6, 3, 5, 0]]
    ),  # (B, L): full, partial, empty, a repeated item, right padding
    "label": torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]),
}
STD = 0.5

SMALL = {  # the conf's model at toy size: every width a few units
    "autoint": {"embed_dim": 4, "num_layers": 2, "num_heads": 2, "head_dim": 3},
    "dcn": {"embed_dim": 4, "mlp_dims": [8], "num_layers": 2},
    "deepfm": {"embed_dim": 4, "mlp_dims": [8, 6]},
    "dien": {"embed_dim": 4, "mlp_dims": [8, 6], "aux_dims": [6]},
    "din": {"embed_dim": 4, "mlp_dims": [8, 6], "attention_dims": [8, 6]},
    "fibinet": {"embed_dim": 4, "mlp_dims": [8]},
    "fignn": {"embed_dim": 4, "num_heads": 2, "head_dim": 3, "num_layers": 2},
}
CASES = [  # (backbone, overrides of its yaml): the yaml's defaults, then its documented options
    ("autoint", {}),
    ("autoint", {"scale": True, "residual": False, "mlp_dims": [8]}),  # AutoInt+
    ("dcn", {}),
    ("dcn", {"version": "v2"}),
    ("dcn", {"mlp_dims": []}),
    ("deepfm", {}),
    ("dien", {}),
    ("dien", {"hidden_dim": 5}),
    ("din", {}),
    ("din", {"attention_softmax": True}),
    ("fibinet", {}),
    ("fibinet", {"bilinear_type": "field_all", "first_order": False}),
    ("fibinet", {"bilinear_type": "field_each"}),
    ("fignn", {}),
    ("fignn", {"self_attention": False, "score_dims": [5]}),
    ("fignn", {"residual": False}),
]


# ---------------------------------------------------------------------------------------------------
# shared pieces of the references


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """x Wᵀ + b."""
    return x @ layer.weight.t() + (layer.bias if layer.bias is not None else 0)


def dice(s: torch.Tensor, unit: Dice, train: bool) -> torch.Tensor:
    """DIN eq. 9: f(s) = p(s)·s + (1 − p(s))·α·s, p(s) = σ((s − E[s]) / √(Var[s] + ε)); E and Var over
    every row of the batch (every leading position) in training, the running statistics in eval."""
    rows = s.reshape(-1, s.shape[-1])
    if train:
        mean, var = rows.mean(0), rows.var(0, unbiased=False)
    else:
        mean, var = unit.bn.running_mean, unit.bn.running_var
    p = torch.sigmoid((s - mean) / torch.sqrt(var + unit.bn.eps))
    return p * s + (1 - p) * unit.alpha * s


def mlp(x: torch.Tensor, seq: nn.Sequential, train: bool) -> torch.Tensor:
    """Hidden layers h ← act(W h + b), then the output layer W h + b (no BatchNorm, no dropout here)."""
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    acts = [m for m in seq if not isinstance(m, nn.Linear)]
    assert len(acts) in (len(linears), len(linears) - 1), "Linear → activation per hidden layer"
    for k, layer in enumerate(linears):
        x = linear(x, layer)
        if k < len(acts):
            act = acts[k]
            if isinstance(act, Dice):
                x = dice(x, act, train)
            elif isinstance(act, nn.ReLU):
                x = x.clamp_min(0)
            elif isinstance(act, nn.Sigmoid):
                x = 1 / (1 + torch.exp(-x))
            else:
                raise AssertionError(f"no reference for {act}")
    return x


def field_rows(model, batch: dict, pool: bool) -> torch.Tensor:
    """(B, F, D') rows of the model's one embedding table: the user's fields, the target item's fields,
    and with `pool` the mean of the real (id > 0) history items' fields per item field (0 if the
    history is empty: the AutoInt / DeepFM average over a multi-valued field's values)."""
    table = model.embedding.embedding.weight  # (V, D')
    parts = [table[USER_TABLE[batch["user"]] + OFFSETS[:2]], table[ITEM_TABLE[batch["item"]] + OFFSETS[2:]]]
    if pool:
        hist = table[ITEM_TABLE[batch["history"]] + OFFSETS[2:]]  # (B, L, Fi, D')
        real = (batch["history"] > 0).float()  # (B, L)
        total = (hist * real[:, :, None, None]).sum(1)  # (B, Fi, D')
        parts.append(total / real.sum(1).clamp_min(1)[:, None, None])
    return torch.cat(parts, dim=1)


def behaviours(model, batch: dict) -> torch.Tensor:
    """(B, L, Fi·D): every history position's item fields, concatenated (padding included)."""
    table = model.embedding.embedding.weight
    return table[ITEM_TABLE[batch["history"]] + OFFSETS[2:]].flatten(2)


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step in torch's gate order (r, z, n): r = σ(W_r x + b + U_r h + b'), z likewise,
    n = tanh(W_n x + b + r ∘ (U_n h + b')), h' = (1 − z) ∘ n + z ∘ h. The papers' update gate u is
    1 − z (DIEN eqs. 2–5, FiGNN eq. 8): the same family of functions."""
    H = h.shape[-1]
    gi, gh = x @ w_ih.t() + b_ih, h @ w_hh.t() + b_hh
    r = torch.sigmoid(gi[..., :H] + gh[..., :H])
    z = torch.sigmoid(gi[..., H : 2 * H] + gh[..., H : 2 * H])
    n = torch.tanh(gi[..., 2 * H :] + r * gh[..., 2 * H :])
    return (1 - z) * n + z * h


def self_attention(x, layer, num_heads: int, head_dim: int, residual: bool, scale: bool):
    """AutoInt's interacting layer (eqs. 5–8) per head h: α_mk = softmax_k(<W_Q e_m, W_K e_k> [/ √d]),
    ẽ_m = Σ_k α_mk W_V e_k; heads concatenated; e_m^Res = ReLU(ẽ_m + W_Res e_m).
    The projections are the rows [W_Q; W_K; W_V] of `layer.qkv`, each head a block of d rows.
    x (B, F, D_in) → (B, F, H·d)."""
    Hd = num_heads * head_dim
    w_q, w_k, w_v = layer.qkv.weight[:Hd], layer.qkv.weight[Hd : 2 * Hd], layer.qkv.weight[2 * Hd :]
    heads = []
    for h in range(num_heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        q, k, v = x @ w_q[rows].t(), x @ w_k[rows].t(), x @ w_v[rows].t()  # (B, F, d)
        s = q @ k.transpose(1, 2)  # (B, F, F)
        if scale:
            s = s / head_dim**0.5
        heads.append(torch.softmax(s, dim=-1) @ v)
    out = torch.cat(heads, dim=-1)  # (B, F, H·d)
    if residual:
        out = out + x @ layer.residual.weight.t()
    return out.clamp_min(0)


def pairs(num_fields: int):
    """The field pairs i < j, i-major: (0, 1), (0, 2), …, (F − 2, F − 1)."""
    return [(i, j) for i in range(num_fields) for j in range(i + 1, num_fields)]


# ---------------------------------------------------------------------------------------------------
# the references, one per backbone: (model, cfg, batch, train) → logits (B,)


def deepfm(m, cfg, batch, train):
    """DeepFM eqs. 1–5: y_FM + y_DNN, y_FM = <w, x> + Σ_{i<j} <V_i, V_j> (the pairs summed one by one,
    not the O(FD) identity the layer uses), y_DNN = MLP(flattened field embeddings). Code's choice:
    w is the last column of the embedding table, so the pooled history field's w is the mean of its
    items' w; the paper's global bias w_0 is the DNN's output bias."""
    values = field_rows(m, batch, pool=True)  # (B, F, D + 1)
    e, w = values[..., :-1], values[..., -1]
    second = sum((e[:, i] * e[:, j]).sum(-1) for i, j in pairs(e.shape[1]))
    return w.sum(1) + second + mlp(e.flatten(1), m.dnn, train).squeeze(-1)


def dcn(m, cfg, batch, train):
    """DCN: x_0 = the flattened field embeddings (eq. 2); v1 cross layer x_{l+1} = x_0 (x_lᵀ w_l) + b_l
    + x_l (eq. 3), v2 (DCN-V2 eq. 1) x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l; deep MLP on x_0 (eq. 4);
    logit = w_logitᵀ [x_L; h_L] + b (eq. 5), with w_d and b the deep MLP's output layer."""
    x0 = field_rows(m, batch, pool=True).flatten(1)  # (B, F·D)
    x = x0
    for l in range(cfg.num_layers):
        if cfg.version == "v1":
            x = x0 * (x @ m.cross.w[l].weight[0]).unsqueeze(1) + m.cross.b[l] + x
        else:
            x = x0 * linear(x, m.cross.w[l]) + x
    if not cfg.mlp_dims:
        return linear(x, m.out).squeeze(-1)
    return x @ m.out.weight[0] + mlp(x0, m.deep, train).squeeze(-1)


def din(m, cfg, batch, train):
    """DIN eq. 3: v_U = Σ_j a(e_j, v_A) e_j over the real behaviours, a = the activation unit (MLP with
    Dice, DIN eq. 9) on [v_A, e_j, v_A − e_j, v_A ⊙ e_j] (the authors' code's input; the paper's
    figure shows the out product), no softmax unless `attention_softmax`; then MLP([user fields,
    item fields, v_U]). Code's choice: in training the unit's Dice statistics run over all B·L
    positions, padding included."""
    e = field_rows(m, batch, pool=False)  # (B, Fu + Fi, D)
    target = e[:, 2:].flatten(1)  # (B, Fi·D) v_A
    keys = behaviours(m, batch)  # (B, L, Fi·D)
    q = target.unsqueeze(1).expand_as(keys)
    w = mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1), m.attention.unit, train).squeeze(-1)  # (B, L)
    interest = []
    for b, real in enumerate(batch["history"] > 0):
        a = w[b, real].softmax(0) if cfg.attention_softmax else w[b, real]
        interest.append(a @ keys[b, real])  # (Fi·D,), 0 for an empty history
    return mlp(torch.cat([e.flatten(1), torch.stack(interest)], dim=1), m.mlp, train).squeeze(-1)


def dien(m, cfg, batch, train):
    """DIEN, one sample at a time over its real behaviours only: interest extractor GRU h_t (eqs. 2–5),
    a_t = softmax_t(h_t W e_a) (eq. 8), AUGRU with ũ_t = a_t u_t, h'_t = (1 − ũ_t) h'_{t−1} + ũ_t h̃_t
    (eqs. 11–12) from h'_0 = 0; MLP([user fields, item fields, h'_T]) (an empty history: h'_T = 0)."""
    e = field_rows(m, batch, pool=False)  # (B, Fu + Fi, D)
    target = e[:, 2:].flatten(1)  # (B, Fi·D) e_a
    keys = behaviours(m, batch)  # (B, L, Fi·D)
    H = cfg.hidden_dim or target.shape[1]
    g, aug = m.extractor, m.evolving
    evolved = []
    for b, real in enumerate(batch["history"] > 0):
        h, states = target.new_zeros(H), []
        for x in keys[b, real]:
            h = gru_step(x, h, g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0)
            states.append(h)
        h = target.new_zeros(H)
        if states:
            interests = torch.stack(states)  # (n, H)
            att = torch.softmax(interests @ (m.attention.weight @ target[b]), dim=0)  # (n,)
            for i_t, a_t in zip(interests, att):
                gx, gh = linear(i_t, aug.x2h), h @ aug.h2h.weight.t()  # (3H,): [u; r; h̃] blocks
                u = torch.sigmoid(gx[:H] + gh[:H])
                r = torch.sigmoid(gx[H : 2 * H] + gh[H : 2 * H])
                cand = torch.tanh(gx[2 * H :] + r * gh[2 * H :])
                h = (1 - a_t * u) * h + a_t * u * cand
        evolved.append(h)
    return mlp(torch.cat([e.flatten(1), torch.stack(evolved)], dim=1), m.mlp, train).squeeze(-1)


def autoint(m, cfg, batch, train):
    """AutoInt: `num_layers` interacting layers over the fields (eqs. 5–8), ŷ = wᵀ(e_1^Res ⊕ … ⊕ e_F^Res)
    + b (eq. 9); AutoInt+ adds a DNN on the flattened field embeddings."""
    e = field_rows(m, batch, pool=True)  # (B, F, D)
    x = e
    for layer in m.attention:
        x = self_attention(x, layer, cfg.num_heads, cfg.head_dim, cfg.residual, cfg.scale)
    logit = linear(x.flatten(1), m.out).squeeze(-1)
    if cfg.mlp_dims:
        logit = logit + mlp(e.flatten(1), m.dnn, train).squeeze(-1)
    return logit


def fibinet(m, cfg, batch, train):
    """FiBiNet: SENET z_f = mean_d e_f, A = ReLU(W_2 ReLU(W_1 z)), v_f = a_f e_f; bilinear p_ij =
    (e_i · W) ⊙ e_j, q_ij likewise on V, W shared / W_i / W_ij by `bilinear_type`; the combination
    [p, q] → DNN; ŷ = w_0 + Σ_i w_i x_i + y_d (w_0 the DNN's output bias)."""
    values = field_rows(m, batch, pool=True)
    e, first = (values[..., :-1], values[..., -1].sum(1)) if cfg.first_order else (values, 0)
    z = e.mean(-1)  # (B, F)
    excite = m.senet.excitation
    a = ((z @ excite[0].weight.t()).clamp_min(0) @ excite[2].weight.t()).clamp_min(0)  # (B, F)
    v = e * a.unsqueeze(-1)

    def bilinear(x, weight):  # (B, F, D), (n, D, D) → (B, P·D)
        out = []
        for p, (i, j) in enumerate(pairs(x.shape[1])):
            k = {"field_all": 0, "field_each": i, "field_interaction": p}[cfg.bilinear_type]
            out.append((x[:, i] @ weight[k]) * x[:, j])
        return torch.cat(out, dim=1)

    pq = torch.cat([bilinear(e, m.bilinear_e.weight), bilinear(v, m.bilinear_v.weight)], dim=1)
    return mlp(pq, m.dnn, train).squeeze(-1) + first


def fignn(m, cfg, batch, train):
    """FiGNN: H¹ = the multi-head self-attention layer on the field embeddings (§3.3; the code's layer
    is AutoInt's, with the 1/√d scale and the residual projection W_Res), or the embeddings;
    A[i, j] = softmax_{j ≠ i} LeakyReLU(w_wᵀ [h_i¹ ‖ h_j¹]), A[i, i] = 0 (eqs. 4–5; the code, like
    FuxiCTR, builds the graph once from H¹ and aggregates node i over its row A[i, ·]);
    a_i = W_in^i Σ_j A[i, j] W_out^j h_j + b_p, h_i ← GRU(h_i, a_i) [+ h_i¹] for `num_layers` steps
    (eqs. 6–10); logit = Σ_i MLP_2(h_i) · MLP_1(h_i) (eqs. 11–12)."""
    x = field_rows(m, batch, pool=True)  # (B, F, D)
    if cfg.self_attention:
        x = self_attention(x, m.self_attention, cfg.num_heads, cfg.head_dim, residual=True, scale=True)
    h1, (B, F, d) = x, x.shape
    w = m.edge_attention.weight[0]  # (2d,) W_w
    A = h1.new_zeros(B, F, F)
    for i in range(F):
        others = [j for j in range(F) if j != i]
        logits = (h1[:, i] @ w[:d]).unsqueeze(1) + h1[:, others] @ w[d:]  # (B, F − 1)
        A[:, i, others] = torch.softmax(torch.where(logits > 0, logits, cfg.leaky_slope * logits), dim=-1)
    h = h1
    for _ in range(cfg.num_layers):
        msg = torch.stack([h[:, j] @ m.w_out[j].t() for j in range(F)], dim=1)  # (B, F, d) W_out^j h_j
        into = (A.unsqueeze(-1) * msg.unsqueeze(1)).sum(2)  # (B, F, d): Σ_j A[i, j] W_out^j h_j
        agg = torch.stack([into[:, i] @ m.w_in[i].t() for i in range(F)], dim=1) + m.bias  # a_i
        h = gru_step(agg, h, m.gru.weight_ih, m.gru.weight_hh, m.gru.bias_ih, m.gru.bias_hh)
        if cfg.residual:
            h = h + h1
    return (mlp(h, m.weight, train) * mlp(h, m.score, train)).sum(dim=(1, 2))


REFERENCES = {f.__name__: f for f in (autoint, dcn, deepfm, dien, din, fibinet, fignn)}


# ---------------------------------------------------------------------------------------------------


def build(name: str, overrides: dict):
    """The backbone from its yaml at toy size, every parameter ~ N(0, STD²), Dice's running
    statistics random; → (model, resolved cfg)."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "backbone" / f"{name}.yaml"), SMALL[name], overrides)
    torch.manual_seed(0)
    model = instantiate(cfg)(features=SPEC, adapter=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * STD)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * STD)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model, cfg


def test_every_backbone_has_a_reference():
    assert sorted(REFERENCES) == sorted(p.stem for p in (CONF / "backbone").glob("*.yaml"))
    assert {name for name, _ in CASES} == set(REFERENCES)


@pytest.mark.parametrize("path", ["fused", "plain"])
@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{k}" for k, (n, _) in enumerate(CASES)])
def test_logits_match_the_reference_in_eval(name, overrides, path, monkeypatch):
    if path == "plain":
        for module in (rlrec.layers.mlp, rlrec.layers.interaction, rlrec.layers.attention):
            monkeypatch.setattr(module, "fused_ok", lambda x: False)
    model, cfg = build(name, overrides)
    model.eval()
    with torch.no_grad():
        out = model(BATCH)
        ref = REFERENCES[name](model, cfg, BATCH, train=False)
        # one row alone: B·L < catalogue size, the history is looked up per sample, not per item
        row = model({k: v[:1] for k, v in BATCH.items()})
    assert ref.std() > 0.25, f"{name}: logits barely vary ({ref}); the test would not see a wrong term"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(row, ref[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["fused", "plain"])
@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{k}" for k, (n, _) in enumerate(CASES)])
def test_logits_and_gradients_match_the_reference_in_training(name, overrides, path, monkeypatch):
    """Training mode: batch statistics in Dice, the lookups' scatter backwards, the hand-written
    backwards of the fused kernels; gradients against autograd through the reference."""
    if path == "plain":
        for module in (rlrec.layers.mlp, rlrec.layers.interaction, rlrec.layers.attention):
            monkeypatch.setattr(module, "fused_ok", lambda x: False)
    model, cfg = build(name, overrides)
    model.train()
    params = [p for p in model.parameters()]
    out = model(BATCH)
    ref = REFERENCES[name](model, cfg, BATCH, train=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(out, params, up, allow_unused=True)
    want = torch.autograd.grad(ref, params, up, allow_unused=True)
    for (n, p), a, b in zip(model.named_parameters(), got, want):
        a = torch.zeros_like(p) if a is None else a.to_dense()
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda s, n=n: f"{name} ∂{n}: {s}")
