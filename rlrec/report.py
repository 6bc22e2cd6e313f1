"""Results → markdown. `python -m rlrec.report <dir> [--out report.md]` collects every
`results.json` under <dir> (e.g. a multirun) into one table: mean ± std over seeds per
(experiment, dataset, split, backbone)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from rlrec.cache import atomic_write_text

DEFAULT_METRICS = (
    "test/auc", "test/logloss", "test/uauc", "val/auc", "train/samples_per_s", "train/epochs",
    # re-rank runs: the re-ranker, then the initial order and a shuffled order of the same test lists
    "test/map@5", "test/ndcg@5", "test/click@5", "initial/test/map@5", "initial/test/ndcg@5",
    "shuffled/test/map@5", "shuffled/test/ndcg@5",
)  # fmt: skip
GROUP_KEYS = ("experiment", "dataset", "split", "backbone")


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}"


TABLE_COLUMNS = {
    "ctr": ("test/auc", "test/logloss", "test/uauc", "val/auc"),
    "rerank": ("test/map@5", "test/ndcg@5", "test/click@5", "val/map@5", "val/ndcg@5"),
    # RecLAIF's Table 3 (next-item) / Table 2 (query); Precision@5 and NDCG@5 matter for the query setting
    "recommend": ("hit@1", "ndcg@3", "validity", "diversity", "explainability", "ndcg@5", "precision@5"),
}
ROW_LABELS = {
    "base": "base (no knowledge)",
    "round0": "+ un-aligned knowledge (round 0, KAR-style)",
    "aligned": "+ aligned knowledge (round {rounds})",
}
ROUND_COLUMNS = ("reward/mean", "reward/best_mean", "reward/spread", "pairs/groups", "align/sdpo_loss",
                 "align/dpo_loss", "align/ipo_loss", "align/reward_acc", "validator/val_auc",
                 "recommender/val_ndcg@5", "judge/consistency", "eval/validity", "eval/hit@1",
                 "eval/ndcg@3", "knowledge_tokens")  # fmt: skip


def paper_table(results: dict) -> str:
    """Base backbone vs + un-aligned knowledge vs + aligned knowledge (the papers' main table)."""
    table = results.get("table")
    if not table:
        return ""
    if table["kind"] == "recommend":
        return recommend_table(table)
    if table["kind"] == "kar":
        return kar_table(table)
    cols = TABLE_COLUMNS[table["kind"]]
    backbone = results.get("run", {}).get("backbone", "")
    lines = ["| backbone | knowledge | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for label, metrics in table["rows"].items():
        name = ROW_LABELS.get(label, label).format(rounds=table.get("rounds", ""))
        cells = []
        for c in cols:
            std = metrics.get(f"{c}_std")
            cells.append(_fmt(metrics.get(c)) + (f" ± {_fmt(std)}" if std is not None else ""))
        lines.append(f"| {backbone} | {name} | " + " | ".join(cells) + " |")
    seeds = table.get("seeds") or []
    if len(seeds) > 1:
        lines += ["", f"Mean ± std over seeds {seeds}. Paired t-tests across seeds:", ""]
        lines += ["| comparison | metric | mean difference | t | p |", "|---|---|---|---|---|"]
        for key, e in table.get("paired", {}).items():
            pair, metric = key.split("/", 1)
            lines.append(
                f"| {pair} | {metric} | {e['mean_diff']:+.4f} | {_fmt(e.get('t'))} | {_fmt(e.get('p'))} |"
            )
    return "\n".join(lines) + "\n"


def kar_table(table: dict) -> str:
    """KAR's Table: each re-ranker without and with the LLM's user + item knowledge (mean ± std)."""
    cols = ("test/map@5", "test/ndcg@5", "test/click@5")
    lines = ["| re-ranker | knowledge | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for key, m in table["rows"].items():
        name, variant = key.split("/")
        cells = [_fmt(m.get(c)) + (f" ± {_fmt(m[c + '_std'])}" if c + "_std" in m else "") for c in cols]
        lines.append(f"| {name} | {'+ KAR' if variant == 'kar' else 'base'} | " + " | ".join(cells) + " |")
    if table.get("paired"):
        lines += ["", f"Seeds {table['seeds']}; paired t-tests (+ KAR − base):", "",
                  "| re-ranker | metric | mean difference | p |", "|---|---|---|---|"]  # fmt: skip
        for key, e in table["paired"].items():
            name, metric = key.split("/", 1)
            lines.append(f"| {name} | {metric} | {e['mean_diff']:+.4f} | {_fmt(e.get('p'))} |")
    lines += ["", f"Knowledge for {table['users']} users and {table['items']} items."]
    return "\n".join(lines) + "\n"


def recommend_table(table: dict) -> str:
    """RecLAIF-style: one row per method (baselines, the LLM zero-shot, SFT, DPO round 1..T)."""
    cols = TABLE_COLUMNS["recommend"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, m in table["rows"].items():
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
    lines += ["", f"{table['users']} test questions ({table['setting']}, top-{table['k']}); an invalid answer "
              "scores 0 on relevance; diversity = mean pairwise cosine distance of the recommended items' "
              "encoder vectors; explainability = the judge's 0–5 rating mapped to 1–100."]  # fmt: skip
    return "\n".join(lines) + "\n"


def rounds_table(results: dict) -> str:
    history = results.get("history") or []
    if not history:
        return ""
    cols = [c for c in ROUND_COLUMNS if any(c in h for h in history)]
    lines = ["| round | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for h in history:
        lines.append(f"| {h['round']} | " + " | ".join(_fmt(h.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_plots(results: dict, out_dir: str | Path) -> list[Path]:
    """PNG plots: the paper table's main test metric per knowledge variant, and per-round
    rewards / preference loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    table = results.get("table")
    if table and table["kind"] == "recommend":
        written.append(_recommend_plot(table, out_dir / "methods.png"))
    elif table and table["kind"] == "kar":
        written.append(_kar_plot(table, out_dir / "kar.png"))
    elif table:
        metric = TABLE_COLUMNS[table["kind"]][0]
        labels = list(table["rows"])
        values = [float(table["rows"][k].get(metric, float("nan"))) for k in labels]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(labels, values, color=["#999999", "#6a9fd4", "#d46a6a"][: len(labels)])
        finite = [v for v in values if v == v]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 0.02), max(finite) + 0.01)
        ax.set_ylabel(metric)
        ax.set_title(f"{results.get('run', {}).get('backbone', '')}: knowledge variants")
        fig.tight_layout()
        written.append(out_dir / "knowledge_variants.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    history = results.get("history") or []
    if history:
        rounds = [h["round"] for h in history]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for key in ("reward/mean", "reward/best_mean"):
            axes[0].plot(rounds, [h.get(key, float("nan")) for h in history], marker="o", label=key)
        axes[0].set_xlabel("round")
        axes[0].legend()
        for key in (k for k in ("align/sdpo_loss", "align/dpo_loss", "align/ipo_loss") if k in history[0]):
            axes[1].plot(rounds, [h.get(key, float("nan")) for h in history], marker="o", label=key)
        axes[1].set_xlabel("round")
        axes[1].legend()
        fig.tight_layout()
        written.append(out_dir / "rounds.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def _kar_plot(table: dict, path: Path) -> Path:
    """MAP@5 and NDCG@5 per re-ranker, base vs + KAR."""
    import matplotlib.pyplot as plt

    names = sorted({k.split("/")[0] for k in table["rows"]})
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("test/map@5", "test/ndcg@5")):
        for off, (variant, color) in enumerate((("base", "#999999"), ("kar", "#6a9fd4"))):
            vals = [table["rows"].get(f"{n}/{variant}", {}).get(metric, float("nan")) for n in names]
            ax.bar(np.arange(len(names)) + 0.4 * off, vals, width=0.4, color=color, label=variant)
        ax.set_xticks(np.arange(len(names)) + 0.2, names)
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _recommend_plot(table: dict, path: Path) -> Path:
    """RecLAIF's Figure 3: each metric per method (SFT → DPO rounds), one panel per metric."""
    import matplotlib.pyplot as plt

    cols = [c for c in ("validity", "hit@1", "ndcg@3", "diversity", "explainability")]
    labels = list(table["rows"])
    fig, axes = plt.subplots(1, len(cols), figsize=(3 * len(cols), 3))
    for ax, c in zip(axes, cols):
        ax.bar(
            range(len(labels)),
            [float(table["rows"][k].get(c, float("nan"))) for k in labels],
            color="#6a9fd4",
        )
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(c)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_markdown(results: dict) -> str:
    """One run: its identity, the paper table and per-round table (if any), then every metric."""
    run = results.get("run", {})
    lines = [
        f"## {run.get('experiment', 'run')} — "
        + ", ".join(f"{k}={v}" for k, v in run.items() if k != "experiment")
    ]
    kind = (results.get("table") or {}).get("kind")
    first = {"recommend": "Methods (RecLAIF table)", "kar": "Re-rankers ± KAR knowledge"}.get(
        kind, "Knowledge variants"
    )
    for title, body in ((first, paper_table(results)), ("Rounds", rounds_table(results))):
        if body:
            lines += ["", f"### {title}", "", body.rstrip()]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlrec.report", description=__doc__)
    ap.add_argument(
        "root", nargs="?", default="multirun", help="folder searched recursively for results.json"
    )
    ap.add_argument("--out", default=None, help="write the table here too (default: <root>/report.md)")
    ap.add_argument("--metrics", nargs="*", default=list(DEFAULT_METRICS))
    a = ap.parse_args(argv)
    runs = collect(a.root)
    if not runs:
        print(f"no results.json under {a.root!r}", file=sys.stderr)
        return 1
    table = aggregate(runs, a.metrics)
    print(table)
    atomic_write_text(a.out or Path(a.root) / "report.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
