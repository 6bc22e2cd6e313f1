"""Recommendation questions (RecLAIF §4.1): one per user and split, in the sequential setting (a
history, shuffled candidates with the held-out next item among them) or the query setting (ESCI:
a query, Exact and other products). The LLM-as-recommender downstream asks the policy these."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlrec.downstream.parse import FUZZY_THRESHOLD, Parsed, parse_recommendation


@dataclass
class Instance:
    """One recommendation question: a user's history (catalogue item ids, time order) or a
    query, a shuffled candidate list I' (C,) and what is relevant in it."""

    user: int
    history: list[int]
    candidates: list[int]
    relevant: set[int]  # next-item: {target}; query: the Exact products
    target: int | None = None  # next-item setting: the held-out next item
    query: str | None = None


def next_item_instances(
    frame,
    split: str,
    num_items: int,
    history_len: int = 10,
    num_candidates: int = 10,
    min_history: int = 3,
    seed: int = 0,
) -> dict[int, Instance]:
    """RecLAIF's sequential setting on positive interactions (label 1), per user: the target is the
    user's *last* positive of `split` == "train" (the questions the policy is aligned on) or the
    *first* positive of valid/test (held out); the history is the `history_len` positives strictly
    before it (any earlier split); candidates = target + (C − 1) items the user never interacted
    with, shuffled with a per-user seed. Users with fewer than `min_history` history items are skipped.
    """
    f = frame[frame["label"] > 0]
    seen_all = frame.groupby("u")["i"].agg(set).to_dict()
    out: dict[int, Instance] = {}
    for u, g in f.groupby("u", sort=True):
        items, splits = g["i"].to_numpy(), g["split"].to_numpy()
        where = np.flatnonzero(splits == split)
        if not len(where):
            continue
        t = int(where[-1] if split == "train" else where[0])
        history = [int(i) for i in items[:t][-history_len:]]
        if len(history) < min_history:
            continue
        rng = np.random.default_rng([seed, int(u), ("train", "valid", "test").index(split)])
        seen = seen_all[u]
        negatives: list[int] = []
        while len(negatives) < num_candidates - 1 and len(seen) + len(negatives) < num_items:
            i = int(rng.integers(1, num_items + 1))
            if i not in seen and i not in negatives:
                negatives.append(i)
        cands = [int(items[t])] + negatives
        rng.shuffle(cands)
        out[int(u)] = Instance(int(u), history, cands, {int(items[t])}, target=int(items[t]))
    return out


def query_instances(
    frame,
    users_frame,
    split: str,
    num_exact: int = 10,
    num_other: int = 5,
    seed: int = 0,
    split_fractions: tuple[float, float] = (0.6, 0.2),
    query_column: str = "query",
) -> dict[int, Instance]:
    """RecLAIF's retrieval setting (ESCI, §4.2): a query ("user") with `num_exact` Exact products
    (gain 3) and `num_other` others among its judged results; queries with fewer are skipped. Queries
    are split 60/20/20 into train/valid/test by a seeded hash, as the paper's split sizes."""
    queries = users_frame[query_column].tolist()  # row k = catalogue user k + 1
    out: dict[int, Instance] = {}
    names = ("train", "valid", "test")
    for u, g in frame.groupby("u", sort=True):
        r = np.random.default_rng([seed, int(u)]).random()
        which = names[0] if r < split_fractions[0] else names[1] if r < sum(split_fractions) else names[2]
        if which != split:
            continue
        exact = g.loc[g["rating"] >= 3, "i"].unique()
        other = g.loc[g["rating"] < 3, "i"].unique()
        if len(exact) < num_exact or len(other) < num_other:
            continue
        rng = np.random.default_rng([seed, int(u), 1])
        pick_e = [int(i) for i in rng.choice(exact, num_exact, replace=False)]
        pick_o = [int(i) for i in rng.choice(other, num_other, replace=False)]
        cands = pick_e + pick_o
        rng.shuffle(cands)
        out[int(u)] = Instance(int(u), [], cands, set(pick_e), query=str(queries[int(u) - 1]))
    return out


