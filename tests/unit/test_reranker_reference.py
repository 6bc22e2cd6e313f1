"""Every re-ranker's scores against its equations written out here with plain tensor ops, reading the
model's own parameters by name (no submodule's forward is called), on fixed random weights large
enough that the scores are not just the bias terms. The reference sees each list's real candidates
only, so a padded slot leaking into a real one (a mask on the wrong axis, a context state read at a
pad) shows as a mismatch; padded slots must score -inf."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF
from tests.unit.test_rerankers import randomise

RERANKERS = sorted(p.stem for p in (CONF / "reranker").glob("*.yaml"))
STD = 0.5  # the weight matrices' std (`randomise`): every term of the equations moves the scores
LENGTHS = (5, 3, 4)  # real candidates per list: lists 1 and 2 end in padded slots
PV = 3  # width of the initial ranker's personalised vector


def linear(x, p, name):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def layer_norm(x, p, name, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm's
    return (x - mean) / torch.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def candidate_rows(p, spec, batch, b, n, initial):
    """(n, F·D [+ D + PV]) inputs of list b's n real candidates: the user's field rows, then the
    item's (one table, each field's rows after the previous fields'), then with `initial` the field
    Linear([score, rank / n]) (rank = the real candidates scored higher) and the personalised vector."""
    table = p["embedding.embedding.weight"]
    vocab = [f.vocab_size for f in spec.fields]
    offsets = np.cumsum([0, *vocab[:-1]])
    fu = len(spec.user_fields)
    user = torch.as_tensor(spec.user_table[int(batch["user"][b])] + offsets[:fu])  # (Fu,)
    items = torch.as_tensor(spec.item_table[batch["items"][b, :n].numpy()] + offsets[fu:])  # (n, Fi)
    rows = torch.cat([table[user].expand(n, fu, -1), table[items]], dim=1)  # (n, Fu + Fi, D)
    if initial:
        s = batch["initial"][b, :n]
        rank = (s.unsqueeze(0) > s.unsqueeze(1)).sum(1)  # rank[i] = #{j : s_j > s_i}
        field = linear(torch.stack([s, rank / n], dim=-1), p, "initial.proj")  # (n, D)
        rows = torch.cat([rows, field.unsqueeze(1)], dim=1)
    x = rows.flatten(1)
    return torch.cat([x, batch["initial_pv"][b, :n]], dim=-1) if initial else x


def encoder_layer(x, p, name, heads):
    """Post-norm Transformer block on one list (n, M) (torch's default, as in the PRM and SetRank
    papers: MAB(X, X) = LN(H + FFN(H)), H = LN(X + MultiHead(X, X, X)), FFN = W2 relu(W1 x))."""
    n, m = x.shape
    d = m // heads
    qkv = x @ p[f"{name}.self_attn.in_proj_weight"].T + p[f"{name}.self_attn.in_proj_bias"]  # (n, 3M)
    q, k, v = qkv.view(n, 3, heads, d).permute(1, 2, 0, 3)  # (h, n, d) each
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v  # (h, n, d)
    a = linear(a.transpose(0, 1).reshape(n, m), p, f"{name}.self_attn.out_proj")  # heads concatenated
    h = layer_norm(x + a, p, f"{name}.norm1")
    ffn = linear(torch.relu(linear(h, p, f"{name}.linear1")), p, f"{name}.linear2")
    return layer_norm(h + ffn, p, f"{name}.norm2")


def dlcm(p, x, cfg):
    """DLCM eq. 2–4 on one list: x ← elu(W x + b); a GRU (torch's form: the reset gate scales
    U_n h + b_hn, Cho et al. scale h before U_n) reads the list, top first unless `reverse` (the
    paper's eq. 3 reads it bottom-up, so the top is closest to s_n); φ(o_i, s_n) = V (o_i ⊙ tanh(W s_n
    + b)), the paper's φ with one row (k = 1) and a weight per GRU unit."""
    x = F.elu(linear(x, p, "input.0"))  # (n, H)
    if cfg.get("reverse"):
        x = x.flip(0)
    w_ih, w_hh, b_ih, b_hh = (p[f"gru.{w}_l0"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    h, outs = x.new_zeros(w_hh.shape[1]), []
    for x_t in x:
        gx_r, gx_z, gx_n = (w_ih @ x_t + b_ih).chunk(3)  # PyTorch's gate order: reset, update, new
        gh_r, gh_z, gh_n = (w_hh @ h + b_hh).chunk(3)
        r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
        h = (1 - z) * torch.tanh(gx_n + r * gh_n) + z * h
        outs.append(h)
    o = torch.stack(outs)  # (n, H); s_n = h, the state after the list's last real candidate
    if cfg.get("reverse"):
        o = o.flip(0)
    return (o * torch.tanh(linear(h, p, "context"))) @ p["score.weight"][0]


def prm(p, x, cfg):
    """PRM eq. 2–8 on one list: E = W[x ; pv] + b + PE (the learned position embedding of the initial
    rank is added after the projection: the paper adds it before, the same family for a learned PE),
    Transformer blocks, a linear score per item."""
    h = linear(x, p, "proj") + p["position.weight"][: len(x)]
    for i in range(cfg["num_layers"]):
        h = encoder_layer(h, p, f"encoder.layers.{i}", cfg["num_heads"])
    return linear(h, p, "out").squeeze(-1)


def setrank(p, x, cfg):
    """SetRank eq. 8–12 on one set: a row-wise projection, stacked MSABs (no positions, no induced
    points: the paper's MSAB variant), a row-wise linear score."""
    h = linear(x, p, "proj")
    for i in range(cfg["num_layers"]):
        h = encoder_layer(h, p, f"blocks.layers.{i}", cfg["num_heads"])
    return linear(h, p, "out").squeeze(-1)


TINY = {"embed_dim": 4, "model_dim": 8, "num_layers": 2, "num_heads": 2, "ffn_dim": 12, "dropout": 0.0}
CASES = {  # name: (conf, overrides, reference)
    "dlcm": ("dlcm", {"embed_dim": 4, "hidden_dim": 8}, dlcm),
    "dlcm-reverse": ("dlcm", {"embed_dim": 4, "hidden_dim": 8, "reverse": True}, dlcm),
    "prm": ("prm", {**TINY, "max_len": 8}, prm),
    "setrank": ("setrank", TINY, setrank),
}


def build(conf, spec, overrides):
    node = OmegaConf.merge(OmegaConf.load(CONF / "reranker" / f"{conf}.yaml"), overrides)
    return randomise(instantiate(node)(features=spec), STD)


@pytest.fixture()
def batch(tiny_prep):
    """3 lists of 5 slots with 5, 3 and 4 real candidates; the padded slots hold real item ids,
    initial scores and vectors, so any of them leaking into a real slot changes its score."""
    spec, g = tiny_prep.spec, torch.Generator().manual_seed(1)
    B, N = len(LENGTHS), max(LENGTHS)
    return {
        "user": torch.randint(1, spec.num_users + 1, (B,), generator=g),
        "items": torch.randint(1, spec.num_items + 1, (B, N), generator=g),
        "mask": torch.arange(N) < torch.tensor(LENGTHS).unsqueeze(1),  # (B, N)
        "initial": torch.randn(B, N, generator=g),
        "initial_pv": torch.randn(B, N, PV, generator=g),
    }


def test_every_reranker_has_a_reference():
    assert {conf for conf, _, _ in CASES.values()} == set(RERANKERS)


@pytest.mark.parametrize("mode", ["eval", "train"])  # no_grad eval: torch's fused encoder layer
@pytest.mark.parametrize("initial", [False, True], ids=["papers_input", "initial_input"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_scores_equal_the_written_out_equations(case, initial, mode, tiny_prep, batch):
    """With the papers' input and with the initial ranker's score, rank and personalised vector."""
    conf, overrides, reference = CASES[case]
    if initial:
        overrides = {**overrides, "initial_input": True, "personal_vector": True, "personal_dim": PV}
    model = build(conf, tiny_prep.spec, overrides).train(mode == "train")
    with torch.set_grad_enabled(mode == "train"):
        scores = model(batch)  # (B, N)
    p = {k: v.detach() for k, v in model.named_parameters()}
    cfg = {**OmegaConf.load(CONF / "reranker" / f"{conf}.yaml"), **overrides}
    m = batch["mask"]
    assert scores.shape == m.shape and torch.isneginf(scores[~m]).all()
    rows = [candidate_rows(p, tiny_prep.spec, batch, b, n, initial) for b, n in enumerate(LENGTHS)]
    ref = torch.cat([reference(p, x, cfg) for x in rows])  # the real slots, list by list
    assert ref.std() > 0.1, "the scores barely differ: a bias-only output would pass"
    torch.testing.assert_close(scores[m].detach(), ref, rtol=1e-5, atol=1e-5)
