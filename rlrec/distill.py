"""SFT warm start of the policy on a teacher's answers to the training questions (TrackRec's CoT
distillation, RecLAIF's SFT on a strong model's answers), before any preference round.

The teacher is the policy itself (`distill=self`: self-distillation), another configured LLM
(`distill=teacher`, `llm@distill.teacher=qwen2_5_7b`) or an OpenAI-compatible endpoint
(`distill=endpoint`, `distill.base_url=… distill.api_model=…`). With `require_valid`, only answers
the downstream accepts are kept (rejection sampling on the format: a RecLAIF answer must name
candidates only); `retry_samples` extra samples per question are tried when the greedy answer fails.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlrec.llm.generation import SamplingConfig
from rlrec.policy import Policy, preference_deps
from rlrec.runtime.cache import fingerprint


class Distill:
    def __init__(
        self,
        ctx,
        users: int,
        epochs: int = 1,
        batch_size: int = 4,
        optimizer: DictConfig | None = None,
        accumulate_grad_batches: int = 1,
        max_new_tokens: int | None = None,
        retry_samples: int = 0,
        require_valid: bool = False,
        teacher: DictConfig | None = None,
        base_url: str | None = None,
        api_model: str | None = None,
    ):
        self.ctx, self.users, self.epochs, self.batch_size = ctx, int(users), int(epochs), int(batch_size)
        self.optimizer, self.max_new_tokens = optimizer, max_new_tokens
        self.accumulate = int(accumulate_grad_batches or 1)
        self.retry_samples, self.require_valid = int(retry_samples or 0), bool(require_valid)
        self.teacher_cfg, self.base_url, self.api_model = teacher, base_url, api_model
        if base_url and not api_model:
            raise ValueError("distill.base_url needs distill.api_model (the served model's name)")

    def teacher(self, policy: Policy) -> Policy:
        ctx = self.ctx
        if self.base_url:
            sampling = SamplingConfig.preset(backend="openai", base_url=self.base_url, api_model=self.api_model)
            return Policy.frozen(None, sampling, ctx.generation_cache, ctx.device)
        if self.teacher_cfg is not None:  # a local model: sampled in this process whatever sampling.backend is
            sampling = instantiate(ctx.cfg.sampling, backend="hf")
            return Policy.frozen(instantiate(self.teacher_cfg), sampling, ctx.generation_cache, ctx.device)
        return policy

    def __call__(self, policy: Policy, downstream) -> Policy:
        ctx = self.ctx
        pool = sorted(downstream.questions)
        rng = np.random.default_rng(ctx.seed)
        users = sorted(rng.choice(pool, size=min(self.users, len(pool)), replace=False).tolist())
        teacher = self.teacher(policy)
        deps = {
            "policy": policy.key,
            "weights": policy.llm.fingerprint,
            "seed": ctx.seed,
            "teacher": teacher.base_key,
            "sampling": asdict(teacher.sampling),
            "trainer": ctx.llm_trainer_key,
            "questions": fingerprint([downstream.questions[u] for u in users]),
            "distill": [
                self.epochs,
                self.batch_size,
                self.optimizer,
                self.max_new_tokens,
                self.retry_samples,
                self.require_valid,
                *([self.accumulate] if self.accumulate > 1 else []),
            ],
            "preference": preference_deps(ctx.cfg.preference),
        }

        def build(work) -> dict:
            keep, info = self.answers(teacher, downstream, users)
            if teacher is not policy:
                teacher.release()  # a 7B teacher leaves memory before the SFT
            metrics = self.sft(policy, keep, work / "adapter")
            return {"metrics": {**metrics, **{f"distill/{k}": v for k, v in info.items()}}}

        art = ctx.store.stage("distill", deps, build)
        out = policy.with_adapter(art.path("adapter"), art.key)
        out.training = dict(art.data["metrics"])
        return out

    def answers(self, teacher: Policy, downstream, users: list[int]) -> tuple[list[dict], dict]:
        prompts = [downstream.questions[u] for u in users]
        answers = teacher.greedy(prompts, self.max_new_tokens)

        def ok(u: int, a: str) -> bool:
            return bool(a.strip()) and (not self.require_valid or downstream.valid_answer(u, a))

        redo = [k for k, (u, a) in enumerate(zip(users, answers)) if not ok(u, a)]
        if self.require_valid and self.retry_samples and redo:  # try the teacher's samples, keep the first usable
            extra = teacher.generator.sample(
                [prompts[k] for k in redo],
                num_samples=self.retry_samples,
                max_new_tokens=int(self.max_new_tokens or teacher.sampling.max_new_tokens),
                seed=self.ctx.seed,
                adapter_fingerprint=teacher.key,
                constraints=teacher.constraints([prompts[k] for k in redo]),
            )
            for k, row in zip(redo, extra):
                answers[k] = next((a for a in row if ok(users[k], a)), answers[k])
        keep = [{"prompt": p, "completion": a} for u, p, a in zip(users, prompts, answers) if ok(u, a)]
        if not keep:
            raise RuntimeError(
                f"distill: none of the teacher's {len(answers)} answers is usable (require_valid keeps only answers "
                "the downstream accepts); use a stronger teacher (distill=teacher or distill=endpoint) or distill=none"
            )
        return keep, {"teacher_answers": len(answers), "kept": len(keep)}

    def sft(self, policy: Policy, examples: list[dict], out):
        from torch.utils.data import DataLoader

        from rlrec.llm.data import SFTDataset
        from rlrec.tasks.sft import SFTTask, fit_sft

        P = self.ctx.cfg.preference
        tok = policy.tokenizer
        n = int(self.max_new_tokens or policy.sampling.max_new_tokens)
        ds = SFTDataset(examples, tok, int(P.max_prompt_len), n + 8, bool(P.chat_template))
        lora = OmegaConf.to_container(P.task.lora, resolve=True) if P.task.get("lora") is not None else None
        torch.manual_seed(self.ctx.seed)  # LoRA init and dropout: independent of what ran before
        sft = SFTTask(policy.llm, lora=lora, optimizer=instantiate(self.optimizer), tokenizer=tok)
        sft.configure_model()
        loader = DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=ds.collate,
            generator=torch.Generator().manual_seed(self.ctx.seed),
        )
        _, means, _ = fit_sft(sft, loader, self.ctx.llm_trainer, self.epochs, "distill/", out, self.accumulate)
        return means