class RecommendationTask:
    """The LLM-as-recommender task on a PreparedData: instances per split, prompts (RecLAIF's
    template), and scoring of answers (validity, Hit@1, NDCG@k, Precision@k, diversity).

    `metrics_on="valid"` (the paper, after LLaRA): an invalid answer scores 0 on every relevance
    metric; `"recognised"` scores the candidates an answer names even if it also names others."""

    def __init__(
        self,
        prep,
        template,
        domain: dict,
        setting: str = "next_item",
        k: int = 3,
        history_len: int = 10,
        num_candidates: int = 10,
        min_history: int = 3,
        num_exact: int = 10,
        num_other: int = 5,
        eval_users: int | None = None,
        seed: int = 0,
        fuzzy_threshold: float = FUZZY_THRESHOLD,
        metrics_on: str = "valid",
        ks: tuple[int, ...] = (1, 3, 5),
    ):
        from rlrec.data.prompts import PromptTemplate

        if setting not in ("next_item", "query"):
            raise ValueError(f"downstream.setting must be 'next_item' or 'query', got {setting!r}")
        if metrics_on not in ("valid", "recognised"):
            raise ValueError(f"downstream.metrics_on must be 'valid' or 'recognised', got {metrics_on!r}")
        self.prep, self.domain, self.setting, self.k = prep, domain, setting, int(k)
        self.template = PromptTemplate(template) if isinstance(template, str) else template
        self.fuzzy_threshold, self.metrics_on, self.ks = fuzzy_threshold, metrics_on, tuple(ks)
        items = prep.items
        self.titles = ["<pad>"] + [str(t) for t in items["title"].tolist()]
        extra = items["genres"] if "genres" in items else items.get("genre")
        self.texts = (
            self.titles
            if extra is None
            else ["<pad>"] + [f"{t} ({str(g).replace('|', ', ')})" for t, g in zip(self.titles[1:], extra.tolist())]
        )
        self.instances: dict[str, dict[int, Instance]] = {}
        for split in ("train", "test"):
            if setting == "next_item":
                inst = next_item_instances(
                    prep.frame, split, prep.spec.num_items, history_len, num_candidates, min_history, seed
                )
            else:
                inst = query_instances(prep.frame, prep.users, split, num_exact, num_other, seed)
            if split == "test" and eval_users is not None and len(inst) > eval_users:
                keep = np.random.default_rng(seed).choice(sorted(inst), int(eval_users), replace=False)
                inst = {int(u): inst[int(u)] for u in sorted(keep)}
            self.instances[split] = inst
        if not self.instances["test"]:
            raise ValueError(
                f"downstream=recommend: no {setting} test instances (min_history={min_history}, "
                f"num_candidates={num_candidates}); the dataset has too few positives per user"
            )

    def entity(self, i: int) -> dict:
        return {"title": self.titles[i]}

    def context(self, user: int, split: str = "train") -> dict:
        """What a judge sees of the question `user`'s answer was written for (`split`'s instance)."""
        inst = self.instances[split][user]
        history = [{"title": inst.query}] if inst.query is not None else [self.entity(i) for i in inst.history]
        target = (
            self.entity(inst.target)
            if inst.target is not None
            else {"title": ", ".join(self.titles[i] for i in sorted(inst.relevant))}
        )
        return {
            "history": history,
            "candidates": [self.entity(i) for i in inst.candidates],
            "target": target,
            "domain": self.domain,
            "k": self.k,
            "query": inst.query,
        }

    def prompt(self, inst: Instance) -> str:
        history = [{"title": inst.query}] if inst.query is not None else [self.entity(i) for i in inst.history]
        return self.template.render(
            history=history,
            candidates=[self.entity(i) for i in inst.candidates],
            k=self.k,
            domain=self.domain,
            query=inst.query,
        )

    def prompts(self, split: str) -> dict[int, str]:
        return {u: self.prompt(inst) for u, inst in self.instances[split].items()}

    def parse(self, inst: Instance, text: str) -> Parsed:
        return parse_recommendation(text, [self.titles[i] for i in inst.candidates], self.k, self.fuzzy_threshold)

    def ranked(self, inst: Instance, parsed: Parsed) -> list[int]:
        """Catalogue ids of the answer's recommendations (empty if invalid under metrics_on=valid)."""
        if self.metrics_on == "valid" and not parsed.valid:
            return []
        return [inst.candidates[j] for j in parsed.items]

    def score_lists(self, instances: list[Instance], ranked: list[list[int]], encode) -> dict:
        """Mean relevance metrics and diversity of ranked catalogue-id lists (one per instance)."""
        from rlrec.metrics import diversity, hit_at_k, ndcg_at_k_single, precision_at_k

        m: dict[str, list[float]] = {}
        for inst, r in zip(instances, ranked):
            for k in self.ks:
                if inst.target is not None:
                    m.setdefault(f"hit@{k}", []).append(hit_at_k(r, inst.target, k))
                    m.setdefault(f"ndcg@{k}", []).append(ndcg_at_k_single(r, inst.target, k))
                else:
                    m.setdefault(f"ndcg@{k}", []).append(_ndcg_binary(r, inst.relevant, k))
                m.setdefault(f"precision@{k}", []).append(precision_at_k(r, inst.relevant, k))
        lists = [r[: self.k] for r in ranked]
        if lists and encode is not None:  # an invalid or one-item answer recommends no diversity: 0
            uniq = sorted({i for r in lists for i in r})
            vec = dict(zip(uniq, encode([self.texts[i] for i in uniq]))) if uniq else {}
            m["diversity"] = [diversity(np.stack([vec[i] for i in r])) if len(r) >= 2 else 0.0 for r in lists]
        return {k: float(np.mean(v)) for k, v in m.items()}

    def evaluate(self, split: str, texts: dict[int, str], encode=None) -> tuple[dict, dict[int, Parsed]]:
        """Metrics of LLM answers `texts` (user → answer) on `split` instances."""
        users = sorted(texts)
        insts = [self.instances[split][u] for u in users]
        parsed = {u: self.parse(self.instances[split][u], texts[u]) for u in users}
        metrics = self.score_lists(insts, [self.ranked(i, parsed[u]) for i, u in zip(insts, users)], encode)
        metrics["validity"] = float(np.mean([parsed[u].valid for u in users])) if users else float("nan")
        metrics["recognised"] = float(np.mean([len(parsed[u].items) > 0 for u in users])) if users else 0.0
        metrics["users"] = len(users)
        return metrics, parsed


def _ndcg_binary(ranked: list[int], relevant: set[int], k: int) -> float:
    """NDCG@k with binary gains, the ideal = min(k, |relevant|) hits at the top."""
    dcg = sum(1.0 / np.log2(r + 2) for r, i in enumerate(ranked[:k]) if i in relevant)
    ideal = sum(1.0 / np.log2(r + 2) for r in range(min(k, len(relevant))))
    return float(dcg / ideal) if ideal else 0.0
