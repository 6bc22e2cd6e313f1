"""The ranking metrics against torchmetrics.retrieval on random lists (no ties, positive scores as
torchmetrics expects), for every k: a wrong discount, cut-off, denominator or tie rule fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_auroc, retrieval_average_precision, retrieval_normalized_dcg

from rlrec.metrics import list_metrics, user_auc


@pytest.fixture()
def lists():
    rng = np.random.default_rng(0)
    scores = rng.random((200, 10)) + 0.01  # distinct, > 0
    labels = (rng.random((200, 10)) < 0.25).astype(float)
    labels[:5] = 0  # lists without a positive: both sides score 0
    return scores, labels


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_ndcg_and_map_equal_torchmetrics(lists, k):
    scores, labels = lists
    ours = list_metrics(scores, labels, ks=(k,), map_definition="kar")
    standard = list_metrics(scores, labels, ks=(k,), map_definition="standard")
    for i in range(len(scores)):
        p, t = torch.tensor(scores[i]), torch.tensor(labels[i] > 0)
        ndcg = float(retrieval_normalized_dcg(p, t, top_k=k))
        ap = float(retrieval_average_precision(p, t, top_k=k))  # mean precision over the hits in the top k
        assert ours[f"ndcg@{k}"][i] == pytest.approx(ndcg, abs=1e-6)
        assert ours[f"map@{k}"][i] == pytest.approx(ap, abs=1e-6)  # KAR's MAP@k is torchmetrics' AP@k
        # the standard AP@k divides the same sum by min(k, relevant items in the list) instead
        hits, relevant = ours[f"click@{k}"][i], t.sum().item()
        expected = ap * hits / min(k, relevant) if relevant else 0.0
        assert standard[f"map@{k}"][i] == pytest.approx(expected, abs=1e-6)


def test_user_auc_is_the_mean_of_torchmetrics_per_user_auroc():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 2000)
    scores = rng.random(2000)
    labels = (rng.random(2000) < 0.3 + 0.4 * scores).astype(int)  # informative scores: AUC > 0.5
    per_user = []
    for u in np.unique(users):
        m = users == u
        if 0 < labels[m].sum() < m.sum():  # users with both classes only
            per_user.append(float(retrieval_auroc(torch.tensor(scores[m]), torch.tensor(labels[m] > 0))))
    assert user_auc(users, scores, labels) == pytest.approx(np.mean(per_user), abs=1e-6)
    assert user_auc(users, scores, labels) > 0.55
