"""The multirun report: mean ± std per group, with the metrics the runs actually have."""

from __future__ import annotations

from rlrec.report import aggregate


def _run(backbone, seed, **metrics):
    return {"run": {"experiment": "e", "dataset": "d", "split": "s", "backbone": backbone, "seed": seed},
            "metrics": metrics}  # fmt: skip


def test_aggregate_ctr_runs_mean_and_std():
    table = aggregate([_run("din", 1, **{"test/auc": 0.70}), _run("din", 2, **{"test/auc": 0.72})])
    row = next(line for line in table.splitlines() if "| din |" in line)
    assert "| 2 | 0.7100 ± 0.0141 |" in row  # std with ddof=1: sqrt(2 · 0.01²) = 0.0141
    assert "test/map@5" not in table  # columns only for metrics some run has


def test_aggregate_rerank_runs_show_initial_and_shuffled_rows():
    m = {"test/ndcg@5": 0.69, "initial/test/ndcg@5": 0.68, "shuffled/test/ndcg@5": 0.58}
    table = aggregate([_run("dlcm", 1, **m)])
    head = table.splitlines()[0]
    assert "test/ndcg@5 | initial/test/ndcg@5 | shuffled/test/ndcg@5" in head and "test/auc" not in head
    assert "| 0.6900 | 0.6800 | 0.5800 |" in table
