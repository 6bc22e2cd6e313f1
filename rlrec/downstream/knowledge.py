"""Knowledge for a recommender model: the policy writes one preference text per user (TrackRec's
CoT prompt, KAR's user prompt), the encoder embeds it, the adapter turns the vector into one more
feature field of the model. KAR adds item knowledge (`item_prompt`: an LLM text per item);
`item_text` encodes an item field instead (e.g. its title), so user and item texts can meet.

`ctr` (TrackRec): CTR backbones on CTR samples. `rerank` (DPO4Rec; KAR = item prompts and
`align.rounds=0`): re-rankers on re-rank lists. The table fits the model (`downstream.model`)
without knowledge, with the un-aligned policy's (round 0) and with the aligned policy's (last
round) knowledge, once per seed, with paired t-tests across the seeds.
"""

from __future__ import annotations

from functools import cached_property, partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlrec.data.ctr import TensorBatches
from rlrec.downstream import stats
from rlrec.downstream.base import Downstream
from rlrec.downstream.fit import build_model, fit
from rlrec.downstream.lists import SPLITS, initial_scores, rerank_lists, reranker_factory
from rlrec.knowledge.index import vector_table
from rlrec.metrics import list_metrics, mean_list_metrics
from rlrec.outputs.results import Probe, Round, Table
from rlrec.runtime.cache import _plain, fingerprint
from rlrec.runtime.executor import Shard, stages

LABELS = {
    "base": "base (no knowledge)",
    "items": "item knowledge only (one shared user vector)",
    "round0": "+ un-aligned knowledge (round 0, KAR-style)",
    "aligned": "+ aligned knowledge (round {t})",
    "source": "+ knowledge from files (knowledge.source)",
    "oracle": "+ oracle knowledge (written from the user's training rows, no LLM)",
}
PAIRS = [
    ("round0", "base"),
    ("aligned", "base"),
    ("aligned", "round0"),
    ("round0", "items"),
    ("aligned", "items"),
    ("source", "base"),
    ("oracle", "base"),
    ("aligned", "oracle"),
]


