"""rlrec's DPO against trl's `DPOTrainer` (a peer library) on the same tiny random model and pairs:
the tokenised completions (EOS included), the per-sequence log-probs of policy and reference, the
DPO loss and its gradient. rlrec's side is `PreferenceDataset` + `PreferenceTask.step`, exactly as a
round trains; trl's side is its own dataset preparation, collator, `compute_ref_log_probs` and
`compute_loss`. trl is imported here only (a few seconds)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from rlrec.llm.data import PreferenceDataset, format_prompt
from rlrec.llm.loading import load_model
from rlrec.tasks.preference import PreferenceTask
from tests.unit.test_loading import tiny_cfg

# trl 1.x's DPOTrainer API (`compute_ref_log_probs(model, inputs)`, the fused LM head); 0.x had
# `concatenated_forward` / `get_batch_loss_metrics` instead
trl = pytest.importorskip("trl", minversion="1.0")

BETA = 1.0  # large enough that the two random models' log-ratio gaps move the loss well off log 2
# prompts of different lengths (the shared-prompt path left-pads them); completions of different
# lengths, the chosen one longer in the first pair and shorter in the second (right padding)
PAIRS = [
    {"prompt": "The user watched Heat and Ronin. Recommend one film.",
     "chosen": "Collateral, a night-time crime thriller.", "rejected": "Frozen."},
    {"prompt": "Liked: Alien.", "chosen": "Aliens", "rejected": "The Notebook, a romance about a summer love."},
    {"prompt": "A user who loves film noir, westerns and slow character studies asks what to watch next.",
     "chosen": "The Third Man", "rejected": "Cars 2"},
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The models, rlrec's dataset, and trl's batch, log-probs, loss and gradient on the same pairs."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, tok = load_model(tiny_cfg(seed=3))  # the embedded SmolLM2 tokenizer: EOS = pad = <|im_end|>
    reference, _ = load_model(tiny_cfg(seed=4), tokenizer=tok)  # another seed: non-zero log-ratios
    ds = PreferenceDataset(PAIRS, tok, max_prompt_len=512, max_completion_len=128, chat_template=True)

    # rlrec (conf/preference/*.yaml: chat_template=true) templates the prompt and appends the EOS id to the
    # raw completion. The like-for-like trl input is the plain (non-conversational) format with the
    # templated prompt text: trl then appends `tokenizer.eos_token` as text to chosen and rejected (unless
    # already there), which tokenises to the same EOS id. In the conversational format trl appends no EOS:
    # the chat template closes the assistant turn, and for SmolLM2 that is "<|im_end|>\n", so trl's
    # completion is rlrec's plus one "\n" token after EOS (checked below). That "\n" is never sampled
    # (generation stops at EOS), so rlrec not scoring it is a convention difference, not a bug.
    def as_trl(prompt, chosen, rejected, conversational):
        if conversational:
            return {"prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]}  # fmt: skip
        return {"prompt": format_prompt(tok, prompt, chat_template=True)[0], "chosen": chosen, "rejected": rejected}

    plain = Dataset.from_list([as_trl(**p, conversational=False) for p in PAIRS])
    conversational = Dataset.from_list([as_trl(**p, conversational=True) for p in PAIRS])
    # transformers 5 renamed gradient_checkpointing (trl's default: on) to activation_checkpointing
    no_checkpointing = {"activation_checkpointing" if hasattr(DPOConfig, "activation_checkpointing")
                        else "gradient_checkpointing": False}  # fmt: skip
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], use_cpu=True, bf16=False,
        precompute_ref_log_probs=False, max_length=None, beta=BETA, loss_type=["sigmoid"],
        per_device_eval_batch_size=len(PAIRS), disable_tqdm=True, **no_checkpointing,
    )  # fmt: skip
    # copies: trl patches its models' forward (a fused LM head) and their pad-token config
    trainer = DPOTrainer(
        model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args, train_dataset=plain,
        eval_dataset=conversational, processing_class=tok,
    )  # fmt: skip
    # trl's own collation of the plain pairs, in order: [chosen (B); rejected (B)], right-padded
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    with torch.no_grad():
        chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)  # any model: here the policy
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    loss = trainer.compute_loss(trainer.model, batch)  # the mean over pairs of −log σ(β·Δ)
    grads = torch.autograd.grad(loss, list(trainer.model.parameters()))
    return {
        "policy": policy, "reference": reference, "tok": tok, "ds": ds, "trainer": trainer, "batch": batch,
        "logps": (chosen, rejected, ref_chosen, ref_rejected), "loss": loss.detach(), "grads": grads,
    }  # fmt: skip


def test_completions_tokenise_as_trl_does_with_eos_and_the_same_masks(run):
    ds, tok, trainer, batch = run["ds"], run["tok"], run["trainer"], run["batch"]
    eos = tok.eos_token_id
    for i, (mine, plain, conv) in enumerate(zip(ds, trainer.train_dataset, trainer.eval_dataset)):
        assert mine["prompt"] == plain["prompt_ids"] == conv["prompt_ids"], i
        assert mine["chosen"] == plain["chosen_ids"] and mine["rejected"] == [plain["rejected_ids"]], i
        assert mine["chosen"][-1] == eos and mine["rejected"][0][-1] == eos, i
        # conversational trl: the template's "\n" after EOS is one more completion token
        newline = tok("\n", add_special_tokens=False)["input_ids"]
        assert conv["chosen_ids"] == mine["chosen"] + newline, (i, conv["chosen_ids"], mine["chosen"])
        assert conv["rejected_ids"] == mine["rejected"][0] + newline, i
    mine = ds.collate(list(ds))
    # the same rows [chosen; rejected] score the same number of tokens in every layout: EOS (= pad here)
    # is counted by the masks, not dropped with the padding
    counts = batch["completion_mask"].sum(-1)
    assert counts.tolist() == mine["completion_mask"].sum(-1).tolist()
    assert counts.tolist() == mine["completion_attention_mask"].sum(-1).tolist()
    assert mine["prompt_attention_mask"].sum(-1).unique().numel() == len(PAIRS)  # real left padding
    n = len(PAIRS)  # real right padding: the chosen completion is the longer one in pair 0, the shorter in 1
    assert counts[0] > counts[n] and counts[1] < counts[n + 1], counts


@pytest.mark.parametrize("share_prompt", [True, False], ids=["shared_prompt", "full_sequences"])
def test_logps_and_dpo_loss_equal_trl(run, share_prompt):
    """rlrec's policy and reference log-probs, DPO loss and its gradient equal trl's to ~1e-5, whether
    rlrec runs each prompt once (left-padded, KV cache) or whole right-padded sequences."""
    ds, policy = run["ds"], run["policy"]
    batch = ds.collate(list(ds))
    reference = PreferenceTask(run["reference"], loss="dpo", beta=BETA, tokenizer=run["tok"], share_prompt=share_prompt)
    reference.precompute_reference(DataLoader(ds, batch_size=len(ds), collate_fn=ds.collate))
    task = PreferenceTask(policy, loss="dpo", beta=BETA, tokenizer=run["tok"], share_prompt=share_prompt)
    task.refs = reference.refs  # the reference's log-probs, as fit_preference precomputes them
    loss, _ = task.step(batch)
    with torch.no_grad():
        chosen, rejected = task.logps(batch)
    ref_chosen, ref_rejected = task.refs["train"]

    # sums of ~12 tokens at ~−10.8 each (a random model over 49k tokens) reach −130, where float32's
    # spacing is 1.5e-5: 1e-5 plus a few ulps. A dropped EOS is ~10 off; completion positions that
    # ignore the prompts' left padding ~3e-4
    close = dict(rtol=1e-6, atol=1e-5)
    want_chosen, want_rejected, want_ref_chosen, want_ref_rejected = run["logps"]
    torch.testing.assert_close(chosen, want_chosen, **close)
    torch.testing.assert_close(rejected[:, 0], want_rejected, **close)
    torch.testing.assert_close(ref_chosen, want_ref_chosen, **close)
    torch.testing.assert_close(ref_rejected[:, 0], want_ref_rejected, **close)
    # the comparison is not vacuous: the two models disagree, so the loss is off its zero-margin log 2
    assert (chosen - ref_chosen).abs().min() > 0.01
    assert abs(run["loss"].item() - torch.log(torch.tensor(2.0)).item()) > 0.02, run["loss"]
    torch.testing.assert_close(loss.mean(), run["loss"], rtol=0, atol=1e-5)  # training_step's mean

    names = [n for n, _ in policy.named_parameters()]
    grads = torch.autograd.grad(loss.mean(), list(policy.parameters()))
    assert len(grads) == len(run["grads"])
    # each pair's weight σ(−βΔ) carries the sums' float32 rounding (~1e-5 in Δ): ~6e-6 relative, in norm
    for name, g, want in zip(names, grads, run["grads"]):
        assert want.norm() > 0 and (g - want).norm() <= 1e-4 * want.norm(), (name, g.norm(), want.norm())
