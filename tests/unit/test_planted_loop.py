"""The whole loop with a real (tiny) LLM on a planted feedback whose answer is known: the reward
counts the letter "z", so the aligned policy must write "z" more often — on users it never trained
on. A tiny Llama over a 29-character vocabulary samples every letter from the start (the embedded
model's 49k-token vocabulary would not), so two rounds suffice. This is the loop end to end:
sampler, scoring, preference groups, S-DPO with the reference precomputed, adapters as stages,
held-out gain with its paired test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from rlrec import loop
from rlrec.feedback.planted import PlantedFeedback
from rlrec.llm.generation import SamplingConfig
from rlrec.outputs.results import Probe
from rlrec.policy import Policy
from rlrec.runtime.cache import fingerprint
from rlrec.runtime.store import Store

ALPHABET = "abcdefghijklmnopqrstuvwxyz .?"


class CharTokenizer:
    """One token per character of ALPHABET (0 = pad, 1 = end of text)."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 + ALPHABET.index(c) for c in text.lower() if c in ALPHABET]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(ALPHABET[i - 2] for i in ids if i >= 2)

    def save_pretrained(self, path) -> None:
        pass


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=2 + len(ALPHABET), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return LlamaForCausalLM(conf)


PREFERENCE = OmegaConf.create({
    "max_prompt_len": 32, "max_completion_len": 16, "chat_template": False, "num_negatives": None,
    "batch_size": 8, "accumulate_grad_batches": 1, "max_epochs": 2, "gradient_clip_val": 1.0, "val_checks": 1,
    "val_pairs": None, "pairs": "best_vs_all",
})  # fmt: skip


def make_trainer(max_epochs, callbacks=(), progress=None, **kw):
    return pl.Trainer(max_epochs=max_epochs, callbacks=list(callbacks), accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, **kw)  # fmt: skip


class Prompts:
    """Forty users, each with its own question; the probe records nothing the loop needs."""

    train_users = np.arange(1, 41)
    questions = {int(u): f"user {u} likes" for u in train_users}

    def probe(self, policy, name):
        return Probe(name, fingerprint(name, policy.key), {})


def encode(texts):
    return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts])


def phrase_rate(policy, users, feedback: PlantedFeedback) -> tuple[float, int]:
    """(occurrences of the planted phrase per character, characters) in the policy's N samples for
    each of `users`, drawn with one fixed sampling seed before and after training."""
    texts = [t for row in policy.sample([Prompts.questions[int(u)] for u in users], seed=99) for t in row]
    chars = sum(len(t) for t in texts)
    return sum(len(feedback.pattern.findall(t)) for t in texts) / max(chars, 1), chars


def test_the_loop_learns_to_write_the_planted_phrase_for_held_out_users(tmp_path):
    from rlrec.tasks.preference import PreferenceTask

    task = PreferenceTask(tiny_llama(), loss="sdpo", beta=0.5, lora=None, tokenizer=CharTokenizer(),
                          optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))  # fmt: skip
    task.configure_model()
    sampling = SamplingConfig.preset(
        num_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=12, batch_size=64, chat=False, seed=0
    )
    policy = Policy(SimpleNamespace(fingerprint="tiny-char-llama"), sampling, PREFERENCE, Store(tmp_path),
                    make_trainer, task=task, seed=0)  # fmt: skip
    policy.progress = False
    feedback = PlantedFeedback(phrase="z")
    _, held = loop.split_users(Prompts.train_users, 16, seed=3)  # never trained on
    before, chars_before = phrase_rate(policy, held, feedback)
    cfg = loop.AlignConfig(
        2, 24, 16, dedup_threshold=0.98, min_gap=0.0, min_z=0.0, pairs="best_vs_all", seed=3, length_control="none"
    )
    rounds = loop.align(policy, feedback, Prompts(), Store(tmp_path), encode, cfg)
    trained = policy.with_adapter(None, rounds[-1].policy_key)  # the last round's weights, by key
    trained.__dict__["task"] = task  # trained in place: the object the rounds handed on
    after, chars_after = phrase_rate(trained, held, feedback)
    # The positive control itself: the held-out users' texts say the phrase more often. Untrained, the
    # rate is 0.027-0.041 over five sampling seeds (~1/29: every letter is sampled); trained, ~0.12. The
    # binomial standard error of the difference is ~0.01 on ~1,200 characters a side, so demand twice
    # the rate and 5 standard errors: chance cannot give that, a fit that does not learn cannot pass.
    se = math.sqrt(before * (1 - before) / chars_before + after * (1 - after) / chars_after)
    assert before > 0, "the untrained policy never writes the phrase: the control cannot show a rise"
    assert after > 2 * before and after - before > 5 * se, (before, after, se)

    assert [r.t for r in rounds] == [0, 1, 2] and all(r.trained for r in rounds[1:])
    for r in rounds[1:]:  # every round raises the held-out reward, and the fit saw held-out pairs
        assert r.metrics["heldout/reward_gain"] > 0 and r.metrics["heldout/users"] == 16
        assert r.curve and "align/heldout_reward_acc" in r.metrics
    assert rounds[-1].metrics["heldout/p"] < 0.01