class KnowledgeDownstream(Downstream):
    zero_shot_row = False  # the table's variants are base / round 0 / aligned
    judge_template = "judge_knowledge"  # how a judge compares two knowledge texts of a user
    columns: tuple[str, ...] = ()
    paired_metrics: tuple[str, ...] = ()
    monitor = ""

    def __init__(
        self,
        ctx,
        model: DictConfig,
        adapter: DictConfig | None,
        optimizer: DictConfig,
        prompt: str,
        history_len: int | None = None,
        max_new_tokens: int | None = None,
        item_prompt: str | None = None,
        item_max_new_tokens: int | None = None,
        variants=("base", "round0", "aligned"),
        seeds=(1,),
        patience: int = 2,
        item_text: str | None = None,
    ):
        if item_prompt is not None and item_text is not None:
            raise ValueError(
                "set one of downstream.item_prompt (LLM item knowledge) and downstream.item_text "
                f"(an item field, encoded), not both: got {item_prompt!r} and {item_text!r}"
            )
        self.ctx, self.model_cfg, self.adapter_cfg, self.optimizer_cfg = ctx, model, adapter, optimizer
        self.prompt, self.history_len, self.max_new_tokens = prompt, history_len, max_new_tokens
        self.item_prompt, self.item_max_new_tokens, self.item_text = (item_prompt, item_max_new_tokens, item_text)
        self.variants, self.seeds, self.patience = tuple(variants), [int(s) for s in seeds], int(patience)
        unknown = set(self.variants) - {"base", "items", "round0", "aligned", "oracle"}
        if unknown:
            raise ValueError(
                f"downstream.variants: unknown {sorted(unknown)}; choose from base, items, round0, aligned, oracle"
            )
        self.uses_policy = any(v not in ("base", "oracle") for v in self.variants)
        self.name = (model.get("_target_") or "model").rsplit(".", 1)[-1].lower()

    # ---- what the policy is asked ----------------------------------------------------------------
    @cached_property
    def view(self):
        return self.ctx.datamodule.prompts(self.history_len)

    @cached_property
    def users(self) -> np.ndarray:
        return np.array(sorted(self.view.histories), dtype=np.int64)

    @cached_property
    def questions(self) -> dict[int, str]:
        templates = self.ctx.datamodule.templates
        return self.view.user_prompts(templates.get(self.prompt, self.prompt), self.users.tolist())

    @cached_property
    def train_users(self) -> np.ndarray:
        f = self.ctx.prep.frame
        train = set(f.loc[f["split"] == "train", "u"].tolist())
        return np.array([u for u in self.users if int(u) in train], dtype=np.int64)

    def context(self, user: int, split: str = "train") -> dict:
        """What a judge sees of a user's question: the prompt history (the same for every split),
        no candidates or target."""
        return {
            "history": self.view.history(user),
            "candidates": [],
            "target": None,
            "domain": self.view.domain,
            "k": None,
            "query": None,
        }

    def valid_answer(self, user: int, text: str) -> bool:
        return bool(text.strip())

    # ---- a probe: greedy knowledge of every user (and item) ---------------------------------------
    def probe(self, policy, name: str) -> Probe:
        users = self.users.tolist()
        texts = policy.greedy([self.questions[u] for u in users], self.max_new_tokens)
        encoder, spec = self.ctx.encoder, self.ctx.prep.spec
        user = vector_table(spec.num_users, users, encoder.encode(texts))
        item, item_texts, items = None, [], []
        if self.item_prompt is not None:
            items = self.knowledge_items()
            template = self.ctx.datamodule.templates.get(self.item_prompt, self.item_prompt)
            prompts = self.view.item_prompts(template, items)
            item_texts = policy.greedy([prompts[i] for i in items], self.item_max_new_tokens)
            item = vector_table(spec.num_items, items, encoder.encode(item_texts))
        elif self.item_text is not None:  # the item's own text (e.g. its title), encoded: no LLM
            items = self.knowledge_items()
            fields = self.view.item(items[0]) if items else {}
            if self.item_text not in fields:
                raise ValueError(
                    f"downstream.item_text={self.item_text!r} is not an item field; items have {sorted(fields)}"
                )
            item_texts = [str(self.view.item(i)[self.item_text]) for i in items]
            item = vector_table(spec.num_items, items, encoder.encode(item_texts))
        key = fingerprint(texts, item_texts, encoder.key)
        metrics = {"knowledge_tokens": float(np.mean([len(t.split()) for t in texts])) if texts else 0.0}
        item_texts = dict(zip(items, item_texts)) if item_texts else {}
        return Probe(name, key, dict(zip(users, texts)), user, item, metrics, item_texts)

    def oracle(self) -> Probe:
        """Oracle knowledge (`rlrec.knowledge.oracle`): user texts from each user's training rows and
        item texts from the items' fields, encoded; no LLM."""
        from rlrec.knowledge import oracle

        encoder, spec, items = self.ctx.encoder, self.ctx.prep.spec, self.knowledge_items()
        users = oracle.user_texts(self.ctx.prep.frame, self.view.item)
        rows = sorted(users)
        user = vector_table(spec.num_users, rows, encoder.encode([users[u] for u in rows]))
        item_texts = oracle.item_texts(items, self.view.item)
        item = vector_table(spec.num_items, items, encoder.encode(item_texts))
        key = fingerprint("oracle", users, item_texts, encoder.key)
        metrics = {"knowledge_tokens": oracle.mean_words(list(users.values()))}
        return Probe("oracle", key, users, user, item, metrics, dict(zip(items, item_texts)))

    def knowledge_items(self) -> list[int]:
        return list(range(1, self.ctx.prep.spec.num_items + 1))

    # ---- knowledge.source: the export format, read back (no LLM) -----------------------------------
    def from_files(self, source: str | Path) -> Probe:
        """User (and item) knowledge from a folder in the export format (`rlrec.knowledge.files`)."""
        from rlrec.knowledge.files import probe_from_files

        return probe_from_files(self.ctx, source)

    # ---- the table ---------------------------------------------------------------------------------
    def evaluate(self, rounds: list[Round]) -> tuple[Table, dict]:
        probes: dict[str, Probe | None] = {"base": None}
        zero = next((r for r in rounds if r.t == 0), None)
        if "items" in self.variants and zero is not None and zero.probe.item_vectors is not None:
            probes["items"] = items_only(zero.probe)
        if zero is not None and zero.name == "source":  # knowledge.source: files, no policy
            probes["source"] = zero.probe
        elif "round0" in self.variants and zero is not None:
            probes["round0"] = zero.probe
        trained = [r for r in rounds if r.trained]  # a stopped round changed nothing
        if "aligned" in self.variants and trained:
            probes["aligned"] = trained[-1].probe
        if "oracle" in self.variants:
            probes["oracle"] = self.oracle()
        # every (variant, seed) fit is its own stage, submitted together through the run's executor
        keys = [(label, seed) for label in probes for seed in self.seeds]
        fits = stages(self.ctx.executor, self.ctx.store, [self.shard(probes[label], seed) for label, seed in keys])
        runs: dict[str, list[dict]] = {label: [] for label in probes}
        for (label, _), art in zip(keys, fits):
            runs[label].append(art.data["metrics"])
        last = trained[-1].t if trained else 0
        table = Table(self.title, list(self.columns), notes=[])
        metrics: dict = {}
        for label, per_seed in runs.items():
            row = stats.summarise(per_seed)
            table.rows[LABELS.get(label, label).format(t=last)] = row
            # a single variant (no knowledge at all) reports its metrics unprefixed
            metrics.update({(m if len(runs) == 1 else f"{label}/{m}"): v for m, v in row.items()})
        table.paired = stats.paired(runs, PAIRS, list(self.paired_metrics))
        for e in table.paired:
            metrics[f"paired/{e['comparison']}/{e['metric']}/mean_diff"] = e["mean_diff"]
            if "p" in e:
                metrics[f"paired/{e['comparison']}/{e['metric']}/p"] = e["p"]
        if len(self.seeds) > 1:
            table.notes.append(f"Mean ± std over seeds {self.seeds}; paired t-tests across seeds.")
        extra_rows, extra_metrics = self.reference_rows()
        table.rows.update(extra_rows)
        metrics.update(extra_metrics)
        return table, metrics

    def reference_rows(self) -> tuple[dict, dict]:
        return {}, {}

    def shard(self, knowledge: Probe | None, seed: int) -> Shard:
        """The fit of the model with this knowledge (or none) and this seed, as a stage (metrics, and
        the best weights in `model.pt`) an executor can build: `fit_variant` and picklable arguments."""
        deps = {
            "data": self.ctx.data_key,
            "model": self.model_cfg,
            "optimizer": self.optimizer_cfg,
            "seed": seed,
            "knowledge": None if knowledge is None else [knowledge.key, self.adapter_cfg],
            "trainer": self.ctx.trainer_key,
            "patience": self.patience,
            **self.fit_deps(),
        }

        def make():
            loaders = self.loaders(seed)  # first, here: building lists may fit an initial ranker
            user = item = adapter = None
            if knowledge is not None:
                user, item, adapter = knowledge.vectors, knowledge.item_vectors, instantiate(self.adapter_cfg)
            return partial(
                fit_variant,
                model=partial(build_model, self.factory(), self.ctx.prep.spec, adapter, user, item),
                task=self.task(),
                loaders=loaders,
                seed=seed,
                # its own log version (the stage key): fits an executor runs side by side never share a CSV file
                make_trainer=partial(self.ctx.trainer, inner=False, log_version=f"{self.name}-{fingerprint(deps)}"),
                monitor=self.monitor,
                patience=self.patience,
                deps=_plain(deps),
                info=self.fit_info(),
            )

        return Shard(f"fit/{self.name}", deps, make)

    def factory(self):
        """The model's `_partial_` factory."""
        return instantiate(self.model_cfg)

    def fit_deps(self) -> dict:
        return {}

    def fit_info(self) -> dict:
        return {}


