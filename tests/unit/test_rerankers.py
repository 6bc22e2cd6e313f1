"""Re-rankers (parametrised over their confs), list losses and list metrics on hand-computed cases."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlrec.data.rerank import kar_lists
from rlrec.knowledge.adapters import HybridExpertAdaptor
from rlrec.metrics import list_metrics, mean_list_metrics
from rlrec.tasks.rerank import listwise_softmax, pointwise_bce
from tests.conftest import CONF

RERANKERS = sorted(p.stem for p in (CONF / "reranker").glob("*.yaml"))


def build(name, spec, seed=0, adapter=None, **overrides):
    torch.manual_seed(seed)
    node = OmegaConf.merge(OmegaConf.load(CONF / "reranker" / f"{name}.yaml"), overrides)
    return instantiate(node)(features=spec, adapter=adapter)


def randomise(model, std, seed=0):
    """Seeded N(0, std²) weight matrices and embedding tables; biases and LayerNorm shifts N(0, 0.1²),
    LayerNorm scales 1 + N(0, 0.1²). The embedding's default std (1e-4) leaves a fresh re-ranker's
    scores at its bias terms, whatever the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if param.dim() > 1:
                torch.nn.init.normal_(param, std=std, generator=g)
            else:
                scale = ".norm" in name and name.endswith(".weight")
                torch.nn.init.normal_(param, mean=float(scale), std=0.1, generator=g)
    return model


@pytest.fixture()
def lists(tiny_prep):
    t = kar_lists(tiny_prep, "train", chunk=3, list_len=6, seed=0).tensors()
    t["mask"][:4, 4:] = False  # some shorter lists
    t["items"][:4, 4:] = 0
    t["labels"][:4, 4:] = 0
    return {k: v[:16] for k, v in t.items()}


@pytest.mark.parametrize("name", RERANKERS)
def test_shape_mask_and_gradients(name, tiny_prep, lists):
    model = build(name, tiny_prep.spec).train()
    scores = model(lists)
    assert scores.shape == lists["items"].shape
    assert torch.isinf(scores[~lists["mask"]]).all() and torch.isfinite(scores[lists["mask"]]).all()
    listwise_softmax(scores, lists["labels"], lists["mask"]).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"{name}: no gradient reaches {dead}"


@pytest.mark.parametrize("name", RERANKERS)
def test_padding_slots_are_ignored(name, tiny_prep, lists):
    model = build(name, tiny_prep.spec).eval()
    wider = {
        "user": lists["user"],
        "items": torch.nn.functional.pad(lists["items"], (0, 3)),
        "labels": torch.nn.functional.pad(lists["labels"], (0, 3)),
        "mask": torch.nn.functional.pad(lists["mask"], (0, 3), value=False),
    }
    with torch.no_grad():
        a, b = model(lists), model(wider)[:, : lists["items"].shape[1]]
    m = lists["mask"]
    torch.testing.assert_close(a[m], b[m], rtol=1e-5, atol=1e-5)
    # and a padded slot's item id does not matter
    other = {**lists, "items": lists["items"].masked_fill(~m, 3)}
    with torch.no_grad():
        torch.testing.assert_close(model(other)[m], a[m], rtol=1e-5, atol=1e-5)


