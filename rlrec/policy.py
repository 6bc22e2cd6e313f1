"""The LLM policy: base weights + (optionally) a LoRA adapter, and the one place a text Generator
is built — from the live `cfg.sampling` (backend hf / openai / vllm, N, temperature, top-p,
chat template, system prompt, seed).

    texts  = policy.sample(prompts, seed)    # (U, N), N = sampling.num_samples
    greedy = policy.greedy(prompts)          # (U,)
    policy = policy.train_on(groups)         # a preference round (DPO / S-DPO / IPO) → a new Policy

`key` identifies the weights by content (the base weights' fingerprint, then the chain of
preference / SFT data each adapter was trained on); it keys the generation cache and every stage
that depends on the policy.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlrec.llm.generation import Generator, SamplingConfig
from rlrec.runtime.cache import fingerprint
from rlrec.runtime.launch import factory_of
from rlrec.runtime.store import Store
from rlrec.tasks.preference import train_preference

log = logging.getLogger("rlrec")


class Policy:
    def __init__(
        self,
        llm,
        sampling: DictConfig,
        preference: DictConfig,
        store: Store,
        trainer,
        device="cpu",
        cache_dir: str | Path | None = None,
        adapter: str | Path | None = None,
        key: str = "base",
        task=None,
        seed: int = 0,
        fit_key=None,
    ):
        self.llm, self.sampling_cfg, self.preference = llm, sampling, preference
        self.store, self.trainer, self.device = store, trainer, torch.device(device)
        self.cache_dir, self.adapter, self.key, self.seed = cache_dir, adapter, key, int(seed)
        self.fit_key = fit_key  # what of the Trainer config changes a fit (part of the adapter's key)
        self.training: dict = {}  # metrics of the fit that produced this policy
        self.curve: list[dict] = []  # its per-step metrics
        self.progress = True
        self.constrain = None  # prompt → a decoding constraint or None (a downstream's answer format)
        if task is not None:
            self.__dict__["task"] = task

    @classmethod
    def from_context(cls, ctx, llm=None, sampling: DictConfig | None = None) -> Policy:
        return cls(
            llm if llm is not None else ctx.llm,
            sampling if sampling is not None else ctx.cfg.sampling,
            ctx.cfg.preference,
            ctx.store,
            ctx.llm_trainer,
            ctx.device,
            ctx.generation_cache,
            seed=ctx.seed,
            fit_key=ctx.llm_trainer_key,
        )

    @classmethod
    def frozen(cls, llm, sampling: SamplingConfig, cache_dir=None, device="cpu", progress: bool = True) -> Policy:
        """A policy that is never trained (a judge, a teacher): no adapter; one copy of the weights per
        (model, device) in the process, shared by every frozen policy of that model."""
        policy = cls(llm, sampling, None, None, None, device, cache_dir)
        policy.progress = progress
        if llm is not None and sampling.backend == "hf":
            shared = _FROZEN.get((llm.fingerprint, str(policy.device)))
            if shared is not None:
                policy.__dict__["task"] = shared
        return policy

    def with_adapter(self, adapter: str | Path, key: str, task=None) -> Policy:
        policy = Policy(
            self.llm,
            self.sampling_cfg,
            self.preference,
            self.store,
            self.trainer,
            self.device,
            self.cache_dir,
            adapter=adapter,
            key=key,
            task=task,
            seed=self.seed,
            fit_key=self.fit_key,
        )
        policy.constrain = self.constrain
        return policy

    @property
    def base_key(self) -> str:
        """What the texts come from: the base weights' fingerprint, or for `sampling.backend=openai`
        the served model's name at its URLs (the generation cache is keyed by it: with several
        servers of one model, not by which of them served a sample)."""
        s = self.sampling
        if s.backend == "openai":
            return f"openai:{s.api_model}@{','.join(sorted(set(s.urls)))}"
        return self.llm.fingerprint

    @property
    def precision(self) -> str:
        """The resolved precision of this policy's LLM work (its Trainer's; `rlrec.runtime.precision`): the hf
        sampler runs under bf16 autocast when it is `bf16-mixed`. Frozen policies (judge, teacher):
        fp32."""
        node = getattr(self.trainer, "trainer", None)  # a TrainerFactory's config; a plain callable has none
        return str((node if isinstance(node, dict) else {}).get("precision", "32-true"))

    @property
    def lora_name(self) -> str:
        """The adapter's name on vLLM (servers and in process): from its content key, so every process
        and rerun names the same weights alike and a server loads them once."""
        return f"rlrec-{self.key}"

    def served_adapter(self) -> tuple[str, str] | None:
        """(name, absolute path) of this policy's LoRA adapter for the openai / vllm backends; None
        for the base weights."""
        if self.adapter is None:
            return None
        path = Path(self.adapter).resolve()
        if not (path / "adapter_config.json").is_file():
            raise ValueError(
                f"sampling.backend={self.sampling.backend} samples a trained policy as a LoRA adapter on the "
                f"served base weights, but {path} holds no adapter_config.json (a full fine-tune, "
                "preference.task.lora=null?); use sampling.backend=hf for it"
            )
        return self.lora_name, str(path)

    def release(self) -> None:
        """Drop this policy's weights (and a frozen policy's shared copy) from memory."""
        task = self.__dict__.pop("task", None)
        self.__dict__.pop("generator", None)
        for k in [k for k, v in _FROZEN.items() if v is task]:
            del _FROZEN[k]

    # ---- the model (loaded on first use, on the trainer's device) ---------------------------------
    @cached_property
    def task(self):
        """The PreferenceTask holding the weights (LoRA on the base unless `preference.task.lora`
        is null), continuing from `adapter` when set."""
        from rlrec.tasks.llm import LLMTask

        if self.preference is None:  # frozen: the plain model, shared by the process's frozen policies
            task = LLMTask(
                self.llm, lora=None, frozen=True
            )  # weights: the process's one copy (`load_model(share=True)`)
            task.configure_model()
            task.model.requires_grad_(False)
            task = task.to(self.device).eval()
            _FROZEN[(self.llm.fingerprint, str(self.device))] = task
            return task
        task = self.new_task()
        task.configure_model()
        return task.to(self.device)

    def new_task(self):
        """A PreferenceTask continuing from this policy's adapter, weights not loaded yet."""
        from rlrec.tasks.preference import PreferenceTask

        kwargs = OmegaConf.to_container(self.preference.task, resolve=True)
        for k in ("_target_", "llm"):
            kwargs.pop(k, None)
        kwargs["optimizer"] = instantiate(self.preference.task.optimizer)
        task = PreferenceTask(self.llm, adapter_path=None if self.adapter is None else str(self.adapter), **kwargs)
        task.init_seed = self.seed  # the LoRA init: the same whatever ran before, in this process or a rank
        return task

    @property
    def tokenizer(self):
        return self.task.tokenizer

    @cached_property
    def sampling(self) -> SamplingConfig:
        return (
            instantiate(self.sampling_cfg) if not isinstance(self.sampling_cfg, SamplingConfig) else self.sampling_cfg
        )

    @cached_property
    def generator(self):
        """The Generator of `sampling.backend`: hf = this process's (adapted) model; openai = the
        served `sampling.api_model` at `sampling.base_url(s)`, with this round's LoRA adapter loaded
        on each server and named in the requests; vllm = vLLM in process on the base weights' folder,
        with a `LoRARequest` for this round's adapter."""
        from rlrec.llm.loading import model_folder

        s = self.sampling
        kw = {}
        if s.backend == "hf":
            model, tok = self.task.policy.eval(), self.task.tokenizer
            kw = {"precision": self.precision}
        elif s.backend == "openai":
            model, tok, kw = s.api_model, None, {"adapter": self.served_adapter()}
        else:
            model, tok = str(model_folder(self.llm)), None
            lora = None if self.preference is None else OmegaConf.select(self.preference, "task.lora")
            # a trainable policy's engine has LoRA on from the base round, so later rounds reuse it
            kw = {"adapter": self.served_adapter(), "enable_lora": lora is not None or self.adapter is not None}
        return Generator(
            s, model, tok, self.base_key, self.cache_dir, adapter_fingerprint=self.key, progress=self.progress, **kw
        )

    # ---- texts --------------------------------------------------------------------------------
    def sample(self, prompts: list[str], seed: int | None = None) -> list[list[str]]:
        """(len(prompts), N) sampled texts, N = sampling.num_samples."""
        seeded = {} if seed is None else {"seed": int(seed)}
        return self.generator.sample(
            prompts, adapter_fingerprint=self.key, constraints=self.constraints(prompts), **seeded
        )

    def greedy(self, prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        return self.generator.greedy(
            prompts, max_new_tokens, adapter_fingerprint=self.key, constraints=self.constraints(prompts)
        )

    def constraints(self, prompts: list[str]) -> list | None:
        """One decoding constraint per prompt (`constrain`), or None when the policy writes freely."""
        return None if self.constrain is None else [self.constrain(p) for p in prompts]

    # ---- preference optimisation --------------------------------------------------------------
    def train_on(self, groups: list[dict], heldout: list[dict] | None = None) -> Policy:
        """One preference-optimisation round on `groups` ({prompt, chosen, rejected: [..]}), evaluated
        on `heldout` groups of users not trained on; the adapter is a stage keyed by this policy, the
        groups' content and `cfg.preference`. The new policy's `training` holds the round's metrics
        and `curve` its per-step ones."""
        deps = {
            "policy": self.key,
            "weights": self.llm.fingerprint,  # the trained weights: base + this policy's adapter chain
            "groups": fingerprint(groups),
            "heldout": fingerprint(heldout or []),
            "preference": preference_deps(self.preference),
            "seed": self.seed,
            "trainer": self.fit_key,
        }
        trained = {}

        def build(work: Path) -> dict:
            # launched ranks load the weights themselves (the task travels without them; rank 0 saves
            # the adapter); in this process the loaded policy trains in place
            factory = factory_of(self.trainer)
            here = factory is None or factory.world_size <= 1
            task = self.task if here else self.new_task()
            torch.manual_seed(self.seed)  # dropout: the same adapter on a resumed run
            metrics, curve = train_preference(
                task, groups, self.preference, self.trainer, self.seed, heldout, work / "adapter"
            )
            if here:
                trained["task"] = task
            return {"metrics": metrics, "examples": len(groups), "curve": curve}

        art = self.store.stage("align", deps, build)
        # this object stays the policy it was: its weights (trained in place, or stale after a cached
        # round) are dropped; the new policy owns the trained ones or loads them from the adapter
        self.release()
        policy = self.with_adapter(art.path("adapter"), art.key, task=trained.get("task"))
        policy.training = dict(art.data["metrics"])
        policy.curve = list(art.data.get("curve", []))
        return policy


def preference_deps(preference: DictConfig) -> dict:
    """`cfg.preference` as part of a stage key: everything but the LLM's own config, whose weights are
    in the key by content (`weights`): where the weights are cached is not what they are."""
    node = OmegaConf.to_container(preference, resolve=True)
    if isinstance(node.get("task"), dict):
        node["task"].pop("llm", None)
    return node


_FROZEN: dict = {}  # (weights fingerprint, device) → the frozen LLMTask of `Policy.frozen`