def fit_variant(
    work, *, model, task, make_trainer, loaders: tuple, seed: int, monitor: str, patience: int, deps: dict, info: dict
) -> dict:
    """One fit of the table (a stage build, wherever the executor runs it): seeded here, `model()`
    built, fitted with `task(model)` on the (train, valid, test) `loaders`; the best weights go to
    `model.pt` with the resolved config that rebuilds them (`deps`)."""
    pl.seed_everything(seed, workers=True)
    fitted = fit(make_trainer, task(model()), *loaders, monitor=monitor, patience=patience)
    torch.save({"state_dict": fitted.model.state_dict(), "deps": deps}, Path(work) / "model.pt")
    return {"metrics": {**fitted.metrics, **info}}


def items_only(probe: Probe) -> Probe:
    """The probe's item knowledge with every user given the same vector (the mean of the users'):
    what the item side alone contributes, so the user texts' own share can be tested."""
    users = np.flatnonzero(np.abs(probe.vectors).sum(1) > 0)
    shared = probe.vectors.copy()
    shared[users] = probe.vectors[users].mean(0)
    return Probe("items", fingerprint("items-only", probe.key), {}, shared, probe.item_vectors)


class CTRDownstream(KnowledgeDownstream):
    """`downstream=ctr` (TrackRec): a CTR backbone (`model: ${backbone}`) on the CTR samples."""

    title = "Knowledge variants"
    columns = ("test/auc", "test/logloss", "test/uauc", "val/auc")
    paired_metrics = ("test/auc", "test/logloss")
    monitor = "val/auc"

    def task(self):
        """model → its CTRTask (picklable)."""
        from rlrec.tasks.ctr import CTRTask

        return partial(
            CTRTask,
            optimizer=instantiate(self.optimizer_cfg),
            config=OmegaConf.to_container(self.ctx.cfg, resolve=True),
        )

    def loaders(self, seed: int):
        dm = self.ctx.datamodule
        return dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()


