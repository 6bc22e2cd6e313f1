"""Log-probabilities of completions under a causal LM: the one quantity DPO-style losses and SFT
need. Memory-light: never materialises a full (B, T, V) log-softmax, and both model-facing
helpers ask the model for logits only at the positions that predict completion tokens (the LM
head over the prompt is wasted work). `shared_prompt_logps` also runs each prompt once for its
1+K completions instead of 1+K times."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.utils.checkpoint
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

# The KV cache's name in a model's forward and in its outputs: transformers 5 renamed `past_key_values`
# to `cache` (the old keyword is deprecated, to be removed in 5.40, after which a model's **kwargs would
# swallow it and run without the cache); the releases before the rename (pyproject: ≥ 4.56) know only
# `past_key_values`.
CACHE_NAME = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def with_cache(cache) -> dict:
    """The keyword argument that hands `cache` (a transformers `Cache`) to a model's forward."""
    return {CACHE_NAME: cache}


def cache_of(out):
    """The KV cache a model's forward returned (`use_cache=True`)."""
    return getattr(out, CACHE_NAME)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`log_softmax(logits)[..., index]` without the (…, V) log-softmax tensor: gather the chosen
    logit and subtract a logsumexp computed one leading row at a time (trl's helper, minus its
    triton path and temperature, so we do not import trl for 10 lines).

    logits (..., V), index (...) → (...), float32 for bf16/fp16 logits (sequence sums stay exact).

    >>> logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # (B=1, T=2, V=3)
    >>> selective_log_softmax(logits, torch.tensor([[2, 0]])).exp().round(decimals=4)
    tensor([[0.6652, 0.3333]])
    """
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # (...)
    if logits.dtype in (torch.float32, torch.float64):
        # row by row: peak memory is one row's exp, not the whole batch's
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return picked - lse
    # logsumexp-then-subtract loses precision in bf16/fp16: upcast row by row instead
    rows = [row.float().log_softmax(-1).gather(-1, i.unsqueeze(-1)).squeeze(-1) for row, i in zip(logits, index)]
    return torch.stack(rows)  # fp32: a sequence's sum of bf16 log-probs would round to 0.25 at -60


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the completion tokens of each sequence.

    logits (B, T, V) from a causal LM over `labels` (B, T) (position t predicts token t+1: the
    shift happens here); mask (B, T) marks completion tokens in `labels` coordinates. → (B,).
    Labels outside the mask may hold anything (-100, pad ids): they are never gathered.

    >>> logits = torch.zeros(1, 4, 5)  # uniform over V=5
    >>> labels = torch.tensor([[1, 2, 3, -100]])
    >>> mask = torch.tensor([[0, 0, 1, 0]]).bool()  # one completion token
    >>> torch.allclose(sequence_logps(logits, labels, mask), torch.tensor([-torch.log(torch.tensor(5.0))]))
    True
    """
    mask = mask[:, 1:].bool()  # (B, T-1)
    labels = labels[:, 1:].masked_fill(~mask, 0)  # safe gather index where masked
    per_token = selective_log_softmax(logits[:, :-1], labels)  # (B, T-1)
    return (per_token * mask).sum(-1)


def last_logits(model: nn.Module, input_ids: torch.Tensor, **kwargs):
    """(B, V) next-token logits at each row's last position, and the model's output (its cache).

    The last positions are asked for with a boolean `logits_to_keep`: transformers gathers them into
    a (B, H) matrix before the LM head. `logits_to_keep=1` hands the head a (B, 1, H) view whose batch
    stride is T·H, and torch's CPU bf16 linear takes such a view through a batched matmul that first
    copies the whole transposed (H, V) weight: ~90 ms per call instead of ~3 for SmolLM2-135M's
    49k × 576 head (torch 2.13, AMX), a third of a ~480-token prefill. A model that ignores the mask
    and returns (B, T, V) gets its last position taken here."""
    keep = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    keep[:, -1] = True
    out = model(input_ids=input_ids, logits_to_keep=keep, **kwargs)
    logits = out.logits
    return (logits[:, -1] if logits.ndim == 3 else logits), out


