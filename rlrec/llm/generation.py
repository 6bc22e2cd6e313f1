"""Sampling N texts per prompt from the current policy, cached on disk and resumable.

    sampling = SamplingConfig.preset(max_new_tokens=256)  # conf/sampling/default.yaml + overrides
    gen = Generator(sampling, model, tokenizer, model_fingerprint=cfg.fingerprint, cache_dir=".cache/rlrec/gen")
    texts = gen.sample(user_texts, adapter_fingerprint=f"round{t}-{run_hash}")  # (len(prompts), N)

Prompts are user texts; the generator wraps them in the chat template (`sampling.chat`, optional
`sampling.system`) for local backends, or sends them as chat messages to an OpenAI-compatible server.
The backend (`sampling.backend`: hf | openai | vllm, one file each under `rlrec/llm/backends/`) is
chosen once, by `rlrec.llm.backends.build`; the cache is `rlrec.llm.gencache`.

Reproducibility: sample i of a prompt gets its own seed, hash(seed, prompt, i); the `hf` fast path
draws its t-th token from a counter-based uniform of (that seed, t), so the same text comes back
whatever the batch composition (up to float rounding of batched kernels) or cache state.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlrec.llm.backends import Backend, Result, build
from rlrec.llm.backends.base import Request
from rlrec.llm.chat import chat_messages, format_chat
from rlrec.llm.gencache import GenerationCache, Sample, sample_seed
from rlrec.runtime.cache import code_version, fingerprint


@dataclass
class SamplingConfig:
    """How texts are sampled. The defaults are declared once, in conf/sampling/default.yaml (with why
    each value): a run instantiates that node; code and tests start from `SamplingConfig.preset()`."""

    temperature: float  # 1.0 = the policy's own distribution (0 = greedy)
    top_p: float
    max_new_tokens: int
    num_samples: int  # N candidates per prompt
    batch_size: int  # samples decoded together (hf)
    kv_cache_gb: float | None  # hf: the KV cache's size cap
    kv_dtype: str  # hf: auto | float32
    backend: str  # hf | openai | vllm (rlrec.llm.backends.BACKENDS)
    seed: int
    chat: bool  # wrap prompts in the chat template / send as chat messages
    system: str | None  # None keeps the chat template's default system prompt
    base_url: str | None  # openai: shorthand for one base_urls entry
    base_urls: Sequence[str] | None  # openai: several servers of one model
    api_model: str | None  # openai: the served model name
    api_key_env: str  # openai: env var holding the key
    max_lora_rank: int  # vllm in process
    engine_args: dict | None  # vllm in process: more engine arguments

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> SamplingConfig:
        """conf/sampling/<name>.yaml with `overrides`; its `${seed}` (the run's seed) is 0 here."""
        from omegaconf import OmegaConf

        from rlrec.configs import conf_dir

        node = OmegaConf.load(conf_dir() / "sampling" / f"{name}.yaml")
        values = OmegaConf.to_container(OmegaConf.create({"seed": 0, "node": node}).node, resolve=True)
        values.pop("_target_", None)
        return cls(**{**values, **overrides})

    @property
    def urls(self) -> list[str]:
        """The servers of `backend=openai`: `base_urls`, or `[base_url]`."""
        urls = list(self.base_urls or []) or ([self.base_url] if self.base_url else [])
        return [str(u).rstrip("/") for u in urls]


@dataclass
class GenerationStats:
    prompts: int = 0
    samples: int = 0
    cached: int = 0
    generated: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    backend_calls: int = 0  # model forwards (hf) or HTTP requests (openai)
    detail: dict = field(default_factory=dict)  # backend timings, e.g. hf prefill/decode seconds

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class Generator:
    """N samples (or one greedy text) per prompt, through a backend, with a disk cache.

    `sampling` says how (N, temperature, backend, …); `model` is a transformers model (hf), a served
    model name (openai), or a hub id / path (vllm); `backend_options` are what only that backend takes
    (`rlrec.llm.backends`), or pass a built `backend`. `model_fingerprint` identifies the base weights
    (e.g. `LLMConfig.fingerprint`); the adapter fingerprint identifies whatever was trained on top and
    is part of every cache key."""

    def __init__(
        self,
        sampling: SamplingConfig,
        model=None,
        tokenizer=None,
        model_fingerprint: str | None = None,
        cache_dir: str | Path | None = None,
        *,
        backend: Backend | None = None,
        adapter_fingerprint: str = "base",
        progress: bool = True,
        **backend_options,
    ):
        self.sampling = sampling
        self.backend = backend if backend is not None else build(sampling, model, tokenizer, **backend_options)
        self.tokenizer = tokenizer if tokenizer is not None else self.backend.tokenizer
        if cache_dir is not None and not model_fingerprint:
            raise ValueError("a cache needs model_fingerprint (e.g. LLMConfig.fingerprint)")
        self.model_fingerprint = model_fingerprint or "unfingerprinted"
        self.adapter_fingerprint = adapter_fingerprint
        self.cache = GenerationCache(Path(cache_dir) / "generations.sqlite") if cache_dir is not None else None
        self.chat, self.system, self.progress = bool(sampling.chat), sampling.system, progress
        self.last_stats = GenerationStats()
        # the version of the code that turns a prompt into text (rlrec/llm): part of every cached text's key
        self.code = code_version(Path(__file__).resolve().parent)

    # -- public -------------------------------------------------------------------------------

    def sample(self, prompts: Sequence[str], **options) -> list[list[str]]:
        """N = `sampling.num_samples` texts per prompt: (len(prompts), N). `options`: those of
        `sample_records`, and any sampling field for this call (num_samples=, temperature=, seed=, …)."""
        return [[s.text for s in row] for row in self.sample_records(prompts, **options)]

    def greedy(self, prompts: Sequence[str], max_new_tokens: int | None = None, **options) -> list[str]:
        """One greedy text per prompt (seed 0, whatever the sampling seed)."""
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        rows = self.sample_records(prompts, num_samples=1, temperature=0.0, top_p=1.0, seed=0, **options)
        return [row[0].text for row in rows]

    def sample_records(
        self,
        prompts: Sequence[str],
        *,
        adapter_fingerprint: str | None = None,
        callback: Callable[[int, int], None] | None = None,
        constraints: Sequence | None = None,
        **overrides,
    ) -> list[list[Sample]]:
        """Like `sample`, with token counts, finish reasons and whether each came from the cache.
        `callback(done, total)` runs after each batch of samples is committed to the cache (raise from it
        to stop; a rerun resumes). `constraints`: one per prompt (None = free), e.g.
        `rlrec.llm.constrain.CandidateList`. `overrides` replace sampling fields for this call."""
        s = dataclasses.replace(self.sampling, **overrides) if overrides else self.sampling
        n, max_new_tokens, seed = int(s.num_samples), int(s.max_new_tokens), int(s.seed)
        temperature, top_p = float(s.temperature), float(s.top_p)
        assert n >= 1 and max_new_tokens >= 1, (n, max_new_tokens)
        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"constraints: one per prompt expected, got {len(constraints)} for {len(prompts)} prompts")
        constraints = list(constraints) if constraints is not None else [None] * len(prompts)
        assert temperature >= 0 and 0 < top_p <= 1, (temperature, top_p)
        t0 = time.perf_counter()
        greedy = temperature == 0
        params = {"greedy": True} if greedy else {"temperature": float(temperature), "top_p": float(top_p)}
        params["max_new_tokens"] = int(max_new_tokens)
        adapter = adapter_fingerprint if adapter_fingerprint is not None else self.adapter_fingerprint
        views = [self._view(p) for p in prompts]  # (text, messages, key text) per prompt
        # a constrained prompt's key also names its constraint (unconstrained keys stay as they were)
        views = [v if c is None else (v[0], v[1], f"{v[2]}\x1fconstraint:{c.key}") for v, c in zip(views, constraints)]
        keys = [
            [
                fingerprint(
                    self.model_fingerprint,
                    adapter,
                    self.backend.name,
                    v[2],
                    params,
                    0 if greedy else seed,
                    i,
                    self.code,
                    length=32,
                )
                for i in range(n)
            ]
            for v in views
        ]
        found = self.cache.get_many([k for row in keys for k in row]) if self.cache else {}
        stats = GenerationStats(prompts=len(prompts), samples=len(prompts) * n)

        # one request per distinct prompt with its missing sample indices
        pending: dict[str, tuple[int, list[int]]] = {}
        for pos, (v, row) in enumerate(zip(views, keys)):
            missing = [i for i, k in enumerate(row) if k not in found]
            if missing and v[2] not in pending:
                pending[v[2]] = (pos, missing)
        requests = [
            Request(
                text=views[pos][0],
                messages=views[pos][1],
                seeds=[sample_seed(0 if greedy else seed, views[pos][2], i) for i in missing],
                tags=[(pos, i) for i in missing],
                add_special_tokens=not self.chat,
                constraint=constraints[pos],
            )
            for pos, missing in pending.values()
        ]
        new: dict[str, Sample] = {}
        total_new = sum(len(r.seeds) for r in requests)
        remaining = {pos: len(missing) for pos, missing in pending.values()}
        bar = self._bar(len(requests))
        calls_before = self.backend.forward_calls

        def on_done(results: list[Result]) -> None:
            batch = []
            for r in results:
                pos, i = r.tag
                s = Sample(r.text, r.n_tokens, r.finish_reason)
                batch.append((keys[pos][i], s))
                stats.new_tokens += r.n_tokens or 0
                remaining[pos] -= 1
                if remaining[pos] == 0 and bar is not None:
                    bar.update(1)
            if self.cache is not None:
                self.cache.put_many(batch)
            new.update(batch)
            stats.generated += len(batch)
            if bar is not None:
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{stats.new_tokens / max(elapsed, 1e-9):.1f} tok/s", refresh=False)
            if callback is not None:
                callback(stats.generated, total_new)

        try:
            if requests:
                self.backend.run(requests, float(temperature), float(top_p), int(max_new_tokens), on_done)
        finally:
            if bar is not None:
                bar.close()
            stats.seconds = time.perf_counter() - t0
            stats.backend_calls = self.backend.forward_calls - calls_before
            stats.detail = dict(self.backend.last_detail) if requests else {}
            self.last_stats = stats
        out = []
        for row in keys:
            out.append([found[k] if k in found else new[k] for k in row])
        stats.cached = sum(s.cached for r in out for s in r)
        return out

    # -- helpers --------------------------------------------------------------------------------

    def _view(self, prompt: str) -> tuple[str, list[dict] | None, str]:
        """(text for local backends, chat messages for chat APIs, the string the cache key uses)."""
        if self.backend.wants_messages:
            messages = chat_messages(prompt, self.system) if self.chat else None
            return prompt, messages, json.dumps(messages) if messages is not None else prompt
        if not self.chat:
            return prompt, None, prompt
        assert self.tokenizer is not None, "chat=True needs a tokenizer to apply the chat template"
        text = format_chat(self.tokenizer, prompt, self.system)
        return text, None, text

    def _bar(self, total: int):
        if not self.progress or total == 0:
            return None
        from rlrec.runtime.console import bar

        return bar(total, f"generate[{self.backend.name}]", "prompt")
