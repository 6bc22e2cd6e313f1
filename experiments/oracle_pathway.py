"""Where does real-data knowledge stop? The knowledge pathway (encoder → adapter → feature field) fed
texts that certainly carry signal, written from the data with no LLM (`rlrec.knowledge.oracle`):

    full    user texts from each user's training rows + item texts (title, genres, decade)
    user    the user texts only
    item    the item texts only, every user given one shared vector
    const   one constant vector for every user and item: the extra field with no information

Each is fitted beside the base backbone (no knowledge) with the same seeds, as the run's table fits
are (one stage per fit, cached), and compared with a paired t-test over seeds.

    python experiments/oracle_pathway.py                                  # DIN, trackrec_movielens, profile=cpu
    python experiments/oracle_pathway.py --modes full,user backbone=deepfm adapter.dropout=0.5

Prints a markdown table with the date, commit and CPU.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rlrec.context import Context
from rlrec.downstream import stats
from rlrec.downstream.knowledge import items_only
from rlrec.outputs.results import Probe
from rlrec.runtime.cache import fingerprint
from rlrec.runtime.executor import stages

CONF = Path(__file__).resolve().parents[1] / "conf"


def variant(probe: Probe, mode: str) -> Probe:
    """The oracle probe reduced to one side, or replaced by a constant field."""
    if mode == "full":
        return probe
    if mode == "user":
        return Probe("oracle", fingerprint(probe.key, "user-only"), probe.texts, probe.vectors, None, probe.metrics)
    if mode == "item":
        shared = items_only(probe)
        return Probe("oracle", fingerprint(probe.key, "item-only"), {}, shared.vectors, shared.item_vectors)
    if mode == "const":
        user = np.ones_like(probe.vectors) / np.sqrt(probe.vectors.shape[1])
        item = np.ones_like(probe.item_vectors) / np.sqrt(probe.item_vectors.shape[1])
        return Probe("oracle", fingerprint(probe.key, "const"), {}, user, item)
    raise ValueError(f"--modes: unknown mode {mode!r} (full, user, item, const)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="full,user,item,const", help="comma-separated: full, user, item, const")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--out", default="outputs/oracle_pathway")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone=deepfm adapter.dropout=0.5")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=trackrec_movielens", f"output_dir={args.out}", *args.overrides])
    ctx = Context(cfg, args.out)
    down = instantiate(cfg.downstream)(ctx=ctx, variants=["base", "oracle"], seeds=seeds)
    oracle = down.oracle()
    probes = {"base": None, **{m: variant(oracle, m) for m in modes}}
    keys = [(label, seed) for label in probes for seed in seeds]
    fits = stages(ctx.executor, ctx.store, [down.shard(probes[label], seed) for label, seed in keys])
    runs: dict[str, list[dict]] = {label: [] for label in probes}
    for (label, _), art in zip(keys, fits):
        runs[label].append(art.data["metrics"])
    pairs = [(m, "base") for m in modes]
    paired = {(e["comparison"], e["metric"]): e for e in stats.paired(runs, pairs, ["test/auc"])}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in info]
    cpu = f"{cpu or platform.processor()}, {', '.join(flags) or 'no avx512_bf16/AMX'}"
    print(f"{cfg.downstream.model._target_.rsplit('.', 1)[-1]}, overrides {args.overrides or 'none'}, seeds {seeds} "
          f"({date.today()}, commit `{commit}`, {cpu})\n")  # fmt: skip
    print("| knowledge | test AUC | val AUC | − base (test AUC) | p |\n|---|---|---|---|---|")
    for label, per_seed in runs.items():
        row = stats.summarise(per_seed)
        e = paired.get((f"{label}-base", "test/auc"), {})
        diff = f"{e['mean_diff']:+.4f}" if e else "–"
        p = f"{e['p']:.2g}" if "p" in e else "–"
        print(f"| {label} | {row['test/auc']:.4f} ± {row['test/auc_std']:.4f} | {row['val/auc']:.4f} | {diff} | {p} |")


if __name__ == "__main__":
    main()
