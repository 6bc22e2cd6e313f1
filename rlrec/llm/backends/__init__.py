"""Generation backends, one file each behind one registry: `hf` (a transformers model in this process),
`openai` (OpenAI-compatible servers), `vllm` (vLLM in process). `build(sampling, model, tokenizer)` is
the one place a backend is chosen."""

from __future__ import annotations

from rlrec.llm.backends.base import Backend, Request, Result
from rlrec.llm.backends.hf import HFBackend, lora_merged
from rlrec.llm.backends.openai import OpenAIBackend, ServerError
from rlrec.llm.backends.vllm import VLLMBackend

BACKENDS: dict[str, type[Backend]] = {"hf": HFBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}

__all__ = ["BACKENDS", "Backend", "Request", "Result", "ServerError", "build", "lora_merged"]


def build(sampling, model, tokenizer, **options) -> Backend:
    """The backend `sampling.backend` names, built from `sampling` (+ backend-only `options`)."""
    if sampling.backend not in BACKENDS:
        raise ValueError(f"sampling.backend={sampling.backend!r}: choose one of {sorted(BACKENDS)}")
    return BACKENDS[sampling.backend].from_config(sampling, model, tokenizer, **options)
