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


def test_the_report_takes_each_alignment_run_as_the_unit(tmp_path, capsys):
    """Three alignment seeds: each run's aligned − round 0 difference and held-out gains are one value;
    the report tests their mean over runs and counts the runs that agree in sign."""
    import json

    from rlrec.outputs.report import main

    diffs, gold = (0.010, 0.020, -0.006), (0.004, 0.002, 0.003)
    for seed, (d, g) in enumerate(zip(diffs, gold), 1):
        m = {"paired/aligned-round0/test/auc/mean_diff": d, "iter1/heldout/gold_reward_gain": g, "test/auc": 0.7}
        (tmp_path / str(seed)).mkdir()
        (tmp_path / str(seed) / "results.json").write_text(json.dumps(_run("din", seed, **m)))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### Each run (one alignment seed) as the unit" in out
    row = next(line for line in out.splitlines() if "aligned-round0/test/auc/mean_diff" in line)
    assert "| 3 | 0.0080 ± 0.0131 | 0.4" in row and row.endswith("| 2/3 |")  # t = 0.008 / (0.0131 / √3): p 0.40
    gold_row = next(line for line in out.splitlines() if "gold_reward_gain" in line)
    assert "| 3 | 0.0030 ± 0.0010 | 0.0" in gold_row and gold_row.endswith("| 3/3 |")
    assert (tmp_path / "report.md").read_text() == out.rstrip("\n") + "\n" or "Each run" in (
        tmp_path / "report.md"
    ).read_text()
