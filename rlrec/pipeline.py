"""The run as named, cached, resumable stages.

Each stage's artifact lives in `cache_dir/<stage>/<hash of the config it depends on>/` and is
published atomically (built in a `.partial` directory, then renamed), so a killed run resumes
by redoing at most the interrupted stage, and a sweep reuses every stage whose inputs match.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlrec.cache import atomic_write_json, fingerprint, read_json
from rlrec.data.ctr import TensorBatches
from rlrec.data.rerank import kar_lists, ranked_lists
from rlrec.metrics import list_metrics, mean_list_metrics

SPLITS = ("train", "valid", "test")


@dataclass
class Knowledge:
    """Per-user knowledge vectors (num_users + 1, D) (row 0 = padding) and the hash of how they
    were made (so every stage that uses them is cached by it)."""

    name: str
    key: str
    user: np.ndarray | None  # None in judge mode: the texts are the recommendations themselves
    item: np.ndarray | None = None  # (num_items + 1, D) item knowledge (KAR), row 0 = padding
    metrics: dict = field(default_factory=dict)  # judge mode: the policy's evaluation
    texts: dict | None = None  # u → the text the vectors encode (an LLM validator reads text)


log = logging.getLogger("rlrec")


def component_name(node) -> str:
    """`rlrec.backbones.din.DIN` → `din` (the yaml/file name convention)."""
    target = node.get("_target_", "") if node is not None else ""
    return target.rsplit(".", 1)[-1].lower() if target else "none"


class Throughput(pl.Callback):
    """Training samples/s over the whole fit (data loading included, validation excluded)."""

    def __init__(self):
        self.samples, self.seconds, self._t = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seconds += time.perf_counter() - self._t
        self.samples += len(batch["label"])

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


class Pipeline:
    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.cache_dir = Path(cfg.cache_dir)
        self.results: dict = {"metrics": {}, "stages": {}}
        self._datamodule = None

    # ---- caching -------------------------------------------------------------------------
    def cached(self, stage: str, deps: dict, build: Callable[[Path], dict]) -> dict:
        key = fingerprint(deps)
        final = self.cache_dir / stage / key
        done = final / "result.json"
        t0 = time.perf_counter()
        if done.exists() and self.cfg.get("use_cache", True):
            log.info("stage %s: cached (%s)", stage, final)
            result = read_json(done)
            self.results["stages"][stage] = {"cached": True, "dir": str(final)}
            return result
        work = final.with_name(key + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        result = build(work)
        atomic_write_json(work / "result.json", result)
        atomic_write_json(work / "deps.json", deps)
        if final.exists():  # use_cache=false: replace the old artifact
            shutil.rmtree(final)
        work.rename(final)
        self.results["stages"][stage] = {
            "cached": False,
            "dir": str(final),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return result

    # ---- shared objects ----------------------------------------------------------------
    @property
    def datamodule(self):
        if self._datamodule is None:
            self._datamodule = instantiate(self.cfg.dataset)
            self._datamodule.setup()
        return self._datamodule

    def loggers(self) -> list:
        return [instantiate(c) for c in (self.cfg.get("logger") or [])]

    # ---- stages ------------------------------------------------------------------------
    def describe(self) -> dict:
        info = self.datamodule.describe()
        self.results["data"] = info
        return info

    def build_model(self, factory: DictConfig, knowledge: Knowledge | None = None) -> torch.nn.Module:
        """Instantiate a backbone / re-ranker from the DataModule's FeatureSpec; with `knowledge`,
        one more field (user knowledge through `cfg.adapter`) loaded with its vectors."""
        spec = self.datamodule.feature_spec
        if knowledge is None:
            return instantiate(factory)(features=spec)
        dims = (knowledge.user.shape[1],) + ((knowledge.item.shape[1],) if knowledge.item is not None else ())
        model = instantiate(factory)(
            features=spec.with_knowledge(dims), adapter=instantiate(self.cfg.adapter)
        )
        model.embedding.set_knowledge(
            user=torch.as_tensor(knowledge.user, dtype=torch.float32),
            item=None if knowledge.item is None else torch.as_tensor(knowledge.item, dtype=torch.float32),
        )
        return model

    def fit_backbone(
        self,
        backbone: DictConfig | None = None,
        record: bool = True,
        knowledge: Knowledge | None = None,
        seed: int | None = None,
    ) -> dict:
        """Train a CTR backbone (default: cfg.backbone) with early stopping on val/auc; test the
        best checkpoint. Returns {"backbone", "metrics", "checkpoint" (absolute path)}."""
        cfg = self.cfg
        backbone = cfg.backbone if backbone is None else backbone
        deps = {
            "knowledge": None if knowledge is None else [knowledge.key, cfg.adapter],
            "dataset": cfg.dataset,
            "split": cfg.split,
            "backbone": backbone,
            "optimizer": cfg.optimizer,
            "trainer": {
                k: cfg.trainer.get(k) for k in ("max_epochs", "limit_train_batches", "limit_val_batches")
            },
            "patience": cfg.early_stopping_patience,
            "seed": cfg.seed if seed is None else seed,
        }
        name = component_name(backbone)

        def build(work: Path) -> dict:
            pl.seed_everything(deps["seed"], workers=True)
            dm = self.datamodule
            model = self.build_model(backbone, knowledge)
            from rlrec.tasks.ctr import CTRTask

            task = CTRTask(model, instantiate(cfg.optimizer), OmegaConf.to_container(cfg, resolve=True))
            ckpt = pl.callbacks.ModelCheckpoint(
                dirpath=work / "checkpoints", monitor="val/auc", mode="max", save_top_k=1, filename="best"
            )
            stop = pl.callbacks.EarlyStopping(
                monitor="val/auc", mode="max", patience=cfg.early_stopping_patience
            )
            speed = Throughput()
            trainer = instantiate(cfg.trainer, callbacks=[ckpt, stop, speed], logger=self.loggers() or False)
            trainer.fit(task, datamodule=dm)
            # model selection used validation only; test is evaluated once, on the best checkpoint
            test = trainer.test(
                task, datamodule=dm, ckpt_path="best" if ckpt.best_model_path else None, verbose=False
            )
            val = trainer.validate(
                task, datamodule=dm, ckpt_path="best" if ckpt.best_model_path else None, verbose=False
            )
            metrics = {k: float(v) for k, v in {**val[0], **test[0]}.items()}
            metrics["train/samples_per_s"] = round(speed.rate, 1)
            metrics["train/epochs"] = trainer.current_epoch
            return {"backbone": name, "metrics": metrics, "checkpoint": "checkpoints/best.ckpt"}

        stage = f"fit_backbone/{name}" + (f"+{knowledge.name}" if knowledge else "")
        result = self.cached(stage, deps, build)
        result["checkpoint"] = str(Path(self.results["stages"][stage]["dir"]) / result["checkpoint"])
        if record:
            self.results["metrics"].update(result["metrics"])
        result["deps"] = deps
        return result

    def load_backbone(self, fitted: dict, backbone: DictConfig) -> torch.nn.Module:
        model = instantiate(backbone)(features=self.datamodule.feature_spec)
        state = torch.load(fitted["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(
            {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        )
        return model.eval()

    def initial_scores(self) -> dict:
        """LibRerank's initial ranker: a CTR backbone trained on train, scoring valid and test rows."""
        ranker = self.cfg.rerank.initial_ranker
        fitted = self.fit_backbone(ranker, record=False)
        self.results["metrics"].update({f"initial_ranker/{k}": v for k, v in fitted["metrics"].items()})

        def build(work: Path) -> dict:
            model = self.load_backbone(fitted, ranker)
            out = {}
            with torch.no_grad():
                for split in ("valid", "test"):
                    t = self.datamodule.tensors(split)
                    chunks = [model(b) for b in TensorBatches(t, 8192)]
                    scores = torch.cat(chunks).numpy() if chunks else np.zeros(0, np.float32)
                    np.save(work / f"{split}.npy", scores)
                    out[split] = f"{split}.npy"
            return out

        result = self.cached(f"initial_scores/{component_name(ranker)}", fitted["deps"], build)
        folder = Path(self.results["stages"][f"initial_scores/{component_name(ranker)}"]["dir"])
        return {s: np.load(folder / f) for s, f in result.items()}

    def rerank_lists(self) -> dict:
        """train/valid/test RerankLists in the configured style (`rerank.list_style`)."""
        rr, prep = self.cfg.rerank, self.datamodule.prep
        if rr.list_style == "kar":
            return {
                s: kar_lists(prep, s, rr.chunk, rr.list_len, rr.seed, rr.exclude_user_items) for s in SPLITS
            }
        if rr.list_style != "librerank":
            raise ValueError(f"rerank.list_style must be 'kar' or 'librerank', got {rr.list_style!r}")
        scores = self.initial_scores()
        pool = ranked_lists(prep, "valid", scores["valid"], rr.list_len)
        test = ranked_lists(prep, "test", scores["test"], rr.list_len)
        # the re-ranker learns on lists built from the validation period; hold out 10% of those users
        held = (pool.user * 2654435761 % 100) < 10
        return {"train": pool.subset(~held), "valid": pool.subset(held), "test": test}

    def fit_reranker(
        self,
        reranker: DictConfig | None = None,
        record: bool = True,
        knowledge: Knowledge | None = None,
        seed: int | None = None,
    ) -> dict:
        """Train a re-ranker (default cfg.backbone: dlcm/prm/setrank) on re-rank lists with early
        stopping on the validation metric; also report the initial order and a shuffled order."""
        cfg, rr = self.cfg, self.cfg.rerank
        reranker = cfg.backbone if reranker is None else reranker
        lists = self.rerank_lists()
        test = lists["test"]
        ks = tuple(rr.ks)
        rng = np.random.default_rng(cfg.seed)
        for label, scores in (("initial", test.initial), ("shuffled", rng.random(test.items.shape))):
            if not record:
                break
            per = list_metrics(scores, test.labels, test.mask, ks, rr.map_definition)
            for k, v in mean_list_metrics(per, (test.labels > 0).any(1), rr.empty_lists).items():
                self.results["metrics"][f"{label}/test/{k}"] = v
        name = component_name(reranker)
        deps = {"dataset": cfg.dataset, "split": cfg.split, "backbone": reranker, "rerank": rr,
                "knowledge": None if knowledge is None else [knowledge.key, cfg.adapter],
                "optimizer": cfg.optimizer, "max_epochs": cfg.trainer.max_epochs,
                "limit": cfg.trainer.limit_train_batches, "seed": cfg.seed if seed is None else seed}  # fmt: skip

        def build(work: Path) -> dict:
            from rlrec.tasks.rerank import RerankTask

            pl.seed_everything(deps["seed"], workers=True)
            model = self.build_model(reranker, knowledge)
            task = RerankTask(
                model, instantiate(cfg.optimizer), rr.loss, ks, rr.map_definition, rr.empty_lists
            )
            monitor = f"val/{rr.monitor}"
            ckpt = pl.callbacks.ModelCheckpoint(
                dirpath=work / "checkpoints", monitor=monitor, mode="max", filename="best"
            )
            stop = pl.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=rr.patience)
            trainer = instantiate(cfg.trainer, callbacks=[ckpt, stop], logger=self.loggers() or False)
            loaders = {
                s: TensorBatches(lists[s].tensors(), rr.batch_size, shuffle=s == "train", seed=deps["seed"])
                for s in lists
            }
            trainer.fit(task, loaders["train"], loaders["valid"])
            best = "best" if ckpt.best_model_path else None
            val = trainer.validate(task, loaders["valid"], ckpt_path=best, verbose=False)
            tst = trainer.test(task, loaders["test"], ckpt_path=best, verbose=False)
            metrics = {k: float(v) for k, v in {**val[0], **tst[0]}.items()}
            metrics["lists/train"], metrics["lists/valid"], metrics["lists/test"] = (
                len(lists[s]) for s in SPLITS
            )
            return {"backbone": name, "metrics": metrics, "checkpoint": "checkpoints/best.ckpt"}

        result = self.cached(
            f"fit_reranker/{name}" + (f"+{knowledge.name}" if knowledge else ""), deps, build
        )
        if record:
            self.results["metrics"].update(result["metrics"])
        return result

    def align(self) -> dict:
        """The preference-optimisation loop (rlrec.alignment): knowledge texts per round."""
        from rlrec.alignment import AlignmentLoop

        loop = AlignmentLoop(self)
        out = loop.run()
        self.results["metrics"].update(out["metrics"])
        self.results["history"] = out["history"]
        self.knowledge = out["knowledge"]
        self.recommend_rows, self.reclaif_task, self.encoder = out["rows"], loop.rec, loop.encoder
        return out

    def kar(self) -> dict:
        """KAR (Xi et al. 2023) on re-rank lists: the LLM writes user-preference knowledge (KAR's user
        prompt, from each user's prompt history) and factual item knowledge (KAR's item prompt, for
        every item in the lists); the encoder embeds both; every re-ranker of `kar.backbones` is
        trained without and with them (user + item fields through `adapter`, KAR's hybrid-expert
        adaptor by default) over `compare.seeds`. Generations and vectors are cached: a rerun
        regenerates nothing."""
        from scipy.stats import ttest_rel

        from rlrec.cache import fingerprint
        from rlrec.tasks.llm import LLMTask

        cfg, K, dm = self.cfg, self.cfg.kar, self.datamodule
        prep = dm.prep
        llm_cfg, encoder = instantiate(cfg.llm), instantiate(cfg.encoder)
        view = dm.prompts(K.get("history_len"))
        users = sorted(view.histories)
        lists = self.rerank_lists()
        items = sorted({int(i) for s in SPLITS for i in np.unique(lists[s].items) if i > 0})
        user_prompts = view.user_prompts(dm.templates.get("user", "user"), users)
        item_prompts = view.item_prompts(dm.templates.get("item", "item"), items)
        task = LLMTask(llm_cfg)
        task.configure_model()
        gen = self.generator_for(task, llm_cfg)
        log.info("kar: knowledge for %d users and %d items", len(users), len(items))
        user_texts = gen.greedy([user_prompts[u] for u in users], int(K.user_max_new_tokens))
        item_texts = gen.greedy([item_prompts[i] for i in items], int(K.item_max_new_tokens))
        uv, iv = encoder.encode(user_texts), encoder.encode(item_texts)
        user = np.zeros((prep.spec.num_users + 1, uv.shape[1]), np.float32)
        item = np.zeros((prep.spec.num_items + 1, iv.shape[1]), np.float32)
        user[users], item[items] = uv, iv
        key = fingerprint(llm_cfg.fingerprint, cfg.dataset, cfg.split, K, encoder.fingerprint, users, items)
        knowledge = Knowledge("kar", key, user, item=item)
        seeds = list(cfg.compare.get("seeds") or [cfg.seed])
        rows: dict[str, dict] = {}
        paired: dict[str, dict] = {}
        for name in K.backbones:
            node = OmegaConf.create(OmegaConf.to_container(cfg.kar.backbone_configs[name], resolve=True))
            runs = {v: [self.fit_reranker(node, record=False, knowledge=k, seed=int(sd))["metrics"] for sd in seeds]
                    for v, k in (("base", None), ("kar", knowledge))}  # fmt: skip
            for v, per in runs.items():
                keys = per[0].keys()
                row = {m: float(np.mean([r[m] for r in per])) for m in keys}
                if len(seeds) > 1:
                    row.update({f"{m}_std": float(np.std([r[m] for r in per], ddof=1)) for m in keys})
                rows[f"{name}/{v}"] = row
                self.results["metrics"].update({f"{name}/{v}/{m}": x for m, x in row.items() if "@" in m})
            for m in ("test/map@5", "test/ndcg@5"):
                x, y = np.array([r[m] for r in runs["kar"]]), np.array([r[m] for r in runs["base"]])
                e = {"mean_diff": float((x - y).mean()), "n": len(seeds)}
                if len(seeds) > 1 and np.any(x != y):
                    t = ttest_rel(x, y)
                    e.update({"t": float(t.statistic), "p": float(t.pvalue)})
                paired[f"{name}/{m}"] = e
        self.results["table"] = {"kind": "kar", "rows": rows, "seeds": seeds, "paired": paired,
                                 "users": len(users), "items": len(items),
                                 "examples": {"user": user_texts[:2], "item": item_texts[:2]}}  # fmt: skip
        return rows

    def generator_for(self, task, llm_cfg):
        from rlrec.llm.generation import Generator

        S = self.cfg.sampling
        return Generator(task.policy.eval(), task.tokenizer, llm_cfg.fingerprint, Path(self.cfg.cache_dir) / "generations",
                         batch_size=int(S.batch_size))  # fmt: skip

    def recommend(self) -> dict:
        """RecLAIF's table: the classic baselines (next-item: SASRec; query: BM25 and a dense
        encoder + faiss retriever) and every LLM policy of the align stage (zero-shot, SFT, DPO
        round 1..T) on the same test questions — validity, Hit@k / NDCG@k / Precision@k, diversity,
        explainability."""
        rows = getattr(self, "recommend_rows", None)
        assert rows, "the recommend stage needs the align stage with feedback=judge first"
        rec, cfg = self.reclaif_task, self.cfg
        test = [rec.instances["test"][u] for u in sorted(rec.instances["test"])]
        baselines: dict[str, dict] = {}
        if rec.setting == "next_item":
            deps = {"dataset": cfg.dataset, "split": cfg.split, "reclaif": cfg.reclaif, "sasrec": cfg.sasrec,
                    "seed": cfg.seed}  # fmt: skip

            def build(work: Path) -> dict:
                return {"metrics": self._sasrec(rec, test)}

            baselines["SASRec"] = self.cached("baseline/sasrec", deps, build)["metrics"]
        else:
            from rlrec.seqrec.retrieval import BM25Retriever, DenseRetriever

            corpus = rec.texts[1:]  # corpus position p = catalogue item p + 1
            for name, retriever in (("BM25", BM25Retriever(corpus)), ("Dense", DenseRetriever(self.encoder.encode, corpus))):  # fmt: skip
                ranked = [
                    [p + 1 for p in retriever.rank(inst.query, [i - 1 for i in inst.candidates], rec.k)] for inst in test
                ]  # fmt: skip
                baselines[name] = {**rec.score_lists(test, ranked, self.encoder.encode), "validity": 1.0}
        labels = {"zero_shot": "LLM zero-shot", "sft": "SFT", "round0": "LLM (round 0)"}
        table = dict(baselines)
        for name, m in rows.items():
            table[labels.get(name, name.replace("round", "DPO round "))] = m
        self.results["table"] = {"kind": "recommend", "rows": table, "setting": rec.setting,
                                 "k": rec.k, "users": len(test)}  # fmt: skip
        for label, m in baselines.items():
            self.results["metrics"].update({f"{label.lower()}/{k}": v for k, v in m.items()})
        return table

    def _sasrec(self, rec, test: list) -> dict:
        """Train SASRec on every user's positives before the test period; rank each test question's
        candidates from the same history the LLM sees."""
        from rlrec.reclaif import next_item_instances
        from rlrec.seqrec.sasrec import fit_sasrec, pad_left, rank_candidates

        f = self.datamodule.prep.frame
        f = f[(f["label"] > 0) & f["split"].isin(["prompt", "train"])]
        seqs = {int(u): g["i"].tolist() for u, g in f.groupby("u", sort=True)}
        S = self.cfg.sasrec
        num_items = self.datamodule.prep.spec.num_items
        model = instantiate(S.model)
        valid = next_item_instances(self.datamodule.prep.frame, "valid", num_items, len(test[0].history),
                                    len(test[0].candidates), 1, int(self.cfg.seed))  # fmt: skip
        v = [valid[u] for u in sorted(valid)]
        max_len = int(S.model.max_len)
        batch = {
            "seq": torch.as_tensor(pad_left([i.history for i in v], max_len)),
            "target": torch.tensor([i.target for i in v]),
            "candidates": torch.tensor([i.candidates for i in v]),
        } if v else None  # fmt: skip
        sasrec = fit_sasrec(seqs, num_items, valid=batch, model=model, max_epochs=int(S.max_epochs),
                            batch_size=int(S.batch_size), patience=S.get("patience"),
                            seed=int(self.cfg.seed))  # fmt: skip
        hist = pad_left([i.history for i in test], max_len)
        cands = np.array([i.candidates for i in test])
        order = rank_candidates(sasrec, hist, cands)
        ranked = np.take_along_axis(cands, order, 1)[:, : rec.k].tolist()
        return {
            **rec.score_lists(test, ranked, self.encoder.encode),
            "validity": 1.0,
            "explainability": float("nan"),
        }

    def compare(self) -> dict:
        """The paper table: cfg.backbone without knowledge, with the un-aligned LLM's knowledge
        (round 0, the KAR-style row) and with the aligned LLM's knowledge (last round), each
        trained with every seed of `compare.seeds`; paired t-tests across those seeds."""
        from scipy.stats import ttest_rel

        knowledge = getattr(self, "knowledge", None)
        assert knowledge, "the compare stage needs the align stage first (stages: [..., align, compare])"
        C = self.cfg.compare
        last = max(knowledge)
        variants = {"base": None, "round0": knowledge[0]}
        if last > 0:
            variants["aligned"] = knowledge[last]
        seeds = list(C.get("seeds") or [self.cfg.seed])
        fit = self.fit_reranker if C.kind == "rerank" else self.fit_backbone
        runs: dict[str, list[dict]] = {label: [] for label in variants}
        for seed in seeds:
            for label, k in variants.items():
                runs[label].append(fit(record=False, knowledge=k, seed=int(seed))["metrics"])
        table, main = {}, ("test/auc" if C.kind != "rerank" else "test/map@5")
        for label, per_seed in runs.items():
            keys = per_seed[0].keys()
            table[label] = {m: float(np.mean([r[m] for r in per_seed])) for m in keys}
            if len(seeds) > 1:
                table[label].update(
                    {f"{m}_std": float(np.std([r[m] for r in per_seed], ddof=1)) for m in keys}
                )
            self.results["metrics"].update({f"{label}/{m}": v for m, v in table[label].items()})
        paired = {}
        pairs = [("round0", "base"), ("aligned", "base"), ("aligned", "round0")]
        for a, b in pairs:
            if a not in runs or b not in runs:
                continue
            metrics = [main, "test/ndcg@5"] if C.kind == "rerank" else [main, "test/logloss"]
            for m in metrics:
                x = np.array([r[m] for r in runs[a]])
                y = np.array([r[m] for r in runs[b]])
                entry = {"mean_diff": float((x - y).mean()), "n": len(seeds)}
                if len(seeds) > 1 and np.any(x != y):
                    t = ttest_rel(x, y)
                    entry.update({"t": float(t.statistic), "p": float(t.pvalue)})
                paired[f"{a}-{b}/{m}"] = entry
                self.results["metrics"][f"paired/{a}-{b}/{m}/mean_diff"] = entry["mean_diff"]
                if "p" in entry:
                    self.results["metrics"][f"paired/{a}-{b}/{m}/p"] = entry["p"]
        self.results["table"] = {
            "kind": C.kind,
            "rows": table,
            "rounds": last,
            "seeds": seeds,
            "paired": paired,
        }
        return table

    def run(self) -> dict:
        torch.set_num_threads(int(self.cfg.threads))
        stages = list(self.cfg.stages)
        unknown = [s for s in stages if not callable(getattr(self, s, None)) or s.startswith("_")]
        if unknown:
            raise ValueError(
                f"unknown stage(s) {unknown} in `stages`; known: describe, fit_backbone, fit_reranker, align, compare"
            )
        for stage in stages:
            log.info("stage %s", stage)
            getattr(self, stage)()
        return self.results