class RerankDownstream(KnowledgeDownstream):
    """`downstream=rerank` (DPO4Rec) and `downstream=kar` (KAR): a re-ranker (`model: ${reranker}`)
    on the lists of `cfg.rerank`; the table adds the initial order and a shuffled order."""

    title = "Knowledge variants (re-ranking)"
    columns = ("test/map@5", "test/ndcg@5", "test/click@5", "val/map@5", "val/ndcg@5")
    paired_metrics = ("test/map@5", "test/ndcg@5")

    def __init__(self, ctx, *args, **kwargs):
        if "patience" in kwargs:
            raise ValueError("downstream.patience: a re-ranker's patience is rerank.patience (it depends on the lists)")
        super().__init__(ctx, *args, patience=int(ctx.cfg.rerank.patience), **kwargs)
        self.rr = ctx.cfg.rerank
        self.monitor = f"val/{self.rr.monitor}"

    @property
    def lists(self):
        return rerank_lists(self.ctx)

    def factory(self):
        return reranker_factory(self.ctx, self.model_cfg)

    def knowledge_items(self) -> list[int]:
        return sorted({int(i) for s in SPLITS for i in np.unique(self.lists[s].items) if i > 0})

    def task(self):
        """model → its RerankTask (picklable)."""
        from rlrec.tasks.rerank import RerankTask

        rr = self.rr
        return partial(
            RerankTask,
            optimizer=instantiate(self.optimizer_cfg),
            loss=rr.loss,
            ks=tuple(rr.ks),
            map_definition=rr.map_definition,
            empty_lists=rr.empty_lists,
        )

    def loaders(self, seed: int):
        bs = int(self.rr.batch_size)
        return tuple(TensorBatches(self.lists[s].tensors(), bs, shuffle=s == "train", seed=seed) for s in SPLITS)

    def fit_deps(self) -> dict:
        return {"rerank": self.rr}

    def fit_info(self) -> dict:
        return {f"lists/{s}": len(self.lists[s]) for s in SPLITS}

    def reference_rows(self) -> tuple[dict, dict]:
        """The initial order and a shuffled order of the same test lists (what a re-ranker must beat)."""
        test, rr = self.lists["test"], self.rr
        rng = np.random.default_rng(self.ctx.seed)
        rows, metrics = {}, {}
        for label, scores in (("initial", test.initial), ("shuffled", rng.random(test.items.shape))):
            per = list_metrics(scores, test.labels, test.mask, tuple(rr.ks), rr.map_definition)
            row = {f"test/{k}": v for k, v in mean_list_metrics(per, (test.labels > 0).any(1), rr.empty_lists).items()}
            rows[f"{label} order"] = row
            metrics.update({f"{label}/{k}": v for k, v in row.items()})
        if rr.get("initial_ranker") is not None:
            _, ranker = initial_scores(self.ctx)
            metrics.update({f"initial_ranker/{k}": v for k, v in ranker.items()})
        return rows, metrics
