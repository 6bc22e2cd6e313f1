"""How much of a feedback reward is signal? Score the same sampled texts with two validators that
differ only in their training seed and compare the rankings they induce within each user.

    python experiments/reward_reliability.py                       # trackrec_movielens, profile=cpu
    python experiments/reward_reliability.py profile=smoke         # any extra Hydra overrides

Uses the run's caches (round-0 greedy texts and round-1 samples are reused when present). Prints,
over the users whose N texts are scored: the mean within-user Spearman correlation between the two
validators' rewards, how often both pick the same best text (chance = 1/N), and the mean reward
spread (best − worst) next to the mean |difference| between the two validators' rewards for the
same text (the noise floor).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from scipy.stats import spearmanr

from rlrec.context import Context
from rlrec.loop import pick_users
from rlrec.policy import Policy

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=trackrec_movielens", "output_dir=/tmp/reward_reliability",
                                          *overrides])  # fmt: skip
    ctx = Context(cfg, "/tmp/reward_reliability")
    downstream = instantiate(cfg.downstream)(ctx=ctx)
    policy = Policy.from_context(ctx)
    probe = downstream.probe(policy, "round0")
    users = pick_users(downstream.train_users, int(cfg.align.users), ctx.seed, 1)
    samples = policy.sample([downstream.questions[int(u)] for u in users], seed=ctx.seed * 1000 + 1)
    N = len(samples[0])
    vecs = ctx.encoder.encode([s for row in samples for s in row]).reshape(len(users), N, -1)
    rewards = []
    for seed in (cfg.seed, cfg.seed + 1):
        with open_dict(cfg):
            cfg.feedback.seed = int(seed)
        feedback = instantiate(cfg.feedback)(ctx=ctx, downstream=downstream)
        feedback.refit(probe)
        rewards.append(feedback.score(users, samples, vecs))
    a, b = rewards
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = a[ok], b[ok]
    rho = [spearmanr(x, y).statistic for x, y in zip(a, b) if np.ptp(x) > 0 and np.ptp(y) > 0]
    print(f"users scored: {len(a)}, N = {N}, validator seeds {cfg.seed} vs {cfg.seed + 1}")
    print(f"mean within-user Spearman between the two validators: {np.nanmean(rho):+.3f} (n = {len(rho)})")
    print(f"same best text: {np.mean(a.argmax(1) == b.argmax(1)):.3f} (chance {1 / N:.3f})")
    print(f"mean reward spread (best − worst), validator A: {np.mean(a.max(1) - a.min(1)):.4f}")
    print(f"mean |A − B| for the same text (noise floor): {np.mean(np.abs(a - b)):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
