"""`backend=openai`: any OpenAI-compatible endpoint (vLLM/SGLang/llama.cpp servers, hosted APIs), or
several serving one model, over plain HTTP with retries and backoff; one request per sample with its own
seed; a policy's LoRA adapter is loaded on vLLM servers at run time and named in each request."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from rlrec.llm.backends.base import Backend, Request, Result

log = logging.getLogger("rlrec")


class ServerError(RuntimeError):
    """An OpenAI-compatible server's error answer (`status` = the HTTP code; 0 = no answer)."""

    def __init__(self, message: str, url: str, status: int = 0, detail: str = ""):
        super().__init__(message)
        self.url, self.status, self.detail = url, status, detail


class OpenAIBackend(Backend):
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

    @classmethod
    def from_config(cls, sampling, model, tokenizer, **options) -> OpenAIBackend:
        """`model`: the served name (default `sampling.api_model`); `options`: adapter, timeout, retries, …"""
        model = model if isinstance(model, str) else sampling.api_model
        return cls(sampling.urls, model, api_key_env=sampling.api_key_env, **options)

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
