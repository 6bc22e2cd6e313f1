"""What every generation backend is: `run(requests, temperature, top_p, max_new_tokens, on_done)`
turns prompts (each with the seeds of the samples still wanted) into texts, handing finished ones to
`on_done` as they complete; `from_config` builds it from the run's `SamplingConfig`. A backend knows
nothing of caching, keys or progress: `rlrec.llm.generation.Generator` owns those."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from rlrec.llm.generation import SamplingConfig


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


class Backend:
    """One way to produce texts. Subclasses set `name` (part of every cached text's key) and implement
    `from_config` and `run`; the rest are declared defaults a backend may override."""

    name: str = ""
    wants_messages: bool = False  # a chat API takes the chat messages; local backends a templated string
    tokenizer = None  # a backend that brings its own tokenizer (vLLM) exposes it here
    forward_calls: int = 0  # model forwards (hf) or HTTP requests (openai) so far
    last_detail = MappingProxyType({})  # timings of the last run, e.g. hf prefill/decode seconds

    @classmethod
    def from_config(cls, sampling: SamplingConfig, model, tokenizer, **options) -> Backend:
        """The backend `sampling` asks for, on `model` (a transformers model, a served name or a path);
        `options` are what only this backend takes (hf: precision, engine; openai/vllm: adapter, …)."""
        raise NotImplementedError

    def run(
        self,
        requests: list[Request],
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        on_done: Callable[[list[Result]], None],
    ) -> None:
        raise NotImplementedError