def completion_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed completion log-probs (B,) from one forward of a HF causal LM (or a PEFT wrapper).

    The LM head runs only on the positions that predict a completion token: a boolean
    `logits_to_keep` (B, T) makes transformers return the flattened (N, V) logits of exactly
    those positions (N = number of completion tokens in the batch). `labels` defaults to
    `input_ids`; positions outside `completion_mask` are ignored.
    """
    labels = input_ids if labels is None else labels
    completion_mask = completion_mask.bool()
    keep = torch.zeros_like(completion_mask)
    keep[:, :-1] = completion_mask[:, 1:]  # position t is kept iff token t+1 is a completion token
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
    logits = out.logits
    if logits.ndim == 3:  # a model that ignores the mask and returns (B, T, V)
        return sequence_logps(logits, labels, completion_mask)
    targets = labels[:, 1:][completion_mask[:, 1:]]  # (N,), same row-major order as hidden[keep]
    assert logits.shape[0] == targets.shape[0], f"kept {logits.shape[0]} logits for {targets.shape[0]} tokens"
    return _token_logps_to_rows(logits, targets, keep.nonzero()[:, 0], len(input_ids))


def _token_logps_to_rows(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum per-token log-probs (logits (N, V), targets (N,)) into their rows (N,) → (n_rows,)."""
    token_logps = selective_log_softmax(logits.unsqueeze(0), targets.unsqueeze(0)).squeeze(0)  # (N,)
    return torch.zeros(n_rows, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)


def shared_prompt_logps(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    checkpoint_prompt: bool = False,
) -> torch.Tensor:
    """Summed completion log-probs when each of B prompts has R/B completions, rows laid out
    [completion_1 (B); completion_2 (B); …] (the preference batch's [chosen; rejected_1; …]).

    The prompts (B, P), LEFT-padded so they all end at column P−1, go through the model once
    with a KV cache; the cache is repeated for the completions (R, C), RIGHT-padded, which run
    as a second forward on top of it. Gradients reach the prompt's activations through the
    cache, so this equals `completion_logps` on the concatenated sequences — with the prompt
    computed once instead of R/B times (S-DPO with K negatives: K+1 times). → (R,).

    `checkpoint_prompt` (with gradients on, model in training mode): the prompt pass keeps only
    its KV cache, its last logits and each decoder layer's input, and the backward replays it one
    layer at a time (`torch.utils.checkpoint`, non-reentrant: dropout masks and autocast replayed),
    so a step holds the completions' activations and one prompt layer's, not the whole prompt's
    (for a TrackRec group, ~460 prompt tokens and 4 × 64 completion tokens, the prompt's are most of
    them). Same values and gradients; the prompt's forward runs twice. transformers disables the
    cache of a checkpointed layer because a replay would append its keys again; here the prompt
    pass writes into a `_RecordingCache` (an update stores the layer's states, replay included,
    instead of appending), and the completions run on a cache of their own built from it.
    """
    B, R = len(prompt_ids), len(completion_ids)
    assert R % B == 0, f"{R} completions for {B} prompts"
    copies = R // B
    completion_mask = completion_mask.bool()
    # the cache's public repeat is interleaved (b0, b0, …, b1, …): work in that row order, undo at the end;
    # order[i] = the blocked row that goes to interleaved row i
    order = torch.arange(R, device=completion_ids.device).view(copies, B).T.reshape(-1)
    completion_ids, completion_mask = completion_ids[order], completion_mask[order]

    prompt_pos = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens from 0

    def prompt_pass(cache=None):
        logits, out = last_logits(
            model, prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True, **with_cache(cache)
        )
        return logits, cache_of(out)

    if not (checkpoint_prompt and torch.is_grad_enabled()):
        prompt_last, cache = prompt_pass()
    else:
        with _checkpointed_layers(model) as per_layer:
            if per_layer:  # each decoder layer replays on its own in the backward
                prompt_last, recorded = prompt_pass(_RecordingCache())
                # the completions' cache: its own layers, so a replayed prompt layer never sees their tokens
                cache = DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in recorded.layers])
            else:  # no transformers decoder layers: replay the whole prompt pass
                prompt_last, cache = torch.utils.checkpoint.checkpoint(prompt_pass, use_reentrant=False)
    cache.batch_repeat_interleave(copies)
    # (R, V): the prompt's last position predicts each completion's first token
    first_logits = prompt_last.repeat_interleave(copies, 0)

    # a new name: prompt_pass reads prompt_mask again when the backward recomputes it
    repeated_mask = prompt_mask.repeat_interleave(copies, 0)  # (R, P)
    C = completion_ids.shape[1]
    positions = repeated_mask.sum(-1, keepdim=True) + torch.arange(C, device=completion_ids.device)  # (R, C)
    keep = torch.zeros_like(completion_mask)
    keep[:, :-1] = completion_mask[:, 1:]  # position t predicts completion token t+1
    out = model(
        input_ids=completion_ids,
        # the completion tokens are exactly the real (non-pad) ones
        attention_mask=torch.cat([repeated_mask, completion_mask.long()], 1),
        position_ids=positions,
        logits_to_keep=keep,
        **with_cache(cache),
    )
    assert out.logits.ndim == 2, "shared_prompt_logps needs a model that accepts a boolean logits_to_keep"
    first = selective_log_softmax(first_logits[None], completion_ids[None, :, 0]).squeeze(0)  # (R,)
    targets = completion_ids[:, 1:][completion_mask[:, 1:]]
    rest = _token_logps_to_rows(out.logits, targets, keep.nonzero()[:, 0], R)
    logps = first * completion_mask[:, 0] + rest
    return torch.empty_like(logps).index_copy(0, order, logps)  # back to the blocked order


