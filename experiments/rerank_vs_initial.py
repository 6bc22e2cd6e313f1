"""Do the re-rankers beat the order they re-rank? A multirun of `+experiment=rerank_only` over
seeds (and any other swept keys) → per configuration: test NDCG@5 / MAP@5 of the re-ranker, of the
initial order and of a shuffled order (mean ± std over seeds), and the paired t-test over seeds of
re-ranker − initial order (the same lists, the same initial ranker per seed).

    python -m rlrec.train -m +experiment=rerank_only rerank=librerank_later \\
        reranker=dlcm,prm,setrank reranker.initial_input=false,true seed=1,2,3,4,5
    python experiments/rerank_vs_initial.py multirun/rerank_only/<date>   # or the sweep dir
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from rlrec.downstream.stats import paired, summarise

METRICS = ("test/ndcg@5", "test/map@5")


def load(sweep: Path) -> dict[str, list[dict]]:
    """A configuration (the job's overrides other than the seed) → one metrics dict per seed,
    sorted by seed."""
    runs: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for result in sorted(sweep.glob("*/results.json")):
        overrides = OmegaConf.load(result.parent / ".hydra" / "overrides.yaml")
        seed = int(OmegaConf.load(result.parent / "config.yaml").seed)
        key = " ".join(o for o in overrides if not o.startswith(("seed=", "threads=", "+experiment=")))
        runs[key].append((seed, json.loads(result.read_text())["metrics"]))
    if not runs:
        raise SystemExit(f"no */results.json under {sweep}: pass the multirun's sweep directory")
    return {k: [m for _, m in sorted(v, key=lambda sm: sm[0])] for k, v in runs.items()}


def _mean_std(row: dict, m: str) -> str:
    s = row.get(f"{m}_std")
    return f"{row[m]:.4f}" + (f" ± {s:.4f}" if s is not None else "")


def _delta(e: dict) -> str:
    return f"{e['mean_diff']:+.4f}" + (f" (p = {e['p']:.3f})" if "p" in e else "")


def table(runs: dict[str, list[dict]]) -> str:
    lines = [
        "| configuration | seeds | test NDCG@5 | initial order | shuffled | Δ NDCG@5 (p) "
        "| test MAP@5 | initial order | Δ MAP@5 (p) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, per_seed in sorted(runs.items()):
        variants = {
            "reranker": [{m: r[m] for m in METRICS} for r in per_seed],
            "initial": [{m: r[f"initial/{m}"] for m in METRICS} for r in per_seed],
        }
        mean = {v: summarise(rows) for v, rows in variants.items()}
        shuffled = summarise([{"s": r["shuffled/test/ndcg@5"]} for r in per_seed])["s"]
        tests = {e["metric"]: e for e in paired(variants, [("reranker", "initial")], list(METRICS))}

        cell = lambda v, m, mean=mean: _mean_std(mean[v], m)  # noqa: E731
        delta = lambda m, tests=tests: _delta(tests[m])  # noqa: E731
        lines.append(
            f"| {config} | {len(per_seed)} | {cell('reranker', METRICS[0])} "
            f"| {cell('initial', METRICS[0])} | {shuffled:.4f} | {delta(METRICS[0])} "
            f"| {cell('reranker', METRICS[1])} | {cell('initial', METRICS[1])} | {delta(METRICS[1])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="the multirun's sweep directory (holds <n>_<overrides>/results.json)")
    args = ap.parse_args(argv)
    print(table(load(args.sweep)))


if __name__ == "__main__":
    main()
