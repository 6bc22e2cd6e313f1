"""Baselines: SASRec (shapes, causality, padding, negatives, metrics, overfitting a toy set) and
the BM25 / dense retrievers on hand-made corpora."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlrec.seqrec import BM25Retriever, DenseRetriever, SASRec, SASRecTask, fit_sasrec, rank_candidates
from rlrec.seqrec.sasrec import hit_ndcg, pad_left, sample_negatives

NUM_ITEMS = 20


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return SASRec(NUM_ITEMS, embed_dim=16, num_layers=2, num_heads=2, dropout=0.2, max_len=12).eval()


@pytest.fixture()
def seq():
    return torch.tensor([[0, 0, 3, 5, 7, 9], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 11]])  # (B=3, L=6)


def test_shapes(model, seq):
    assert model(seq).shape == (3, 6, 16)
    cand = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    scores = model.score(seq, cand)
    assert scores.shape == (3, 4) and torch.isfinite(scores).all()
    full = model.predict_all(seq)
    assert full.shape == (3, NUM_ITEMS + 1)
    assert torch.isneginf(full[:, 0]).all() and torch.isfinite(full[:, 1:]).all()
    torch.testing.assert_close(full.gather(1, cand), scores, rtol=1e-5, atol=1e-5)


def test_causal(model, seq):
    changed = seq.clone()
    changed[:, 4] = 19  # a later item
    with torch.no_grad():
        a, b = model(seq), model(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:2, 4:], b[:2, 4:]), "later positions must see the changed item"


def test_left_padding_is_invariant(model, seq):
    with torch.no_grad():
        a, b = model(seq), model(F.pad(seq, (4, 0)))  # (3, 6, D), (3, 10, D)
    real = seq > 0
    torch.testing.assert_close(a[real], b[:, 4:][real], rtol=1e-5, atol=1e-5)
    assert pad_left([[3, 5, 7, 9]], 6).tolist() == [seq[0].tolist()]


def test_gradients_reach_every_parameter(model, seq):
    model.train()
    task = SASRecTask(model)
    loss = task.training_step({"seq": seq[:, :-1], "target": seq[:, 1:] * (seq[:, :-1] > 0)}, 0)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"no gradient reaches {dead}"


def test_negatives_avoid_the_users_items():
    torch.manual_seed(0)
    exclude = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])  # (B, M)
    pos = exclude[:, 1:]  # (B, 3)
    neg = sample_negatives(pos, exclude, num_items=10)
    assert neg.shape == pos.shape
    assert not (neg.unsqueeze(-1) == exclude.unsqueeze(1)).any()
    # catalogue of 2 with both items excluded: still never the positive
    neg = sample_negatives(torch.tensor([[1, 2, 1]]), torch.tensor([[1, 2]]), num_items=2, rounds=2)
    assert (neg != torch.tensor([[1, 2, 1]])).all() and ((neg >= 1) & (neg <= 2)).all()


def test_hit_ndcg_hand_case():
    m = hit_ndcg(torch.tensor([0, 2, 12]), ks=(1, 10))  # ranks are 0-based
    assert m["hit@1"] == pytest.approx(1 / 3) and m["hit@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)


def test_eval_ties_count_against_the_target():
    model = SASRec(NUM_ITEMS, embed_dim=8, num_layers=1, max_len=4)
    with torch.no_grad():
        model.item_embedding.weight.zero_()  # every candidate scores 0
    task = SASRecTask(model, ks=(1,))
    batch = {"seq": torch.tensor([[0, 1, 2, 3]]), "target": torch.tensor([4]), "candidates": torch.tensor([[4, 5, 6]])}
    task._eval_step(batch, "val")
    assert task._ranks["val"][0].tolist() == [2]


def cycles(num_users: int = 8, length: int = 11) -> list[list[int]]:
    """User u walks the 20-item cycle from item u + 1 with step 1, 3 or 7 (coprime with 20, so its
    items are distinct): the next item depends on the step, so the model has to read the sequence."""
    return [[(u + (1, 3, 7)[u % 3] * t) % NUM_ITEMS + 1 for t in range(length)] for u in range(num_users)]


def test_sasrec_overfits_cycles():
    torch.set_num_threads(1)
    seqs = cycles()
    hist = pad_left([s[:-1] for s in seqs], 10)  # (8, 10): exactly the training inputs
    target = torch.tensor([s[-1] for s in seqs])  # (8,): the last training target
    # the paper's protocol: the true next item + negatives the user never interacted with (here all 9)
    cand = torch.tensor([[s[-1]] + [i for i in range(1, NUM_ITEMS + 1) if i not in s] for s in seqs])  # (8, 10)
    model = fit_sasrec(
        {f"u{u}": s for u, s in enumerate(seqs)},
        NUM_ITEMS,
        valid={"seq": hist, "target": target, "candidates": cand},
        model=lambda num_items: SASRec(num_items, embed_dim=32, num_layers=2, dropout=0.1, max_len=10),
        max_epochs=200,  # one batch per epoch: 200 Adam steps, ~2 s
        seed=0,
    )
    assert not model.training
    order = rank_candidates(model, hist, cand)  # (8, 10)
    assert order.shape == (8, 10) and sorted(order[0].tolist()) == list(range(10))
    hr1 = float(np.mean(order[:, 0] == 0))
    assert hr1 >= 0.9, f"HR@1 of the true next item among 10 candidates: {hr1}"


def test_sasrec_fit_without_validation_returns_last_weights():
    torch.set_num_threads(1)
    model = SASRec(NUM_ITEMS, embed_dim=8, num_layers=1, max_len=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fit_sasrec(np.array([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]]), NUM_ITEMS, model=model, max_epochs=2)
    assert out is model
    assert all(not torch.equal(before[k], v) for k, v in out.state_dict().items() if "embedding" in k)


# ---------------------------------------------------------------- retrieval

CORPUS = ["the cat sat", "the dog sat", "the bird"]


def test_bm25_hand_case():
    bm25 = BM25Retriever(CORPUS)  # k1 = 1.5, b = 0.75
    s = bm25.scores("cat")
    # N = 3 docs, "cat" in n = 1: idf = ln(1 + (3 - 1 + 0.5) / (1 + 0.5)) = ln(8/3) ≈ 0.980829
    # doc 0: tf = 1, |d| = 3, avgdl = 8/3: tf·(k1+1) / (tf + k1·(1 − b + b·3/(8/3)))
    #      = 2.5 / (1 + 1.5·(0.25 + 0.84375)) = 2.5 / 2.640625 ≈ 0.946746  →  score ≈ 0.928600
    assert s[0] == pytest.approx(math.log(8 / 3) * 2.5 / 2.640625, rel=1e-9)
    assert s[1] == 0.0 and s[2] == 0.0, "documents without any query word score 0"


def test_bm25_rare_term_ranks_first_and_candidates():
    bm25 = BM25Retriever(CORPUS)
    assert bm25.rank("The DOG!")[0] == 1  # "the" is in every document: the rare word decides
    assert bm25.rank("the bird", k=1) == [2]
    assert bm25.rank("the dog", candidate_ids=[0, 2]) == [2, 0]  # same "the", the shorter document wins
    assert bm25.rank("sat", candidate_ids=[1, 0]) == [1, 0]  # equal scores keep candidate order
    assert bm25.rank("unknown words") == [0, 1, 2] and not bm25.scores("unknown words").any()


def bag_of_letters(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 26), np.float32)
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - ord("a")] += 1
    return out


def test_dense_retriever():
    corpus = ["apple pie", "banana split", "cherry tart", "banana bread"]
    dense = DenseRetriever(bag_of_letters, corpus)
    assert dense.scores("banana split")[1] == pytest.approx(1.0, abs=1e-6)
    assert dense.rank("banana split", k=2) == [1, 3]
    ranked = dense.rank("banana split", candidate_ids=[0, 2, 3])
    assert ranked[0] == 3 and sorted(ranked) == [0, 2, 3]
    assert dense.rank("banana split", candidate_ids=[2, 0], k=1) in ([0], [2])
    assert len(dense.rank("apple")) == len(corpus)