class _RecordingCache(DynamicCache):
    """The cache of a prompt pass with no past whose layers replay in the backward: `update` stores a
    layer's key/value states (replacing, not appending) and returns them, so a replayed layer sees
    exactly the states it computed the first time."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(DynamicLayer())
        layer = self.layers[layer_idx]
        if not layer.is_initialized:
            layer.lazy_initialization(key_states, value_states)
        layer.keys, layer.values = key_states, value_states
        return key_states, value_states


@contextmanager
def _checkpointed_layers(model: nn.Module) -> Iterator[bool]:
    """Within the block, every transformers decoder layer of `model` (a `GradientCheckpointingLayer`)
    in training mode checkpoints its forward (non-reentrant) and keeps the cache it is given
    (`_can_checkpoint_with_cache`: the caller passes a `_RecordingCache`); restored on exit. Yields
    whether the model has such layers."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    keys = ("gradient_checkpointing", "_gradient_checkpointing_func", "_can_checkpoint_with_cache")
    before = [{k: m.__dict__[k] for k in keys if k in m.__dict__} for m in layers]
    replay = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
    for m in layers:
        m.gradient_checkpointing = True
        m._gradient_checkpointing_func = replay
        m._can_checkpoint_with_cache = True
    try:
        yield bool(layers)
    finally:
        for m, own in zip(layers, before):
            for k in keys:
                m.__dict__.pop(k, None)
            m.__dict__.update(own)


def choice_token_ids(tokenizer, choices: Sequence[str]) -> list[list[int]]:
    """For each choice ("Yes", "A", …) the first-token ids of its spellings ("Yes", " Yes"), read
    from the tokenizer — never hard-coded, so any model works. Raises if two choices share a token."""
    ids = []
    for c in choices:
        variants = set()
        for v in (c, " " + c):
            first = tokenizer.encode(v, add_special_tokens=False)[0]
            if tokenizer.decode([first]).strip():  # a bare "▁"/space token is not this choice
                variants.add(first)
        if not variants:
            raise ValueError(f"choice {c!r} has no first token of its own in this tokenizer")
        ids.append(sorted(variants))
    flat = [i for v in ids for i in v]
    if len(flat) != len(set(flat)):
        raise ValueError(f"choices {list(choices)} share a first token in this tokenizer: {ids}")
    return ids


@torch.no_grad()
def choice_probs(model, tokenizer, prompts: Sequence[str], choices: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """(P, C): probability that the next token after each (fully formatted) prompt is each choice,
    renormalised over the choices — TrackRec's P(Yes) / (P(Yes) + P(No)) for an LLM validator, and a
    judge's A/B decision read from its logits. Each choice sums its spellings' probabilities."""
    ids = choice_token_ids(tokenizer, choices)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts[s : s + batch_size]]
        T = max(len(r) for r in rows)
        input_ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows], device=device)  # (B, T) left-padded
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        logits, _ = last_logits(model, input_ids, attention_mask=mask, position_ids=positions)  # (B, V)
        logp = logits.float().log_softmax(-1)  # (B, V)
        per_choice = torch.stack([logp[:, v].logsumexp(-1) for v in ids], dim=-1)  # (B, C)
        out.append(per_choice.softmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(choices))


def chat_choice_probs(
    model, tokenizer, questions: Sequence[str], choices: Sequence[str], batch_size: int = 8, answer_prefix: str = ""
) -> torch.Tensor:
    """`choice_probs` of questions asked in the chat template, the assistant's answer starting with
    `answer_prefix`: the LLM validator's P(Yes) and the judge's "Chosen Option:" A/B."""
    from rlrec.llm.chat import format_chat

    prompts = [format_chat(tokenizer, q) + answer_prefix for q in questions]
    return choice_probs(model, tokenizer, prompts, choices, batch_size)
