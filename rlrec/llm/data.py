"""Tokenised preference and SFT examples, and their collation into right-padded batches.

A preference example is {prompt, chosen: str, rejected: list[str]}; an SFT example is
{prompt, completion}. A prompt is a raw string, or (with `chat_template=True`, or given as
a list of {role, content} messages) wrapped by the tokenizer's chat template with the
generation prompt appended. Prompts are truncated from the LEFT (the question and answer
format sit at the end of recommendation prompts; the oldest history goes first),
completions from the right; EOS is appended to every completion before truncation, so a
completion that had to be cut does not learn to stop there.

A preference batch is the concatenation [chosen (B); rejected_1 (B); …; rejected_K (B)] so one
forward pass scores all of it; examples with fewer than K negatives get prompt-only rows
(no completion tokens) and `rejected_mask` False there. It comes in two layouts: whole
sequences, right-padded (input_ids, attention_mask, completion_mask), and split — prompts once
per example, left-padded, plus the completions right-padded (prompt_input_ids,
prompt_attention_mask, completion_input_ids, completion_attention_mask) — for
`rlrec.llm.logps.shared_prompt_logps`, which runs each prompt once for its 1+K completions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

Prompt = str | list[dict]


def pad_right(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad integer sequences into one (N, T) tensor.

    >>> pad_right([[1, 2, 3], [4]], value=0)
    tensor([[1, 2, 3],
            [4, 0, 0]])
    """
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def format_prompt(tokenizer, prompt: Prompt, chat_template: bool) -> tuple[str, bool]:
    """(text, already has special tokens) — a message list or `chat_template=True` goes
    through the tokenizer's chat template with `add_generation_prompt=True`."""
    if isinstance(prompt, str) and not chat_template:
        return prompt, False
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, True


def encode_prompt(tokenizer, prompt: Prompt, max_prompt_len: int, chat_template: bool = False) -> list[int]:
    text, templated = format_prompt(tokenizer, prompt, chat_template)
    # a templated prompt carries its own BOS/system tokens; a raw one gets the tokenizer's defaults
    ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    return ids[-max_prompt_len:]  # keep the end: the question and answer format


def encode_completion(tokenizer, completion: str, max_completion_len: int) -> list[int]:
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids[:max_completion_len]


def _rows(prompt_ids: list[int], completions: Sequence[list[int]]):
    """(input_ids, completion_mask) lists, one per completion, sharing the prompt."""
    return [prompt_ids + c for c in completions], [[0] * len(prompt_ids) + [1] * len(c) for c in completions]


def pad_left(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Left-pad integer sequences into one (N, T) tensor (they all end in the last column).

    >>> pad_left([[1, 2, 3], [4]], value=0)
    tensor([[1, 2, 3],
            [0, 0, 4]])
    """
    return pad_right([list(s)[::-1] for s in seqs], value).flip(-1)


def collate_sequences(ids: list[list[int]], completion: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids (N, T), attention_mask (N, T), completion_mask (N, T) bool."""
    return {
        "input_ids": pad_right(ids, pad_id),
        "attention_mask": pad_right([[1] * len(s) for s in ids], 0),
        "completion_mask": pad_right(completion, 0).bool(),
    }


class PreferenceDataset(Dataset):
    """Tokenises once; items are id lists, `collate` builds the concatenated batch.

    Each item carries its `index`, so log-probs precomputed for the reference model can be
    looked up per example whatever the shuffling. `num_negatives` fixes K for every batch
    (default: the largest count in the data); extra negatives are dropped, missing ones masked.
    """

    def __init__(
        self,
        examples: Sequence[dict],
        tokenizer,
        max_prompt_len: int = 512,
        max_completion_len: int = 256,
        chat_template: bool = False,
        num_negatives: int | None = None,
    ):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.items = []
        for i, ex in enumerate(examples):
            rejected = [ex["rejected"]] if isinstance(ex["rejected"], str) else list(ex["rejected"])
            assert rejected, f"example {i} has no rejected completion"
            self.items.append(
                {
                    "index": i,
                    "prompt": encode_prompt(tokenizer, ex["prompt"], max_prompt_len, chat_template),
                    "chosen": encode_completion(tokenizer, ex["chosen"], max_completion_len),
                    "rejected": [encode_completion(tokenizer, r, max_completion_len) for r in rejected],
                }
            )
        self.num_negatives = num_negatives or max(len(it["rejected"]) for it in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        """→ input_ids / attention_mask / completion_mask ((1+K)·B, T) in the order
        [chosen; rejected_1; …; rejected_K]; prompt_input_ids / prompt_attention_mask (B, P)
        left-padded; completion_input_ids / completion_attention_mask ((1+K)·B, C) in the same
        row order; rejected_mask (B, K); index (B,)."""
        K = self.num_negatives
        columns = [[it["chosen"] for it in items]]
        for k in range(K):
            columns.append([it["rejected"][k] if k < len(it["rejected"]) else [] for it in items])
        ids, completion = [], []
        for column in columns:
            for it, c in zip(items, column):
                i, m = _rows(it["prompt"], [c])
                ids += i
                completion += m
        batch = collate_sequences(ids, completion, self.pad_id)
        prompts = [it["prompt"] for it in items]
        completions = [c for column in columns for c in column]
        batch["prompt_input_ids"] = pad_left(prompts, self.pad_id)
        batch["prompt_attention_mask"] = pad_left([[1] * len(p) for p in prompts], 0)
        batch["completion_input_ids"] = pad_right([c or [self.pad_id] for c in completions], self.pad_id)
        batch["completion_attention_mask"] = pad_right([[1] * len(c) or [0] for c in completions], 0)
        batch["rejected_mask"] = torch.tensor([[k < len(it["rejected"]) for k in range(K)] for it in items])
        batch["index"] = torch.tensor([it["index"] for it in items])
        return batch


class SFTDataset(Dataset):
    """{prompt, completion} examples; the loss is on completion tokens only (`completion_mask`)."""

    def __init__(
        self,
        examples: Sequence[dict],
        tokenizer,
        max_prompt_len: int = 512,
        max_completion_len: int = 256,
        chat_template: bool = False,
    ):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.items = [
            {
                "prompt": encode_prompt(tokenizer, ex["prompt"], max_prompt_len, chat_template),
                "completion": encode_completion(tokenizer, ex["completion"], max_completion_len),
            }
            for ex in examples
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids, completion = [], []
        for it in items:
            i, m = _rows(it["prompt"], [it["completion"]])
            ids += i
            completion += m
        return collate_sequences(ids, completion, self.pad_id)
