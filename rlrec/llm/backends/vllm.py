"""`backend=vllm`: vLLM in this process (GPU machines; `pip install rlrec[vllm]`), a `LoRARequest` per
adapter."""

from __future__ import annotations

import json

from rlrec.llm.backends.base import Backend, Request, Result


def _vllm_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


_ENGINES: dict = {}  # (model, engine options) → the process's vllm.LLM: rounds share the base weights
_LORA_IDS: dict[str, int] = {}  # adapter name → vLLM's integer adapter id (unique in the process)


class VLLMBackend(Backend):
    """vLLM in this process (GPU). One request per sample with its own seed, so sample i of a
    prompt is reproducible; vLLM's prefix caching shares the prompt's prefill across samples.

    With `adapter=(name, path)` (a peft LoRA folder) every request carries a `LoRARequest` for it.
    The engine is built once per (model, options) in the process, with `enable_lora` when the policy
    will have adapters (`enable_lora=True` from its first, adapter-less round on), so each round's
    policy reuses the loaded base weights and only adds its adapter."""

    name = "vllm"

    @classmethod
    def from_config(cls, sampling, model, tokenizer, **options) -> VLLMBackend:
        """`model`: a hub id or folder; `options`: adapter, enable_lora, and engine arguments, which
        override `sampling.engine_args`."""
        engine = {**dict(sampling.engine_args or {}), **options}
        return cls(model, batch_size=max(sampling.batch_size, 1024), max_lora_rank=sampling.max_lora_rank, **engine)

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
