"""`backend=hf` (the default): a transformers model in this process. Llama-family models use
`PrefixSharingSampler` (batched decode with shared prompt KV, continuous batching; ≥5× the tokens/s of
one `generate` call per prompt on CPU, see `benchmarks/generation.py`); other architectures fall back to
`model.generate`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from rlrec.llm.backends.base import Backend, Request, Result
from rlrec.runtime.precision import cast_linear_weights, is_bf16

if TYPE_CHECKING:
    from rlrec.llm.sampler import Finished, Job


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


class HFBackend(Backend):
    """A transformers causal LM in this process (plain or PEFT-wrapped; a PEFT model's LoRA is merged
    while it samples, `lora_merged`)."""

    name = "hf"

    @classmethod
    def from_config(cls, sampling, model, tokenizer, **options) -> HFBackend:
        """`options`: precision (the run's resolved one), engine (auto | prefix | generate)."""
        if tokenizer is None:
            raise ValueError("backend=hf needs the tokenizer")
        return cls(
            model,
            tokenizer,
            batch_size=sampling.batch_size,
            kv_cache_gb=sampling.kv_cache_gb,
            kv_dtype=sampling.kv_dtype,
            **options,
        )

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
        from rlrec.llm.sampler import PrefixSharingSampler

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


@torch.inference_mode()
def generate_fallback(
    model,
    pad_id: int,
    stop_ids: Sequence[int],
    jobs: list[Job],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    on_finished: Callable[[list[Finished]], None],
) -> None:
    """`model.generate` on left-padded batches of sample rows; seeded per batch from the rows'
    seeds, so deterministic for the same call (not independent of batch composition)."""
    from transformers import LogitsProcessorList

    from rlrec.llm.constrain import ConstraintLogitsProcessor
    from rlrec.llm.sampler import Finished

    rows = [
        (j.prompt_ids, seed, j.tags[i] if j.tags else i, j.constraint) for j in jobs for i, seed in enumerate(j.seeds)
    ]
    stop = set(stop_ids)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r[0]) for r in chunk)
        ids = torch.tensor([[pad_id] * (width - len(r[0])) + r[0] for r in chunk])
        mask = torch.tensor([[0] * (width - len(r[0])) + [1] * len(r[0]) for r in chunk])
        torch.manual_seed(int(chunk[0][1]) % 2**63)
        # top_k=0: transformers would otherwise add its default top_k=50 truncation
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else {}
        if any(r[3] is not None for r in chunk):
            states = [r[3].start() if r[3] is not None else None for r in chunk]
            kwargs["logits_processor"] = LogitsProcessorList([ConstraintLogitsProcessor(states)])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=list(stop),
            **({"do_sample": False} | kwargs),
        )
        done = []
        for r, seq in zip(chunk, out[:, width:].tolist()):
            cut = next((i for i, t in enumerate(seq) if t in stop), None)
            toks = seq if cut is None else seq[: cut + 1]
            done.append(Finished(r[2], toks, "length" if cut is None else "stop"))
        on_finished(done)
