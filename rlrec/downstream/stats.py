"""Statistics over seeds: a row of means (and `<metric>_std` with more than one seed), and paired
t-tests between two variants fitted with the same seeds.

>>> runs = {"a": [{"m": 0.5}, {"m": 0.7}], "b": [{"m": 0.4}, {"m": 0.5}]}
>>> {k: round(v, 4) for k, v in summarise(runs["a"]).items()}
{'m': 0.6, 'm_std': 0.1414}
>>> round(paired(runs, [("a", "b")], ["m"])[0]["mean_diff"], 4)
0.15
"""

from __future__ import annotations

import numpy as np


def summarise(per_seed: list[dict]) -> dict:
    """Mean of every metric over seeds; sample std as `<metric>_std` when there are several."""
    keys = per_seed[0].keys()
    row = {m: float(np.mean([r[m] for r in per_seed])) for m in keys}
    if len(per_seed) > 1:
        row.update({f"{m}_std": float(np.std([r[m] for r in per_seed], ddof=1)) for m in keys})
    return row


def paired(runs: dict[str, list[dict]], pairs: list[tuple[str, str]], metrics: list[str]) -> list[dict]:
    """Paired t-tests across seeds of variant a − variant b, for every pair present in `runs`."""
    from scipy.stats import ttest_rel

    out = []
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        for m in metrics:
            x = np.array([r[m] for r in runs[a]])
            y = np.array([r[m] for r in runs[b]])
            e = {"comparison": f"{a}-{b}", "metric": m, "mean_diff": float((x - y).mean()), "n": len(x)}
            if len(x) > 1 and np.any(x != y):
                t = ttest_rel(x, y)
                e.update({"t": float(t.statistic), "p": float(t.pvalue)})
            out.append(e)
    return out
