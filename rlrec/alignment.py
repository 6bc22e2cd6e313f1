"""The iterative loop shared by the three papers:

    round 0: greedy knowledge from the un-aligned policy → vectors → feedback.fit
    for t in 1..T:  sample N texts for a subset of users → score (feedback) → preference groups
                    → align (DPO / S-DPO / IPO, LoRA) → greedy knowledge from the aligned policy
                    → vectors → feedback.fit (TrackRec's Rec-tuning)

Every step is resumable: generations and vectors live in their caches (keyed by model +
adapter fingerprint, prompt, sampling parameters), rewards and adapters are stage artifacts
keyed by a chain hash (everything the round depends on, including the previous round). A run
killed anywhere redoes at most the step in flight.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlrec.cache import fingerprint
from rlrec.feedback.base import build_groups
from rlrec.feedback.judge import JudgeStats
from rlrec.pipeline import Knowledge, Pipeline
from rlrec.tasks import inner_trainer

log = logging.getLogger("rlrec")


class AlignmentLoop:
    def __init__(self, pipe: Pipeline):
        self.pipe, self.cfg = pipe, pipe.cfg
        self.A: DictConfig = self.cfg.alignment
        dm = pipe.datamodule
        self.prep = dm.prep
        template = dm.templates.get(self.A.prompt, self.A.prompt)
        self.rec = None  # RecLAIF: the LLM is the recommender; its answers are the "knowledge"
        if self.cfg.feedback.name == "judge":
            from rlrec.data.prompts import DEFAULT_DOMAIN
            from rlrec.reclaif import RecommendationTask

            options = OmegaConf.to_container(self.cfg.reclaif, resolve=True)
            self.rec = RecommendationTask(
                self.prep, template, {**DEFAULT_DOMAIN, **(dm.domain or {})}, **options
            )
            self.prompts = self.rec.prompts("train")
            users = sorted(self.prompts)
        else:
            view = dm.prompts(self.A.get("history_len"))
            users = sorted(view.histories)
            self.prompts = view.user_prompts(template, users)
        self.users = np.array(users, dtype=np.int64)
        self.rows: dict[str, dict] = {}  # judge mode: evaluation per policy (zero-shot, SFT, rounds)
        self.llm_cfg = instantiate(self.cfg.llm)
        self.encoder = instantiate(self.cfg.encoder)
        self.root = Fingerprints(self.cfg, self.llm_cfg.fingerprint)
        self._task = None
        self._generator = None
        self.feedback = None
        self._fitted_on: str | None = None

    # ---- the policy --------------------------------------------------------------------
    def task(self, adapter_path: str | None = None):
        """A fresh PreferenceTask continuing from `adapter_path` (the previous round's adapter)."""
        P = self.cfg.preference
        kwargs = OmegaConf.to_container(P.task, resolve=True)
        kwargs.pop("llm", None)
        kwargs["optimizer"] = instantiate(P.task.optimizer)
        target = kwargs.pop("_target_")
        assert target.endswith("PreferenceTask"), target
        from rlrec.tasks.preference import PreferenceTask

        task = PreferenceTask(self.llm_cfg, adapter_path=adapter_path, **kwargs)
        task.configure_model()
        return task

    def generator(self, task):
        from rlrec.llm.generation import Generator

        G = self.A
        return Generator(
            task.policy.eval(), task.tokenizer, self.llm_cfg.fingerprint, Path(self.cfg.cache_dir) / "generations",
            batch_size=int(G.batch_size), progress=bool(G.get("progress", True)),
        )  # fmt: skip

    # ---- knowledge ---------------------------------------------------------------------
    def knowledge(self, gen, adapter_fp: str, name: str) -> tuple[Knowledge, list[str]]:
        if self.rec is not None:
            return self.evaluate(gen, adapter_fp, name)
        prompts = [self.prompts[int(u)] for u in self.users]
        texts = gen.greedy(prompts, int(self.A.max_new_tokens), adapter_fingerprint=adapter_fp)
        vecs = self.encoder.encode(texts)
        table = np.zeros((self.prep.spec.num_users + 1, vecs.shape[1]), np.float32)
        table[self.users] = vecs
        key = fingerprint(
            adapter_fp, self.root.base, "greedy", self.A.max_new_tokens, self.encoder.fingerprint
        )
        return Knowledge(name, key, table, texts=dict(zip(self.users.tolist(), texts))), texts

    def evaluate(self, gen, adapter_fp: str, name: str) -> tuple[Knowledge, list[str]]:
        """Judge mode: the policy's greedy answers on the test questions, scored (validity, Hit@k,
        NDCG@k, diversity) and rated for explainability by the judge; cached as a stage."""
        prompts = self.rec.prompts("test")
        users = sorted(prompts)
        texts = gen.greedy(
            [prompts[u] for u in users], int(self.A.max_new_tokens), adapter_fingerprint=adapter_fp
        )
        key = fingerprint(adapter_fp, self.root.base, "greedy-test", self.A.max_new_tokens)

        def build(work: Path, _texts=texts) -> dict:
            metrics, parsed = self.rec.evaluate("test", dict(zip(users, _texts)), encode=self.encoder.encode)
            if self.feedback is None:
                self.feedback = self.make_feedback()
            metrics["explainability"] = float(np.nanmean(self.feedback.explain(users, _texts)))
            examples = [{"user": u, "answer": t, "valid": parsed[u].valid} for u, t in zip(users[:5], _texts)]
            return {"metrics": metrics, "examples": examples}

        out = self.pipe.cached(f"evaluate/{name}", {"key": key, "feedback": self.cfg.feedback}, build)
        self.rows[name] = out["metrics"]
        return Knowledge(name, key, None, metrics=out["metrics"]), texts

    def distill(self, task, gen) -> tuple[str, str]:
        """Optional SFT of the policy on a teacher's answers to the training prompts (TrackRec's CoT
        distillation, RecLAIF's SFT on Claude's answers). Teacher: `distill.teacher` (an llm config),
        an OpenAI-compatible endpoint (`distill.base_url` + `distill.api_model`), or, when neither is
        set, the policy itself (self-distillation). In judge mode only answers that parse as valid
        are kept (rejection sampling on the format). Returns (adapter path, adapter fingerprint)."""
        D, P = self.A.distill, self.cfg.preference
        pool = [int(u) for u in self.users]
        rng = np.random.default_rng(int(self.cfg.seed))
        users = sorted(rng.choice(pool, size=min(int(D.num_users), len(pool)), replace=False).tolist())
        teacher_cfg = instantiate(D.teacher) if D.get("teacher") else None
        teacher_id = (
            teacher_cfg.fingerprint if teacher_cfg else (D.get("api_model") or self.llm_cfg.fingerprint)
        )
        deps = {"base": self.root.base, "teacher": teacher_id, "distill": D, "users": users}

        def build(work: Path) -> dict:
            from torch.utils.data import DataLoader

            from rlrec.llm.data import SFTDataset
            from rlrec.tasks.sft import SFTTask

            prompts = [self.prompts[u] for u in users]
            cache = Path(self.cfg.cache_dir) / "generations"
            if D.get("base_url"):
                from rlrec.llm.generation import Generator

                teacher = Generator(D.api_model, None, f"openai:{D.api_model}", cache, backend="openai",
                                    base_url=D.base_url)  # fmt: skip
            elif teacher_cfg is not None:
                from rlrec.llm.generation import Generator
                from rlrec.llm.loading import load_model

                model, tok = load_model(teacher_cfg)
                teacher = Generator(
                    model.eval(), tok, teacher_cfg.fingerprint, cache, batch_size=int(self.A.batch_size)
                )
            else:
                teacher = gen
            answers = teacher.greedy(prompts, int(D.max_new_tokens), adapter_fingerprint="base")
            strict = self.rec is not None and bool(D.get("require_valid", True))

            def ok(u: int, a: str) -> bool:
                return bool(a.strip()) and (
                    not strict or self.rec.parse(self.rec.instances["train"][u], a).valid
                )

            n_extra = int(D.get("num_samples", 0) or 0)
            if strict and n_extra:  # greedy answer unusable: try the teacher's samples, keep the first usable
                redo = [k for k, (u, a) in enumerate(zip(users, answers)) if not ok(u, a)]
                extra = teacher.sample([prompts[k] for k in redo], n_extra, float(self.A.temperature),
                                       float(self.A.top_p), int(D.max_new_tokens), seed=int(self.cfg.seed),
                                       adapter_fingerprint="base") if redo else []  # fmt: skip
                for k, row in zip(redo, extra):
                    answers[k] = next((a for a in row if ok(users[k], a)), answers[k])
            keep = [(u, a) for u, a in zip(users, answers) if ok(u, a)]
            info = {"teacher_answers": len(answers), "kept": len(keep)}
            if not keep:
                raise RuntimeError(
                    f"distill: none of the teacher's {len(answers)} answers is usable (judge mode keeps only "
                    "answers that parse as valid); use a stronger alignment.distill.teacher or disable distill"
                )
            examples = [{"prompt": self.prompts[u], "completion": a} for u, a in keep]
            ds = SFTDataset(examples, task.tokenizer, int(P.max_prompt_len), int(D.max_new_tokens) + 8,
                            bool(P.chat_template))  # fmt: skip
            sft = SFTTask(self.llm_cfg, lora=OmegaConf.to_container(P.task.lora, resolve=True),
                          optimizer=instantiate(D.optimizer), tokenizer=task.tokenizer)  # fmt: skip
            sft.configure_model()
            loader = DataLoader(ds, batch_size=int(D.batch_size), shuffle=True, collate_fn=ds.collate,
                                generator=torch.Generator().manual_seed(int(self.cfg.seed)))  # fmt: skip
            log_ = MetricLog(prefix="distill/")
            trainer = inner_trainer(int(D.epochs), [log_], progress=True)
            trainer.fit(sft, loader)
            sft.save_adapter(work / "adapter")
            return {"metrics": {**log_.means(), **{f"distill/{k}": v for k, v in info.items()}}}

        out = self.pipe.cached("distill", deps, build)
        self.distill_metrics = out["metrics"]
        return str(Path(self.pipe.results["stages"]["distill"]["dir"]) / "adapter"), fingerprint(deps)

    def fit_feedback(self, knowledge: Knowledge) -> dict:
        if self.feedback is None:
            self.feedback = self.make_feedback()
        if self._fitted_on == knowledge.key:
            return {}
        info = self.feedback.fit(knowledge.user, texts=knowledge.texts)
        self._fitted_on = knowledge.key
        return info

    def make_feedback(self):
        factory = instantiate(self.cfg.feedback.strategy)
        if self.cfg.feedback.name == "recommender":
            lists = self.pipe.rerank_lists()
            return factory(prep=self.prep, lists=lists["train"], valid_lists=lists["valid"])
        if self.cfg.feedback.name == "judge":
            return factory(task=self.rec, cache_dir=Path(self.cfg.cache_dir) / "generations")
        return factory(prep=self.prep)

    # ---- one round ---------------------------------------------------------------------
    def sample_users(self, t: int) -> np.ndarray:
        """Users whose N samples are scored in round t: training users with a prompt (seeded)."""
        train_users = set(self.prep.frame.loc[self.prep.frame["split"] == "train", "u"].tolist())
        pool = np.array([u for u in self.users if int(u) in train_users])
        rng = np.random.default_rng(self.cfg.seed * 1000 + t)
        n = min(int(self.A.num_users), len(pool))
        return np.sort(rng.choice(pool, size=n, replace=False))

    def run(self) -> dict:
        A, pipe = self.A, self.pipe
        metrics: dict = {}
        rounds = int(A.rounds)
        task = self.task()
        gen = self.generator(task)
        adapter_fp, adapter_path = "base", None
        distill = self.A.get("distill")
        if distill is not None and distill.get("enabled"):
            if self.rec is not None:  # RecLAIF's table has a zero-shot row before the SFT row
                self.knowledge(gen, adapter_fp, "zero_shot")
            adapter_path, adapter_fp = self.distill(task, gen)
            task = self.task(adapter_path)
            gen = self.generator(task)
            metrics.update(self.distill_metrics)
        k0, texts0 = self.knowledge(gen, adapter_fp, "sft" if adapter_path else "round0")
        knowledge = {0: k0}
        metrics["round0/knowledge_tokens"] = float(np.mean([len(t.split()) for t in texts0]))
        history = []
        for t in range(1, rounds + 1):
            users = self.sample_users(t)
            prompts = [self.prompts[int(u)] for u in users]
            samples = gen.sample(
                prompts, int(A.num_samples), float(A.temperature), float(A.top_p), int(A.max_new_tokens),
                seed=int(self.cfg.seed) * 1000 + t, adapter_fingerprint=adapter_fp,
            )  # fmt: skip
            flat = [s for row in samples for s in row]
            vecs = self.encoder.encode(flat).reshape(len(users), int(A.num_samples), -1)
            chain = fingerprint(self.root.base, adapter_fp, t, users.tolist())

            def score(work: Path, _vecs=vecs, _users=users, _samples=samples, _k=knowledge[t - 1]) -> dict:
                info = self.fit_feedback(_k)
                rewards = self.feedback.score(_users, _samples, _vecs)
                if isinstance(
                    getattr(self.feedback, "stats", None), JudgeStats
                ):  # verdict counts of this round
                    info = {**info, **self.feedback.stats.as_dict()}
                np.save(work / "rewards.npy", rewards)
                return {"feedback": info, "file": "rewards.npy"}

            scored = pipe.cached(f"score/round{t}", {"chain": chain, "feedback": self.cfg.feedback}, score)
            rewards = np.load(Path(pipe.results["stages"][f"score/round{t}"]["dir"]) / "rewards.npy")
            examples, stats = build_groups(
                prompts, samples, rewards, vecs, mode=str(self.cfg.feedback.pairs),
                dedup_threshold=A.get("dedup_threshold"), min_gap=float(A.get("min_gap", 0.0)),
            )  # fmt: skip
            round_metrics = {
                "reward/mean": float(np.nanmean(rewards)),
                "reward/best_mean": float(np.nanmean(np.nanmax(rewards, 1))),
                "reward/spread": float(np.nanmean(np.nanmax(rewards, 1) - np.nanmin(rewards, 1))),
                **{k: float(v) for k, v in scored.get("feedback", {}).items()},
                **stats.as_dict(),
            }
            if not examples:
                log.warning("round %d: no informative preference groups; stopping the loop", t)
                metrics.update({f"iter{t}/{k}": v for k, v in round_metrics.items()})
                break
            align_deps = {
                "chain": chain,
                "examples": fingerprint(examples),
                "preference": self.cfg.preference,
            }

            def align(work: Path, _examples=examples, _task=task) -> dict:
                return self.align(_task, _examples, work)

            aligned = pipe.cached(f"align/round{t}", align_deps, align)
            new_path = str(Path(pipe.results["stages"][f"align/round{t}"]["dir"]) / "adapter")
            if pipe.results["stages"][f"align/round{t}"]["cached"]:
                task = self.task(new_path)  # resume: load the adapter this stage saved
                gen = self.generator(task)
            adapter_fp, adapter_path = fingerprint(align_deps), new_path
            round_metrics.update({k: float(v) for k, v in aligned["metrics"].items()})
            knowledge[t], texts = self.knowledge(gen, adapter_fp, f"round{t}")
            round_metrics["knowledge_tokens"] = float(np.mean([len(x.split()) for x in texts]))
            round_metrics.update({f"eval/{k}": float(v) for k, v in knowledge[t].metrics.items()})
            metrics.update({f"iter{t}/{k}": v for k, v in round_metrics.items()})
            history.append({"round": t, **round_metrics})
        self.final_knowledge = knowledge
        self.adapter_path = adapter_path
        metrics["rounds_done"] = max(knowledge)
        for name, row in self.rows.items():
            metrics.update({f"{name}/eval/{k}": float(v) for k, v in row.items()})
        return {"metrics": metrics, "history": history, "knowledge": knowledge, "rows": dict(self.rows)}

    def align(self, task, examples: list[dict], work: Path) -> dict:
        """One preference-optimisation round on `examples`; saves the adapter into `work`."""
        from torch.utils.data import DataLoader

        from rlrec.llm.data import PreferenceDataset

        P = self.cfg.preference
        ds = PreferenceDataset(
            examples, task.tokenizer, int(P.max_prompt_len), int(P.max_completion_len), bool(P.chat_template),
            num_negatives=int(P.num_negatives),
        )  # fmt: skip
        loader = DataLoader(ds, batch_size=int(P.batch_size), shuffle=True, collate_fn=ds.collate,
                            generator=torch.Generator().manual_seed(int(self.cfg.seed)))  # fmt: skip
        task.precompute_reference(DataLoader(ds, batch_size=int(P.batch_size), collate_fn=ds.collate))
        task.train()
        metrics = MetricLog()
        trainer = inner_trainer(
            int(P.max_epochs), [metrics], progress=True, accumulate_grad_batches=int(P.accumulate_grad_batches),
            gradient_clip_val=P.get("gradient_clip_val"),
        )  # fmt: skip
        trainer.fit(task, loader)
        task.eval()
        task.save_adapter(work / "adapter")
        return {"metrics": metrics.means(), "examples": len(ds)}


class MetricLog(pl.Callback):
    """Collects logged training metrics per step and averages them."""

    def __init__(self, prefix: str = "align/"):
        self.values: dict[str, list[float]] = {}
        self.prefix = prefix

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        for k, v in trainer.callback_metrics.items():
            if k.startswith("train/"):
                self.values.setdefault(k.replace("train/", self.prefix), []).append(float(v))

    def means(self) -> dict:
        return {k: float(np.mean(v)) for k, v in self.values.items()}


class Fingerprints:
    """The hash everything in the loop is chained from: what the texts, rewards and adapters
    depend on (data, split, prompt, LLM, encoder, feedback, preference, sampling, seed)."""

    def __init__(self, cfg: DictConfig, llm_fp: str):
        A = cfg.alignment
        self.base = fingerprint(
            cfg.dataset, cfg.split, llm_fp, cfg.encoder, A.prompt, A.get("history_len"), A.num_samples,
            A.temperature, A.top_p, A.max_new_tokens, A.num_users, cfg.feedback, cfg.preference, cfg.seed,
            cfg.get("reclaif"), A.get("distill"),
        )  # fmt: skip
