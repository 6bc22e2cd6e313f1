"""Peak RSS of one TrackRec-sized S-DPO group, in isolation: the embedded SmolLM2-135M with LoRA
r=8 on q,k,v,o (dropout 0.05), one prompt of ~440 tokens with a chosen and 3 rejected completions
of 64 tokens, one group per forward (the profile's `preference.batch_size=1`), 4 optimiser steps;
the reference pass at batch 1, then (with `--val-batch`) at the held-out evaluation's batch.
`--prompt-tokens 700 --negatives 1` is a DPO4Rec-sized pair (KAR's prompt, chosen vs rejected).

    python benchmarks/preference_memory.py --checkpoint-prompt true|false --val-batch 1
    python benchmarks/preference_memory.py --checkpoint-prompt true|false --val-batch 1 --prompt-tokens 700 --negatives 1
    python benchmarks/preference_memory.py --precision 32-true --val-batch 4

Prints RSS and peak RSS (GiB, `rlrec.runtime.memory`) after loading, after each reference pass and after
training, and the training's own increment: the peak (VmHWM, reset just before `fit` on Linux)
over the resident state before it — what the preference stage adds to a run's resident state.
Run one at a time.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="bf16-mixed", help="Lightning precision: bf16-mixed or 32-true")
    ap.add_argument("--val-batch", type=int, default=4, help="groups per forward of the second reference pass")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=440)
    ap.add_argument("--negatives", type=int, default=3, help="rejected completions per group (DPO: 1)")
    ap.add_argument(
        "--checkpoint-prompt",
        choices=("true", "false"),
        default="true",
        help="replay the prompt pass layer by layer in the backward (preference.task.checkpoint_prompt; "
        "the presets' default) or keep its activations",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import preference as pb  # the benchmark's model config and word-salad texts
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from rlrec.llm.data import PreferenceDataset
    from rlrec.llm.loading import load_model
    from rlrec.runtime import memory
    from rlrec.runtime.precision import autocast
    from rlrec.tasks.preference import PreferenceTask

    torch.set_num_threads(args.threads)

    def report(tag: str) -> None:
        print(f"{tag}: rss {memory.rss_gb():.2f} GiB, peak {memory.peak_rss_gb():.2f} GiB", flush=True)

    model, tok = load_model(pb.LLM)
    report("loaded")
    lora = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": pb.TARGETS}
    task = PreferenceTask(model, loss="sdpo", beta=0.1, lora=lora, tokenizer=tok,
                          checkpoint_prompt=args.checkpoint_prompt == "true",
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))  # fmt: skip
    rng = random.Random(0)
    groups = [{"prompt": pb.text_of(tok, args.prompt_tokens, rng) + "\nSummarise the user's preference:",
               "chosen": pb.text_of(tok, 64, rng), "rejected": [pb.text_of(tok, 64, rng) for _ in range(args.negatives)]}
              for _ in range(8)]  # fmt: skip
    ds = PreferenceDataset(groups, tok, max_prompt_len=args.prompt_tokens + 72, max_completion_len=65)
    loader = DataLoader(ds, batch_size=1, collate_fn=ds.collate)
    with autocast(args.precision):
        task.precompute_reference(loader)
    report("reference, 1 group per forward")
    if args.val_batch > 1:
        with autocast(args.precision):
            task.precompute_reference(DataLoader(ds, batch_size=args.val_batch, collate_fn=ds.collate), "val")
        report(f"reference, {args.val_batch} groups per forward")
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, precision=args.precision)  # fmt: skip
    memory.release()
    before, reset = memory.rss_gb(), memory.reset_peak()
    t0 = time.perf_counter()
    trainer.fit(task, loader)
    report(f"trained 4 steps ({time.perf_counter() - t0:.1f} s)")
    if reset:
        print(f"training increment: {memory.peak_since_reset_gb() - before:.2f} GiB "
              f"(peak {memory.peak_since_reset_gb():.2f} over {before:.2f} GiB resident before fit)")  # fmt: skip


if __name__ == "__main__":
    main()
