"""The multirun report: mean ± std per group, with the metrics the runs actually have."""

from __future__ import annotations

from rlrec.outputs.report import aggregate


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


def test_run_plots_and_rounds_table_show_reliability_heldout_gain_and_curves(tmp_path):
    from rlrec.outputs.report import rounds_table, write_plots

    curve = [{"step": i, "epoch": 0, "train/sdpo_loss": 1.4 - 0.1 * i, "train/reward_acc": 0.1 * i} for i in range(6)]
    curve[2].update({"val/sdpo_loss": 1.3, "val/reward_acc": 0.3})
    curve[5].update({"val/sdpo_loss": 1.2, "val/reward_acc": 0.4})
    results = {
        "rounds": [{"round": 1, "reward/mean": 0.5, "reliability/spearman": 0.72, "heldout/reward_gain": 0.01,
                    "heldout/p": 0.004, "align/sdpo_loss": 1.1}],
        "curves": {"round1": curve},
    }  # fmt: skip
    written = write_plots(results, tmp_path)
    assert [p.name for p in written] == ["rounds.png", "training.png"] and all(p.stat().st_size > 0 for p in written)
    table = rounds_table(results)
    head, _, row = table.splitlines()
    assert "reliability/spearman" in head and "heldout/reward_gain" in head and "heldout/p" in head
    assert "0.7200" in row and "0.0040" in row