def test_setrank_is_permutation_equivariant(tiny_prep, lists):
    model = build("setrank", tiny_prep.spec).eval()
    full = {k: v[4:] for k, v in lists.items()}  # full-length lists
    perm = torch.randperm(full["items"].shape[1], generator=torch.Generator().manual_seed(0))
    permuted = {**full, **{k: full[k][:, perm] for k in ("items", "labels", "mask")}}
    with torch.no_grad():
        torch.testing.assert_close(model(permuted), model(full)[:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", RERANKERS)
def test_initial_ranking_input_is_read_only_when_switched_on(name, tiny_prep, lists):
    g = torch.Generator().manual_seed(1)
    a = {**lists, "initial": torch.randn(lists["items"].shape, generator=g)}
    b = {**lists, "initial": torch.randn(lists["items"].shape, generator=g)}
    m = lists["mask"]
    off = build(name, tiny_prep.spec).eval()
    on = build(name, tiny_prep.spec, initial_input=True).train()
    with torch.no_grad():
        torch.testing.assert_close(off(a), off(b))  # the papers' input: the scores are never read
    listwise_softmax(on(a), lists["labels"], m).backward()
    assert on.initial.proj.weight.grad.abs().sum() > 0
    on.eval()
    with torch.no_grad():
        assert not torch.allclose(on(a)[m], on(b)[m])
        # a padded slot's score does not matter
        torch.testing.assert_close(on({**a, "initial": a["initial"].masked_fill(~m, 9.0)})[m], on(a)[m])


def test_initial_ranking_field_ranks_from_scores_and_keeps_setrank_equivariant(tiny_prep, lists):
    from rlrec.rerankers import InitialRanking

    field = InitialRanking(4)
    torch.nn.init.eye_(field.proj.weight[:2])  # out[0] = score, out[1] = rank / n
    torch.nn.init.zeros_(field.proj.bias)
    mask = torch.tensor([[True, True, True, False]])
    out = field({"mask": mask, "initial": torch.tensor([[0.2, 0.9, -1.0, 5.0]])})[0, :, 0]
    torch.testing.assert_close(out[:3, 0], torch.tensor([0.2, 0.9, -1.0]))
    torch.testing.assert_close(out[:3, 1], torch.tensor([1 / 3, 0.0, 2 / 3]))  # the pad (5.0) ranks nobody
    model = build("setrank", tiny_prep.spec, initial_input=True).eval()
    full = {k: v[4:] for k, v in lists.items()}
    full["initial"] = torch.randn(full["items"].shape, generator=torch.Generator().manual_seed(2))
    perm = torch.randperm(full["items"].shape[1], generator=torch.Generator().manual_seed(0))
    permuted = {**full, **{k: full[k][:, perm] for k in ("items", "labels", "mask", "initial")}}
    with torch.no_grad():
        torch.testing.assert_close(model(permuted), model(full)[:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", RERANKERS)
def test_initial_ranking_input_learns_a_planted_initial_order(name, tiny_prep):
    """Labels follow the initial ranker's score and nothing else (items drawn at random): with the
    initial ranking as input a re-ranker learns to put the labelled items first; without it, it
    cannot do better than chance on new lists."""
    g = torch.Generator().manual_seed(0)
    M, N = 256, 6
    items = torch.randint(1, tiny_prep.spec.num_items + 1, (M, N), generator=g)
    initial = torch.randn(M, N, generator=g)
    labels = (initial > initial.median(1, keepdim=True).values).float()
    data = {"user": torch.randint(1, tiny_prep.spec.num_users + 1, (M,), generator=g), "items": items,
            "labels": labels, "mask": torch.ones(M, N, dtype=torch.bool), "initial": initial}  # fmt: skip
    train = {k: v[:192] for k, v in data.items()}
    test = {k: v[192:] for k, v in data.items()}
    ndcg = {}
    for switch in (False, True):
        model = build(name, tiny_prep.spec, initial_input=switch).train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(60):
            opt.zero_grad()
            listwise_softmax(model(train), train["labels"], train["mask"]).backward()
            opt.step()
        with torch.no_grad():
            scores = model.eval()(test)
        per_list = list_metrics(scores.numpy(), test["labels"].numpy(), test["mask"].numpy(), ks=(3,))
        ndcg[switch] = mean_list_metrics(per_list)["ndcg@3"]
    assert ndcg[True] > 0.9 and ndcg[True] > ndcg[False] + 0.2, ndcg


@pytest.mark.parametrize("name", RERANKERS)
def test_adaptor_changes_output_only_with_knowledge(name, tiny_prep, lists):
    base = build(name, tiny_prep.spec, seed=3).eval()
    same = build(name, tiny_prep.spec, seed=3, adapter=functools.partial(HybridExpertAdaptor)).eval()
    with torch.no_grad():
        torch.testing.assert_close(base(lists), same(lists))
    spec = tiny_prep.spec.with_knowledge((8, 8))
    model = build(name, spec, seed=3, adapter=functools.partial(HybridExpertAdaptor, hidden=(8,))).eval()
    B, N = lists["items"].shape
    g = torch.Generator().manual_seed(0)
    k1 = {
        **lists,
        "user_knowledge": torch.randn(B, 8, generator=g),
        "item_knowledge": torch.randn(B, N, 8, generator=g),
    }
    k2 = {**k1, "user_knowledge": torch.randn(B, 8, generator=g) * 5}
    with torch.no_grad():
        assert not torch.allclose(model(k1)[lists["mask"]], model(k2)[lists["mask"]])


@pytest.mark.parametrize("adapter", ["hea", "mlp"])
@pytest.mark.parametrize("towers", ["user", "user+item", "tables"])
def test_user_knowledge_adapted_once_per_list_equals_every_candidate_row(adapter, towers, tiny_prep, lists):
    """`list_fields` runs the user's vector through the adapter once per list: its fields and their
    gradients equal adapting the vector repeated for every candidate (the adapter without `towers`)."""
    from rlrec.knowledge.adapters import MLPConnector

    cls = HybridExpertAdaptor if adapter == "hea" else MLPConnector
    dims = (8,) if towers == "user" else (8, 8)
    spec = tiny_prep.spec.with_knowledge(dims)
    B, N = lists["items"].shape
    g = torch.Generator().manual_seed(0)
    batch = dict(lists)
    if towers == "tables":  # knowledge from the model's tables, looked up by user / item id
        user = torch.randn(spec.num_users + 1, 8, generator=g)
        item = torch.randn(spec.num_items + 1, 8, generator=g)
    else:
        batch["user_knowledge"] = torch.randn(B, 8, generator=g)
        if towers == "user+item":
            batch["item_knowledge"] = torch.randn(B, N, 8, generator=g)
    model = build("setrank", spec, seed=3, adapter=functools.partial(cls, hidden=(8,))).train()
    if towers == "tables":
        model.embedding.set_knowledge(user=user, item=item)
    flat = {"user": batch["user"].repeat_interleave(N), "item": batch["items"].reshape(-1)}
    if "user_knowledge" in batch:
        flat["user_knowledge"] = batch["user_knowledge"].repeat_interleave(N, dim=0)
    if "item_knowledge" in batch:
        flat["item_knowledge"] = batch["item_knowledge"].reshape(B * N, -1)
    params = [p for p in model.embedding.parameters() if p.requires_grad]
    once = model.embedding.list_fields(batch)
    every = model.embedding(flat).reshape(B, N, -1, 16)  # every candidate's row adapted
    assert once.shape == every.shape == (B, N, model.embedding.num_fields(), 16)
    torch.testing.assert_close(once, every, rtol=1e-5, atol=1e-6)
    w = torch.randn(once.shape, generator=g)
    for a, b in zip(torch.autograd.grad((once * w).sum(), params, allow_unused=True),
                    torch.autograd.grad((every * w).sum(), params, allow_unused=True)):  # fmt: skip
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_list_metrics_hand_computed():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1], [0.5, 0.4, 0.3, 0.2]])
    labels = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    m = list_metrics(scores, labels, ks=(1, 3))
    # list 0 ranked labels: [0 (0.9), 1 (0.5), 0 (0.3), 1 (0.1)]
    dcg3 = 1 / math.log2(3)
    idcg3 = 1 + 1 / math.log2(3)
    assert m["ndcg@3"][0] == pytest.approx(dcg3 / idcg3)
    assert m["map@3"][0] == pytest.approx(0.5)  # one hit at rank 2: (1/2) / 1 hit
    assert m["click@3"][0] == 1 and m["click@1"][0] == 0
    assert m["ndcg@3"][1] == 0 and m["map@3"][1] == 0  # no positive: 0, kept (KAR)
    assert m["ndcg@1"][2] == 1 and m["map@3"][2] == 1
    std = list_metrics(scores, labels, ks=(3,), map_definition="standard")
    assert std["map@3"][0] == pytest.approx(0.5 / 2)  # divided by min(k, #relevant) = 2
    means = mean_list_metrics(m, labels.any(1), "skip")
    assert means["ndcg@1"] == pytest.approx((0 + 1) / 2)
    assert mean_list_metrics(m)["ndcg@1"] == pytest.approx(1 / 3)


def test_list_losses():
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    scores = torch.tensor([[2.0, 0.0, float("-inf")], [1.0, 2.0, 3.0]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    torch.testing.assert_close(listwise_softmax(scores, labels, mask), expected)  # empty list skipped
    finite = scores.masked_fill(~mask, 0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(finite[mask], labels[mask])
    torch.testing.assert_close(pointwise_bce(scores, labels, mask), bce)


@pytest.mark.parametrize("name", RERANKERS)
def test_runs_under_bf16_autocast_close_to_fp32(name, tiny_prep, lists):
    """trainer.precision=bf16-mixed: forward and backward run, and the scores stay within a few bf16
    roundings of fp32's: 4 eps (2⁻⁵) of the scores' scale, where a bf16 forward is about 1–2e-2 off
    (randomised weights: the scores depend on every input, not only on the bias terms); a wrong cast
    or a scale missing from one path is off by far more."""
    model = randomise(build(name, tiny_prep.spec), std=0.2).eval()
    m = lists["mask"]
    ref = model(lists).detach()
    scale = ref[m].abs().max()
    assert ref[m].std() > 0.1 * scale, "the scores barely differ: a bias-only output would pass"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(lists)
        listwise_softmax(scores.float(), lists["labels"], m).backward()
    assert torch.isinf(scores[~m]).all() and torch.isfinite(scores[m]).all()
    err = (scores[m].float() - ref[m]).abs().max()
    assert err <= 4 * torch.finfo(torch.bfloat16).eps * scale, (err / scale).item()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", RERANKERS)
def test_the_personalised_vector_is_read_only_with_the_initial_input(name, tiny_prep, lists):
    """PRM §4.2: E' = [x_i ; pv_i] + PE_i (and the same input for DLCM and SetRank): with
    `initial_input` and `personal_dim` the candidate's personalised vector is an input (its gradient
    flows, changing it changes the scores), padded slots' vectors do not matter; without
    `initial_input` it is never read."""
    g = torch.Generator().manual_seed(3)
    B, N = lists["items"].shape
    a = {**lists, "initial": torch.randn(B, N, generator=g), "initial_pv": torch.randn(B, N, 5, generator=g)}
    b = {**a, "initial_pv": torch.randn(B, N, 5, generator=g)}
    m = lists["mask"]
    on = build(name, tiny_prep.spec, initial_input=True, personal_vector=True, personal_dim=5).eval()
    off = build(name, tiny_prep.spec, personal_vector=True, personal_dim=5).eval()
    without = build(name, tiny_prep.spec, initial_input=True, personal_vector=False, personal_dim=5).eval()
    first = {"prm": "proj", "setrank": "proj", "dlcm": "input"}[name]

    def width(module):
        return [x for x in module.modules() if isinstance(x, torch.nn.Linear)][0].in_features

    assert width(getattr(on, first)) == width(getattr(off, first)) + on.initial.proj.out_features + 5
    assert width(getattr(without, first)) == width(getattr(on, first)) - 5
    with torch.no_grad():
        assert not torch.allclose(on(a)[m], on(b)[m])
        torch.testing.assert_close(off(a), off(b))
        torch.testing.assert_close(without(a), without(b))
        pad = {**a, "initial_pv": a["initial_pv"].masked_fill(~m.unsqueeze(-1), 7.0)}
        torch.testing.assert_close(on(pad)[m], on(a)[m])
    a["initial_pv"].requires_grad_(True)
    listwise_softmax(on.train()(a), lists["labels"], m).backward()
    assert a["initial_pv"].grad[m].abs().sum() > 0


@pytest.mark.parametrize("backbone", ["din", "deepfm"])
def test_score_rows_gives_scores_and_the_scoring_mlps_last_hidden_layer(backbone, tiny_prep):
    """The initial ranker's personalised vector is its scoring MLP's last hidden layer: the output
    layer applied to it gives the ranker's logit back (DeepFM adds its FM part, so there only the
    width and the determinism are checked); the fused ReLU stack (DeepFM) and the plain layers
    (DIN: Dice) both capture it."""
    from rlrec.data.ctr import TensorBatches, ctr_tensors
    from rlrec.downstream.lists import score_rows, scoring_mlp

    torch.manual_seed(0)
    node = OmegaConf.load(CONF / "backbone" / f"{backbone}.yaml")
    model = instantiate(node)(features=tiny_prep.spec).eval()
    t = ctr_tensors(tiny_prep, "valid")
    scores, pv = score_rows(model, TensorBatches(t, 7))  # several batches
    mlp = scoring_mlp(model)
    width = [m for m in mlp if isinstance(m, torch.nn.Linear)][-2].out_features
    assert scores.shape == (len(t["item"]),) and pv.shape == (len(t["item"]), width)
    with torch.no_grad():
        np.testing.assert_allclose(scores, model(t).numpy(), rtol=1e-5, atol=1e-5)
        if backbone == "din":
            np.testing.assert_allclose(mlp[-1](torch.from_numpy(pv)).squeeze(-1).numpy(), scores, atol=1e-5)
    again = score_rows(model, TensorBatches(t, 1000))[1]
    np.testing.assert_allclose(again, pv, atol=1e-5)
    assert np.abs(pv).sum() > 0


def test_dlcm_reverse_reads_the_real_candidates_bottom_up(tiny_prep, lists):
    """`reverse=True` equals the forward DLCM (same weights) on each list with its real candidates
    reversed, the scores mapped back to their slots; padded slots stay -inf."""
    fwd = build("dlcm", tiny_prep.spec, seed=5).eval()
    rev = build("dlcm", tiny_prep.spec, seed=5, reverse=True).eval()
    rev.load_state_dict(fwd.state_dict())
    m = lists["mask"]
    flipped = {k: v.clone() for k, v in lists.items()}
    for b in range(len(m)):
        n = int(m[b].sum())
        for k in ("items", "labels"):
            flipped[k][b, :n] = lists[k][b, :n].flip(0)
    with torch.no_grad():
        a, f = rev(lists), fwd(flipped)
        assert torch.isneginf(a[~m]).all()
        for b in range(len(m)):
            n = int(m[b].sum())
            torch.testing.assert_close(a[b, :n], f[b, :n].flip(0))
        assert not torch.allclose(a[m], fwd(lists)[m])
