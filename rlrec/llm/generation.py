"""Sampling N texts per prompt from the current policy, cached on disk and resumable.

    gen = Generator(model, tokenizer, model_fingerprint=cfg.fingerprint, cache_dir=".cache/rlrec/gen")
    gen.set_adapter_fingerprint(f"round{t}-{run_hash}")  # whatever identifies the trained weights
    texts = gen.sample(user_texts, n=4, temperature=1.0, top_p=0.95, max_new_tokens=256, seed=0)

Prompts are user texts; the generator wraps them in the chat template (`chat=True`, optional
`system`) for local backends, or sends them as chat messages to an OpenAI-compatible server.

Backends (one small interface, `run(requests, temperature, top_p, max_new_tokens, on_done)`):
- `hf` (default): a transformers model in this process. Llama-family models use
  `PrefixSharingSampler` (batched decode with shared prompt KV, continuous batching; ≥5× the
  tokens/s of one `generate` call per prompt on CPU, see `benchmarks/generation.py`); other
  architectures fall back to `model.generate`.
- `openai`: any OpenAI-compatible endpoint (vLLM/SGLang/llama.cpp servers, hosted APIs), or several
  serving one model, over plain HTTP with retries and backoff; one request per sample with its own
  seed; a policy's LoRA adapter is loaded on vLLM servers at run time and named in each request.
- `vllm`: vLLM in-process (GPU machines; `pip install rlrec[vllm]`), a `LoRARequest` per adapter.

Cache: one row per (model fingerprint, adapter fingerprint, backend, prompt, sampling
parameters, seed, sample index) in a SQLite file (journal `RLREC_SQLITE_JOURNAL`: `wal` by default,
`delete` on a shared filesystem). Finished samples are committed as they complete, so a rerun
never regenerates and a killed run resumes with only the missing samples.

Reproducibility: sample i of a prompt gets its own seed, hash(seed, prompt, i); the `hf` fast path
draws its t-th token from a counter-based uniform of (that seed, t), so the same text comes back
whatever the batch composition (up to float rounding of batched kernels) or cache state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rlrec.llm.chat import chat_messages, format_chat
from rlrec.runtime.cache import code_version, fingerprint, set_sqlite_journal
from rlrec.runtime.precision import cast_linear_weights, is_bf16

log = logging.getLogger("rlrec")


@dataclass
class SamplingConfig:
    """Sampling defaults (conf/sampling/*.yaml)."""

    temperature: float = 1.0  # 1.0 = the policy's own distribution (what on-policy methods need)
    top_p: float = 0.95  # trims the long tail of junk tokens a small model puts mass on
    max_new_tokens: int = 256  # a 200-word summary is ~260 tokens
    num_samples: int = 4  # N candidates per prompt to rank into preference pairs
    batch_size: int = 128  # samples decoded together (hf); large batches amortise weight reads
    kv_cache_gb: float | None = 1.0  # hf: the KV cache's size cap; fewer prompts in flight when it binds
    kv_dtype: str = "auto"  # hf: auto = the autocast dtype under bf16 autocast (else the weights'); float32
    backend: str = "hf"  # hf | openai | vllm
    seed: int = 0
    chat: bool = True  # wrap prompts in the chat template / send as chat messages
    system: str | None = None  # None keeps the chat template's default system prompt
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1 (shorthand for one base_urls entry)
    base_urls: Sequence[str] | None = None  # openai: several servers of one model, prompts spread over them
    api_model: str | None = None  # openai: the served model name
    api_key_env: str = "OPENAI_API_KEY"  # openai: env var holding the key (unset = no auth header)
    max_lora_rank: int = 16  # vllm in process: the largest adapter rank the engine reserves room for
    # vllm in process: more engine arguments, e.g. {gpu_memory_utilization: 0.4} when the preference
    # round trains on the same GPU (vLLM takes 90% of its memory by default)
    engine_args: dict | None = None

    @property
    def urls(self) -> list[str]:
        """The servers of `backend=openai`: `base_urls`, or `[base_url]`."""
        urls = list(self.base_urls or []) or ([self.base_url] if self.base_url else [])
        return [str(u).rstrip("/") for u in urls]

    def sample_kwargs(self) -> dict:
        return dict(
            n=self.num_samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    def generator(self, model=None, tokenizer=None, model_fingerprint=None, cache_dir=None, **kw):
        """A Generator for this config; for `openai`, `model` defaults to `api_model`."""
        if self.backend == "openai":
            model = model if isinstance(model, str) else self.api_model
            kw = {"base_url": self.urls, "api_key_env": self.api_key_env, **kw}
        elif self.backend == "hf":
            kw = {"kv_cache_gb": self.kv_cache_gb, "kv_dtype": self.kv_dtype, **kw}
        return Generator(
            model,
            tokenizer,
            model_fingerprint,
            cache_dir,
            backend=self.backend,
            batch_size=self.batch_size,
            chat=self.chat,
            system=self.system,
            **kw,
        )


@dataclass
class Request:
    """One prompt as a backend sees it, with the samples still wanted from it."""

    text: str  # the string to continue (chat template applied when chat=True), or the raw prompt
    messages: list[dict] | None  # the chat messages (for chat APIs)
    seeds: list[int]
    tags: list  # opaque ids handed back with each result
    add_special_tokens: bool = False  # a templated string already has its special tokens
    constraint: object | None = None  # what the answers must look like (rlrec.llm.constrain.CandidateList)


@dataclass
class Result:
    tag: object
    text: str
    n_tokens: int | None  # generated tokens including the stop token (None if the API did not say)
    finish_reason: str


@dataclass
class Sample:
    text: str
    n_tokens: int | None
    finish_reason: str
    cached: bool = False


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


# ----------------------------------------------------------------------------- cache


class GenerationCache:
    """key → (text, n_tokens, finish_reason) in SQLite (WAL on a local disk: concurrent readers;
    `RLREC_SQLITE_JOURNAL=delete` on a shared filesystem), one transaction per batch of finished
    samples, nothing half-written after a kill."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: built in one thread, used from another (never two at once)
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self.journal = set_sqlite_journal(self.db, self.path)  # RLREC_SQLITE_JOURNAL: wal | delete | …
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS gen (key TEXT PRIMARY KEY, text TEXT NOT NULL, n_tokens INTEGER,"
            " finish TEXT NOT NULL, created REAL NOT NULL)"
        )
        self.db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Sample]:
        found: dict[str, Sample] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[i : i + 500]
            rows = self.db.execute(
                f"SELECT key, text, n_tokens, finish FROM gen WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            for k, text, n_tok, finish in rows:
                found[k] = Sample(text, n_tok, finish, cached=True)
        return found

    def put_many(self, rows: Sequence[tuple[str, Sample]]) -> None:
        now = time.time()
        with self.db:  # one transaction
            self.db.executemany(
                "INSERT OR REPLACE INTO gen VALUES (?, ?, ?, ?, ?)",
                [(k, s.text, s.n_tokens, s.finish_reason, now) for k, s in rows],
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM gen").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def sample_seed(seed: int, prompt_key: str, index: int) -> int:
    """64-bit seed of sample `index` of a prompt: independent of batch and cache state."""
    h = hashlib.blake2b(f"{seed}\x1f{index}\x1f{prompt_key}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


# ----------------------------------------------------------------------------- backends


@contextmanager
def lora_merged(model) -> Iterator[int]:
    """Within the block the active LoRA adapters of a PEFT `model` are merged into their base weights:
    a projection is one matmul instead of three and a Python-level adapter loop, so an aligned policy
    samples at about the base model's speed. On exit every base weight is restored bit for bit (from
    a saved copy, not by subtracting the delta again). A plain model, or adapters switched off
    (`disable_adapter()`), passes through. Yields how many layers were merged."""
    import torch

    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: nothing can be an adapter
        yield 0
        return
    layers = [
        m
        for m in model.modules()
        if isinstance(m, LoraLayer) and not m.merged and not m.disable_adapters and m.active_adapters
    ]
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.merge()
        yield len(layers)
    finally:
        with torch.no_grad():
            for m, weight in zip(layers, saved):
                if m.merged:
                    m.unmerge()
                m.get_base_layer().weight.copy_(weight)


class HFBackend:
    """A transformers causal LM in this process (plain or PEFT-wrapped; a PEFT model's LoRA is merged
    while it samples, `lora_merged`)."""

    name = "hf"
    wants_messages = False

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 128,
        engine: str = "auto",
        precision: str = "32-true",
        kv_cache_gb: float | None = 1.0,
        kv_dtype: str = "auto",
    ):
        assert engine in ("auto", "prefix", "generate"), f"engine={engine!r}: auto | prefix | generate"
        self.model, self.tokenizer = model, tokenizer
        # a resolved precision (rlrec.runtime.precision): bf16-* samples under bf16 autocast; the cache keys
        # of its texts differ from fp32's (the backend's name says so), fp32 keys stay as they were
        self.precision = str(precision)
        if kv_dtype not in ("auto", "float32"):
            raise ValueError(f"sampling.kv_dtype={kv_dtype!r}: auto | float32")
        self.kv_dtype = kv_dtype
        if is_bf16(self.precision):
            # a bf16 KV cache rounds the keys: its texts get keys of their own
            self.name = f"hf-{self.precision}" + ("-kv16" if kv_dtype == "auto" else "")
        self.batch_size = batch_size
        self.kv_cache_gb = kv_cache_gb
        self.engine = engine
        self.forward_calls = 0
        self.last_detail: dict = {}
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.stop_ids = sorted({*eos, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
        assert self.stop_ids, "no EOS token: set tokenizer.eos_token or model.generation_config.eos_token_id"
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def run(self, requests: list[Request], temperature, top_p, max_new_tokens, on_done) -> None:
        from rlrec.llm.sampler import Job, supports_prefix_sharing

        vocab = self.model.get_output_embeddings().weight.shape[0]  # logits width (≥ len(tokenizer))
        jobs = [
            Job(
                list(self.tokenizer(r.text, add_special_tokens=r.add_special_tokens)["input_ids"]),
                r.seeds,
                r.tags,
                None
                if r.constraint is None
                else r.constraint.compile(self.tokenizer, vocab, self.stop_ids, max_new_tokens),
            )
            for r in requests
        ]
        stop = set(self.stop_ids)

        def finished(items):
            out = []
            for f in items:
                ids = f.token_ids[:-1] if f.token_ids and f.token_ids[-1] in stop else f.token_ids
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                out.append(Result(f.tag, text, len(f.token_ids), f.finish_reason))
            on_done(out)

        max_len = max(len(j.prompt_ids) for j in jobs) + max_new_tokens
        fast = self.engine == "prefix" or (self.engine == "auto" and supports_prefix_sharing(self.model, max_len))
        was_training = self.model.training
        self.model.eval()  # sampling from the policy, not from its dropout-perturbed version
        device = next(self.model.parameters()).device
        try:
            with lora_merged(self.model), cast_linear_weights(self.model, self.precision, device):
                self._run(jobs, fast, temperature, top_p, max_new_tokens, finished)
        finally:
            self.model.train(was_training)

    def _run(self, jobs, fast: bool, temperature, top_p, max_new_tokens, finished) -> None:
        from rlrec.llm.sampler import PrefixSharingSampler, generate_fallback

        if fast:
            sampler = PrefixSharingSampler(self.model, self.stop_ids, self.batch_size, self.kv_cache_gb, self.kv_dtype)
            try:
                sampler.run(jobs, temperature, top_p, max_new_tokens, finished)
            finally:
                self.forward_calls += sampler.forward_calls
                self.last_detail = {f"{k}_seconds": round(v, 2) for k, v in sampler.seconds.items()}
        else:
            generate_fallback(
                self.model,
                self.pad_id,
                self.stop_ids,
                jobs,
                temperature,
                top_p,
                max_new_tokens,
                self.batch_size,
                finished,
            )


class ServerError(RuntimeError):
    """An OpenAI-compatible server's error answer (`status` = the HTTP code; 0 = no answer)."""

    def __init__(self, message: str, url: str, status: int = 0, detail: str = ""):
        super().__init__(message)
        self.url, self.status, self.detail = url, status, detail


class OpenAIBackend:
    """Any OpenAI-compatible server, or several serving the same model: POST {url}/chat/completions
    (or /completions when chat=False) with temperature, top_p, max_tokens and seed. Standard library
    HTTP only.

    One request per sample, with that sample's own seed: servers such as llama.cpp ignore `n`, and a
    per-sample seed is what lets a resumed run get the same texts whichever samples were cached.
    Prompts are dealt round-robin over `base_url` (a list = several servers), so a prompt's samples
    share one server's prefix cache. With `adapter=(name, path)` the policy is a LoRA adapter on the
    served base: it is loaded once on each server (vLLM's runtime LoRA loading: `vllm serve
    --enable-lora` with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and named as the request's model;
    `path` must be readable by the server (same machine or a shared filesystem)."""

    name = "openai"
    wants_messages = True
    RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        concurrency: int = 8,
        extra_body: dict | None = None,
        adapter: tuple[str, str] | None = None,
    ):
        urls = [base_url] if isinstance(base_url, str) else list(base_url or [])
        assert urls and all(urls), "backend=openai needs base_url or base_urls (e.g. http://localhost:8000/v1)"
        assert model, "backend=openai needs the served model name (sampling.api_model)"
        self.base_urls = [str(u).rstrip("/") for u in urls]
        self.model = model
        self.api_key_env = api_key_env
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.concurrency = concurrency  # requests in flight per server
        self.extra_body = dict(extra_body or {})
        self.adapter = None if adapter is None else (str(adapter[0]), str(adapter[1]))
        self._loaded: set[str] = set()  # servers known to hold the adapter
        self._lock = threading.Lock()
        self.forward_calls = 0

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    def _post(self, url: str, path: str, body: dict) -> dict | str:
        """POST JSON to url + path with retries and exponential backoff; the reply's JSON (or text)."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(url + path, data=data, headers=headers, method="POST")
            wait = self.backoff * 2**attempt
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except ValueError:  # vLLM's adapter endpoints answer plain text
                    return raw.decode(errors="replace")
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode(errors="replace")
                if e.code not in self.RETRY_STATUS or attempt == self.max_retries:
                    raise ServerError(
                        f"openai backend: POST {url + path} → {e.code}: {detail}", url, e.code, detail
                    ) from e
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.max_retries:
                    reason = getattr(e, "reason", e)
                    raise ServerError(
                        f"openai backend: the server at {url} did not answer POST {path} after {attempt + 1} "
                        f"tries ({reason}); is it up?",
                        url,
                    ) from e
            log.warning("openai backend: %s%s retry %d/%d in %.1fs", url, path, attempt + 1, self.max_retries, wait)
            time.sleep(min(wait, 60.0))
        raise AssertionError("unreachable")

    def _load_adapter(self, url: str) -> None:
        """Load the policy's adapter on `url` unless it holds it already (a rerun, another process)."""
        name, path = self.adapter
        try:
            self._post(url, "/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except ServerError as e:
            if e.status == 400 and "already" in e.detail.lower():
                pass  # vLLM: "The lora adapter '…' has already been loaded."
            elif e.status in (404, 405):
                raise ServerError(
                    f"openai backend: {url} cannot load LoRA adapters at run time ({e.status}); start vLLM with "
                    "`--enable-lora` and the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
                    url,
                    e.status,
                ) from e
            else:
                raise
        with self._lock:
            self._loaded.add(url)

    def _one(self, url: str, r: Request, seed: int, tag, temperature, top_p, max_new_tokens) -> Result:
        body = {
            "model": self.model if self.adapter is None else self.adapter[0],
            "temperature": temperature,
            "top_p": top_p if temperature > 0 else 1.0,
            "max_tokens": max_new_tokens,
            "seed": seed % 2**31,  # the sample's own seed, in the range every server accepts
            **self.extra_body,
        }
        if r.constraint is not None:  # vLLM's structured outputs (≥ 0.12; older servers: guided_regex)
            body["structured_outputs"] = {"regex": r.constraint.regex()}
        if r.messages is not None:
            path, body["messages"] = "/chat/completions", r.messages
        else:
            path, body["prompt"] = "/completions", r.text
        try:
            reply = self._post(url, path, body)
        except ServerError as e:
            if self.adapter is None or e.status != 404:
                raise
            self._load_adapter(url)  # a restarted server lost the adapter: load it again, once
            reply = self._post(url, path, body)
        with self._lock:
            self.forward_calls += 1
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices or len(choices) != 1:
            raise RuntimeError(f"openai backend: {url}{path} gave {len(choices or [])} choices, not 1: {reply}")
        c = choices[0]
        text = c["message"]["content"] if r.messages is not None else c["text"]
        n_tok = (reply.get("usage") or {}).get("completion_tokens")
        return Result(tag, text or "", n_tok, c.get("finish_reason") or "stop")

    def run(self, requests: list[Request], temperature, top_p, max_new_tokens, on_done) -> None:
        urls = self.base_urls
        if self.adapter is not None:
            for url in urls:
                if url not in self._loaded:
                    self._load_adapter(url)
        pools = [ThreadPoolExecutor(max_workers=max(1, self.concurrency)) for _ in urls]
        futures = []
        try:
            for k, r in enumerate(requests):
                for seed, tag in zip(r.seeds, r.tags):
                    futures.append(
                        pools[k % len(urls)].submit(
                            self._one, urls[k % len(urls)], r, seed, tag, temperature, top_p, max_new_tokens
                        )
                    )
            for fut in as_completed(futures):
                on_done([fut.result()])  # results reach the cache in this (the caller's) thread
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            for pool in pools:
                pool.shutdown(wait=True, cancel_futures=True)


def _vllm_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


_ENGINES: dict = {}  # (model, engine options) → the process's vllm.LLM: rounds share the base weights
_LORA_IDS: dict[str, int] = {}  # adapter name → vLLM's integer adapter id (unique in the process)


class VLLMBackend:
    """vLLM in this process (GPU). One request per sample with its own seed, so sample i of a
    prompt is reproducible; vLLM's prefix caching shares the prompt's prefill across samples.

    With `adapter=(name, path)` (a peft LoRA folder) every request carries a `LoRARequest` for it.
    The engine is built once per (model, options) in the process, with `enable_lora` when the policy
    will have adapters (`enable_lora=True` from its first, adapter-less round on), so each round's
    policy reuses the loaded base weights and only adds its adapter."""

    name = "vllm"
    wants_messages = False

    def __init__(
        self,
        model: str,
        batch_size: int = 1024,
        adapter: tuple[str, str] | None = None,
        enable_lora: bool | None = None,
        max_lora_rank: int = 16,
        **llm_kwargs,
    ):
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "backend=vllm needs vLLM, which is not installed. Install it on a machine with a CUDA GPU: "
                "`pip install rlrec[vllm]`. On CPU use backend=hf, or backend=openai pointed at a vLLM server "
                "(`make vllm-env vllm-serve`)."
            ) from e
        self.vllm = vllm
        assert isinstance(model, str), "backend=vllm takes the model as a hub id or folder path"
        enable_lora = adapter is not None if enable_lora is None else enable_lora
        assert adapter is None or enable_lora, "an adapter needs the engine built with enable_lora"
        if enable_lora:
            llm_kwargs = {"enable_lora": True, "max_lora_rank": max_lora_rank, **llm_kwargs}
        if _vllm_on_cpu():
            # vLLM's CPU build: a seeded request whose prefill is split into chunks kills the engine
            # ("CPU Generator does not use offset"), so every prompt is prefilled in one step
            max_len = llm_kwargs.get("max_model_len", 4096)
            llm_kwargs = {
                "enable_chunked_prefill": False,
                "max_model_len": max_len,
                "max_num_batched_tokens": max_len,
                **llm_kwargs,
            }
        key = (model, json.dumps(llm_kwargs, sort_keys=True, default=str))
        if key not in _ENGINES:
            _ENGINES[key] = vllm.LLM(model=model, enable_prefix_caching=True, **llm_kwargs)
        self.llm = _ENGINES[key]
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            name, path = str(adapter[0]), str(adapter[1])
            self.lora = LoRARequest(name, _LORA_IDS.setdefault(name, len(_LORA_IDS) + 1), path)
        self.tokenizer = self.llm.get_tokenizer()
        self.batch_size = batch_size
        self.forward_calls = 0

    def run(self, requests: list[Request], temperature, top_p, max_new_tokens, on_done) -> None:
        rows = [(r.text, seed, tag, r.constraint) for r in requests for seed, tag in zip(r.seeds, r.tags)]
        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i : i + self.batch_size]
            params = [
                self.vllm.SamplingParams(
                    n=1,
                    temperature=temperature,
                    top_p=top_p if temperature > 0 else 1.0,
                    max_tokens=max_new_tokens,
                    seed=seed % 2**31,
                    **self._structured(constraint),
                )
                for _, seed, _, constraint in chunk
            ]
            prompts = [row[0] for row in chunk]
            outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
            self.forward_calls += 1
            on_done(
                [
                    Result(tag, o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason or "stop")
                    for (_, _, tag, _), o in zip(chunk, outs)
                ]
            )

    def _structured(self, constraint) -> dict:
        if constraint is None:
            return {}
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(regex=constraint.regex())}


BACKENDS = {"hf": HFBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}


# ----------------------------------------------------------------------------- generator


class Generator:
    """N samples (or one greedy text) per prompt, through a backend, with a disk cache.

    `model`: a transformers model (hf), a served model name (openai), or a hub id / path (vllm).
    `model_fingerprint` identifies the base weights (e.g. `LLMConfig.fingerprint`); the adapter
    fingerprint identifies whatever was trained on top and is part of every cache key."""

    def __init__(
        self,
        model,
        tokenizer=None,
        model_fingerprint: str | None = None,
        cache_dir: str | Path | None = None,
        *,
        backend: str | object = "hf",
        adapter_fingerprint: str = "base",
        batch_size: int = 128,
        chat: bool = True,
        system: str | None = None,
        progress: bool = True,
        **backend_options,
    ):
        if isinstance(backend, str):
            if backend not in BACKENDS:
                raise ValueError(f"unknown generation backend {backend!r}; choose one of {sorted(BACKENDS)}")
            if backend == "hf":
                assert tokenizer is not None, "backend=hf needs the tokenizer"
                backend = HFBackend(model, tokenizer, batch_size=batch_size, **backend_options)
            elif backend == "openai":
                backend = OpenAIBackend(model=model, **backend_options)
            else:
                backend = VLLMBackend(model, batch_size=max(batch_size, 1024), **backend_options)
        self.backend = backend
        self.tokenizer = tokenizer if tokenizer is not None else getattr(backend, "tokenizer", None)
        if cache_dir is not None and not model_fingerprint:
            raise ValueError("a cache needs model_fingerprint (e.g. LLMConfig.fingerprint)")
        self.model_fingerprint = model_fingerprint or "unfingerprinted"
        self.adapter_fingerprint = adapter_fingerprint
        self.cache = GenerationCache(Path(cache_dir) / "generations.sqlite") if cache_dir is not None else None
        self.chat, self.system, self.progress = chat, system, progress
        self.last_stats = GenerationStats()
        # the version of the code that turns a prompt into text (rlrec/llm): part of every cached text's key
        self.code = code_version(Path(__file__).resolve().parent)

    def set_adapter_fingerprint(self, adapter_fingerprint: str) -> None:
        """Call whenever the policy's trainable weights change (new round, new checkpoint)."""
        self.adapter_fingerprint = adapter_fingerprint

    # -- public -------------------------------------------------------------------------------

    def sample(
        self,
        prompts: Sequence[str],
        n: int = 4,
        temperature: float = 1.0,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        seed: int = 0,
        *,
        adapter_fingerprint: str | None = None,
        callback: Callable[[int, int], None] | None = None,
        constraints: Sequence | None = None,
    ) -> list[list[str]]:
        """N texts per prompt: (len(prompts), n). `callback(done, total)` runs after each batch of
        samples is committed to the cache (raise from it to stop; a rerun resumes). `constraints`:
        one per prompt (None = free), e.g. `rlrec.llm.constrain.CandidateList`."""
        rows = self.sample_records(
            prompts,
            n,
            temperature,
            top_p,
            max_new_tokens,
            seed,
            adapter_fingerprint=adapter_fingerprint,
            callback=callback,
            constraints=constraints,
        )
        return [[s.text for s in row] for row in rows]

    def greedy(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 256,
        *,
        adapter_fingerprint: str | None = None,
        callback: Callable[[int, int], None] | None = None,
        constraints: Sequence | None = None,
    ) -> list[str]:
        rows = self.sample_records(
            prompts,
            1,
            0.0,
            1.0,
            max_new_tokens,
            0,
            adapter_fingerprint=adapter_fingerprint,
            callback=callback,
            constraints=constraints,
        )
        return [row[0].text for row in rows]

    def sample_records(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
        *,
        adapter_fingerprint: str | None = None,
        callback: Callable[[int, int], None] | None = None,
        constraints: Sequence | None = None,
    ) -> list[list[Sample]]:
        """Like `sample`, with token counts, finish reasons and whether each came from the cache."""
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
        calls_before = getattr(self.backend, "forward_calls", 0)

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
            stats.backend_calls = getattr(self.backend, "forward_calls", 0) - calls_before
            stats.detail = dict(getattr(self.backend, "last_detail", {})) if requests else {}
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
