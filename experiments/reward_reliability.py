"""How much of a feedback reward is signal, and how many ensemble members make it reliable?

Scores one round's sampled texts with K_max independent members of the run's feedback (seeds
seed … seed + K_max − 1: init and user folds differ) and reports, for each K, the split-half
reliability of an ensemble of K (the even vs the odd members among the first K, `split_half`)
and what the K members cost to fit and score.

    python experiments/reward_reliability.py                                   # trackrec_movielens, profile=cpu
    python experiments/reward_reliability.py --ks 2,4,8,16 +experiment=dpo4rec_movielens
    python experiments/reward_reliability.py --ks 2,4 profile=smoke             # any extra Hydra overrides

Uses the run's caches (round-0 greedy texts and round-1 samples are reused when present). Prints a
markdown table; the default `feedback.ensemble` at profile=cpu is the smallest K with split-half
Spearman ≥ 0.7.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from datetime import date
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from rlrec.context import Context
from rlrec.feedback.ensemble import build_feedback, split_half
from rlrec.loop import pick_users, split_users
from rlrec.policy import Policy

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="2,4,8,16,24,32", help="ensemble sizes to report (even numbers)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (default: +experiment=trackrec_movielens)")
    args = ap.parse_args()
    ks = sorted(int(k) for k in args.ks.split(","))
    if any(k < 2 or k % 2 for k in ks):
        raise SystemExit(f"--ks must be even numbers >= 2, got {args.ks}")
    overrides = args.overrides
    if not any(o.startswith("+experiment=") for o in overrides):
        overrides = ["+experiment=trackrec_movielens", *overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["output_dir=outputs/reward_reliability", *overrides])
    with open_dict(cfg):
        cfg.feedback.ensemble = 1
    ctx = Context(cfg, "outputs/reward_reliability")
    from hydra.utils import instantiate

    downstream = instantiate(cfg.downstream)(ctx=ctx)
    policy = Policy.from_context(ctx)
    probe = downstream.probe(policy, "round0")
    pool, _ = split_users(downstream.train_users, int(cfg.align.get("heldout_users") or 0), ctx.seed)
    users = pick_users(pool, int(cfg.align.users), ctx.seed, 1)  # round 1's users, as the loop picks them
    samples = policy.sample([downstream.questions[int(u)] for u in users], seed=ctx.seed * 1000 + 1)
    N = len(samples[0])
    vecs = ctx.encoder.encode([s for row in samples for s in row]).reshape(len(users), N, -1)
    members, seconds = [], []
    for m in range(max(ks)):
        with open_dict(cfg):
            cfg.feedback.seed = int(ctx.seed + m)
        start = time.perf_counter()
        fb = build_feedback(cfg.feedback, ctx, downstream)
        fb.refit(probe)
        members.append(fb.score(users, samples, vecs))
        seconds.append(time.perf_counter() - start)
    R = np.stack(members)  # (K_max, U, N)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=CONF.parent
    ).stdout.strip()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
               platform.processor())  # fmt: skip
    print(f"feedback={cfg.feedback._target_.rsplit('.', 1)[-1]}, {len(users)} users × N = {N}, "
          f"{date.today()}, commit {commit}, {cpu}, {cfg.threads} threads")  # fmt: skip
    print(f"\n| K | split-half Spearman | same best (chance {1 / N:.2f}) | Spearman–Brown (all K) | fit + score s |")
    print("|---|---|---|---|---|")
    for k in ks:
        rel = split_half(R[:k][0::2].mean(0), R[:k][1::2].mean(0))
        print(f"| {k} | {rel['reliability/spearman']:+.3f} | {rel['reliability/same_best']:.3f} | "
              f"{rel['reliability/full']:+.3f} | {sum(seconds[:k]):.0f} |")  # fmt: skip
    a = R[0]
    print(f"\none member: mean reward spread (best − worst) {np.nanmean(a.max(1) - a.min(1)):.4f}, "
          f"mean |member 0 − member 1| for the same text {np.nanmean(np.abs(R[0] - R[1])):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
