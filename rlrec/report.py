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

DEFAULT_METRICS = ("test/auc", "test/logloss", "test/uauc", "val/auc", "train/samples_per_s", "train/epochs")
GROUP_KEYS = ("experiment", "dataset", "split", "backbone")


def _fmt(x) -> str:
    if isinstance(x, (int, np.integer)):
        return str(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}"


def run_markdown(results: dict) -> str:
    """One run: its identity and every metric."""
    run = results.get("run", {})
    lines = [
        f"## {run.get('experiment', 'run')} — "
        + ", ".join(f"{k}={v}" for k, v in run.items() if k != "experiment")
    ]
    lines += ["", "| metric | value |", "|---|---|"]
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
