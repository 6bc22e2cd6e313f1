"""Typed results of a run: what a probe of the policy produced, each alignment round, and the
final table. `report.py` renders any `Table` the same way; nothing here knows a paper."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Probe:
    """What the downstream made of one policy: its texts (user → text), their vectors as a
    knowledge table (num_users + 1, D; row 0 = padding) where the downstream uses knowledge, and
    its metrics where the probe is itself an evaluation (LLM as recommender). `key` hashes the
    content, so every stage that uses the probe is keyed by what it holds."""

    name: str
    key: str
    texts: dict[int, str]
    vectors: np.ndarray | None = None
    item_vectors: np.ndarray | None = None  # (num_items + 1, D) item knowledge (KAR), row 0 = padding
    metrics: dict = field(default_factory=dict)
    item_texts: dict[int, str] = field(default_factory=dict)  # item → its knowledge text, where there is one


@dataclass
class Round:
    """Round t of the loop (t = 0: the policy before any preference round; t = -1: before
    distillation). `metrics`: reward and pair statistics, the preference fit's training metrics."""

    t: int
    name: str
    policy_key: str
    probe: Probe
    metrics: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)  # the preference fit's per-step metrics
    pairs: list[dict] = field(default_factory=list)  # the groups it trained on ({user, prompt, chosen, rejected, ..})
    adapter: str | None = None  # the trained policy's adapter folder (None: the base weights)
    samples: list[dict] = field(default_factory=list)  # every scored sample: {user, text, reward, role}

    @property
    def trained(self) -> bool:
        """A preference round that produced a new policy (not round 0, not a stopped round)."""
        return self.t > 0 and not self.metrics.get("stopped")

    def summary(self) -> dict:
        return {"round": self.t, "name": self.name, **self.metrics}


@dataclass
class Table:
    """A paper-style table: one row per method / variant (label → metrics; `<metric>_std` next to a
    mean over seeds), the columns to show, paired comparisons, and notes under the table."""

    title: str
    columns: list[str]
    rows: dict[str, dict] = field(default_factory=dict)
    paired: list[dict] = field(default_factory=list)  # {comparison, metric, mean_diff, n, t?, p?}
    notes: list[str] = field(default_factory=list)
    plot_metric: str | None = None  # the metric the bar plot shows (default: the first column)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunResult:
    """Everything `results.json` holds."""

    run: dict
    metrics: dict
    table: Table | None
    rounds: list[dict]
    stages: list[dict]
    data: dict | None = None
    examples: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # round name → the preference fit's per-step metrics
    memory: dict = field(default_factory=dict)  # rlrec.runtime.memory.summary() at the end of the run

    def as_dict(self) -> dict:
        out = asdict(self)
        out["table"] = self.table.as_dict() if self.table else None
        return out
