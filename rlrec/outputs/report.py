"""Results → markdown. `rlrec report <dir> [--out report.md]` collects every `results.json` under
<dir> (e.g. a multirun) into one table: mean ± std over seeds per (experiment, dataset, split,
backbone); and, where the runs aligned a policy, a second table that takes each run (one alignment
seed) as the unit: the mean over runs of each run's effects (aligned − round 0 downstream, the
held-out gains under the proxy and the gold judge), a t-test over runs, and how many runs agree in
sign (one lucky adapter cannot pass it)."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np

from rlrec.runtime.cache import atomic_write_text

DEFAULT_METRICS = (
    "test/auc",
    "test/logloss",
    "test/uauc",
    "val/auc",
    "train/samples_per_s",
    "train/epochs",
    # re-rank runs: the re-ranker, then the initial order and a shuffled order of the same test lists
    "test/map@5",
    "test/ndcg@5",
    "test/click@5",
    "initial/test/map@5",
    "initial/test/ndcg@5",
    "shuffled/test/map@5",
    "shuffled/test/ndcg@5",
)
GROUP_KEYS = ("experiment", "dataset", "split", "backbone")


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}"


ROUND_COLUMNS = (
    "reward/mean",
    "reward/spread",
    "reliability/spearman",
    "reliability/same_best",
    "pairs/groups",
    "align/sdpo_loss",
    "align/dpo_loss",
    "align/ipo_loss",
    "align/final_sdpo_loss",
    "align/final_dpo_loss",
    "align/final_ipo_loss",
    "align/reward_acc",
    "align/heldout_reward_acc",
    "heldout/reward_gain",
    "heldout/p",
    "heldout/reward_gain_length_adjusted",
    "heldout/p_length_adjusted",
    "heldout/gold_reward_gain",
    "heldout/gold_p",
    "length/sampled",
    "length/chosen",
    "length/rejected",
    "length/reward_corr",
    "validator/val_auc",
    "recommender/val_ndcg@5",
    "judge/consistency",
    "eval/validity",
    "eval/hit@1",
    "eval/ndcg@3",
    "knowledge_tokens",
)
LOSSES = ("align/sdpo_loss", "align/dpo_loss", "align/ipo_loss")


def table_markdown(table: dict) -> str:
    """Any `rlrec.outputs.results.Table` (as a dict): a row per method / variant with its columns (± std
    over seeds where present), the paired comparisons, then the notes."""
    if not table or not table.get("rows"):
        return ""
    cols = table["columns"]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, m in table["rows"].items():
        cells = [_fmt(m.get(c)) + (f" ± {_fmt(m[c + '_std'])}" if c + "_std" in m else "") for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table.get("paired"):
        lines += ["", "| comparison | metric | mean difference | n | t | p |", "|---|---|---|---|---|---|"]
        for e in table["paired"]:
            lines.append(
                f"| {e['comparison']} | {e['metric']} | {e['mean_diff']:+.4f} | {e['n']} | "
                f"{_fmt(e.get('t'))} | {_fmt(e.get('p'))} |"
            )
    if table.get("notes"):
        lines += [""] + list(table["notes"])
    return "\n".join(lines) + "\n"


def rounds_table(results: dict) -> str:
    history = results.get("rounds") or []
    if not history:
        return ""
    cols = [c for c in ROUND_COLUMNS if any(c in h for h in history)]
    lines = ["| round | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for h in history:
        lines.append(f"| {h['round']} | " + " | ".join(_fmt(h.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_plots(results: dict, out_dir: str | Path) -> list[Path]:
    """PNG plots: the table's main metric per row (`table.png`) and the per-round rewards and
    preference loss (`rounds.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    table = results.get("table")
    if table and table.get("rows"):
        metric = table.get("plot_metric") or table["columns"][0]
        labels = list(table["rows"])
        values = [float(table["rows"][k].get(metric, float("nan"))) for k in labels]
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels)), 3.5))
        ax.bar(range(len(labels)), values, color="#6a9fd4")
        ax.set_xticks(range(len(labels)), [textwrap.fill(x, 18) for x in labels], fontsize=7)
        finite = [v for v in values if v == v]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 0.02), max(finite) + 0.01)
        ax.set_ylabel(metric)
        ax.set_title(table.get("title", ""))
        fig.tight_layout()
        written.append(out_dir / "table.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    history = results.get("rounds") or []
    if history:
        rounds = [h["round"] for h in history]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for key in ("reward/mean", "reward/best_mean"):
            axes[0].plot(rounds, [h.get(key, float("nan")) for h in history], marker="o", label=key)
        axes[0].set_xlabel("round")
        axes[0].legend()
        for key in (k for k in LOSSES if k in history[0]):
            axes[1].plot(rounds, [h.get(key, float("nan")) for h in history], marker="o", label=key)
        axes[1].set_xlabel("round")
        axes[1].legend()
        fig.tight_layout()
        written.append(out_dir / "rounds.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    curves = results.get("curves") or {}
    if curves:
        written.append(training_plot(curves, out_dir / "training.png"))
    return written


def training_plot(curves: dict[str, list[dict]], path: Path) -> Path:
    """The preference fits' curves, one colour per round: loss (left) and reward accuracy (right) per
    step — training batches as lines, held-out pairs as dots where they were evaluated."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, (name, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        loss = next((k for k in curve[0] if k.startswith("train/") and k.endswith("_loss")), None) if curve else None
        for ax, key in ((axes[0], loss), (axes[1], "train/reward_acc")):
            if key is None:
                continue
            steps = [p["step"] for p in curve if key in p]
            values = np.array([p[key] for p in curve if key in p], float)
            ax.plot(steps, values, color=colour, alpha=0.25, lw=1, label=f"{name} train (per batch)")
            w = min(8, len(values))  # a running mean over 8 batches: where the fit is heading
            smooth = np.convolve(values, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], smooth, color=colour, lw=2, label=f"{name} train (mean of {w})")
            if key == loss and i == 0:  # reference = the policy before the round: batch 0 is at zero margin
                ax.axhline(values[0], color="grey", ls=":", lw=1, label="zero margin, log(1+K)")
            val = key.replace("train/", "val/")
            pts = [(p["step"], p[val]) for p in curve if val in p]
            if pts:
                ax.plot(*zip(*pts), "o--", color=colour, label=f"{name} held-out")
            ax.set_xlabel("step")
            ax.set_ylabel(key.split("/", 1)[1])
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_markdown(results: dict) -> str:
    """One run: its identity, the paper table and per-round table (if any), then every metric."""
    run = results.get("run", {})
    lines = [
        f"## {run.get('experiment', 'run')} — " + ", ".join(f"{k}={v}" for k, v in run.items() if k != "experiment")
    ]
    table = results.get("table") or {}
    for title, body in ((table.get("title", "Table"), table_markdown(table)), ("Rounds", rounds_table(results))):
        if body:
            lines += ["", f"### {title}", "", body.rstrip()]
    mem = results.get("memory") or {}
    if mem:
        lines += [
            "",
            f"Peak RSS {mem['peak_rss_gb']:.2f} GB (largest child process {mem['children_peak_rss_gb']:.2f} GB).",
        ]
    lines += ["", "### All metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(results.get("metrics", {}).items())]
    return "\n".join(lines) + "\n"


def collect(root: str | Path) -> list[dict]:
    files = sorted(Path(root).rglob("results.json"))
    out = []
    for f in files:
        try:
            r = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"skipping unreadable {f}: {e}", file=sys.stderr)
            continue
        r["_file"] = str(f)
        out.append(r)
    return out


def aggregate(runs: list[dict], metrics=DEFAULT_METRICS) -> str:
    """Markdown table, one row per group: mean ± std (n seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        key = tuple(r.get("run", {}).get(k, "") for k in GROUP_KEYS)
        groups.setdefault(key, []).append(r)
    present = [m for m in metrics if any(m in r.get("metrics", {}) for r in runs)]
    head = [*GROUP_KEYS, "seeds", *present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(groups, key=lambda k: tuple(map(str, k))):
        rs = groups[key]
        cells = [str(k) for k in key] + [str(len(rs))]
        for m in present:
            vals = np.array([r["metrics"][m] for r in rs if m in r.get("metrics", {})], dtype=float)
            if len(vals) == 0:
                cells.append("–")
            elif len(vals) == 1:
                cells.append(_fmt(vals[0]))
            else:
                cells.append(f"{_fmt(vals.mean())} ± {_fmt(vals.std(ddof=1))}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# a run's effects, each one number per alignment run: downstream paired differences, held-out gains
REPLICATED = re.compile(
    r"^(paired/(aligned-round0|aligned-base|oracle-base)/.+/mean_diff"
    r"|iter\d+/heldout/(reward_gain|gold_reward_gain|reward_gain_length_adjusted|gold_reward_gain_length_adjusted))$"
)


def replicates(runs: list[dict]) -> str:
    """Markdown: per group and effect, the runs as the unit — n runs, mean ± std of the run-level
    values, a one-sample t-test of them against 0, and how many runs share the mean's sign. Empty
    when no group has two runs with an effect.

    >>> runs = [{"run": {"experiment": "e"}, "metrics": {"iter1/heldout/reward_gain": g}} for g in (0.01, 0.02, 0.03)]
    >>> print(replicates(runs).splitlines()[2])
    | e |  |  |  | iter1/heldout/reward_gain | 3 | 0.0200 ± 0.0100 | 0.0742 | 3/3 |
    """
    from scipy.stats import ttest_1samp

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get("run", {}).get(k, "") for k in GROUP_KEYS), []).append(r)
    lines = []
    for key in sorted(groups, key=lambda k: tuple(map(str, k))):
        rs = groups[key]
        effects = sorted({m for r in rs for m in r.get("metrics", {}) if REPLICATED.match(m)})
        for m in effects:
            vals = np.array([r["metrics"][m] for r in rs if m in r.get("metrics", {})], dtype=float)
            vals = vals[np.isfinite(vals)]
            if len(vals) < 2:
                continue
            p = ttest_1samp(vals, 0.0).pvalue if np.ptp(vals) > 0 else float("nan")
            sign = np.sign(vals.mean())
            lines.append(
                f"| {' | '.join(map(str, key))} | {m} | {len(vals)} | {_fmt(vals.mean())} ± {_fmt(vals.std(ddof=1))} "
                f"| {_fmt(float(p))} | {int((np.sign(vals) == sign).sum())}/{len(vals)} |"
            )
    if not lines:
        return ""
    head = [*GROUP_KEYS, "effect", "runs", "mean ± std over runs", "p (runs)", "same sign"]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rlrec report", description=__doc__)
    ap.add_argument("root", nargs="?", default="multirun", help="folder searched recursively for results.json")
    ap.add_argument("--out", default=None, help="write the table here too (default: <root>/report.md)")
    ap.add_argument("--metrics", nargs="*", default=list(DEFAULT_METRICS))
    a = ap.parse_args(argv)
    runs = collect(a.root)
    if not runs:
        print(f"no results.json under {a.root!r}", file=sys.stderr)
        return 1
    table = aggregate(runs, a.metrics)
    unit = replicates(runs)
    if unit:
        table += "\n### Each run (one alignment seed) as the unit\n\n" + unit
    print(table)
    atomic_write_text(a.out or Path(a.root) / "report.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
