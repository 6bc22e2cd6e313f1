"""Greedy knowledge generation under bf16 autocast with the KV cache in bf16 (`sampling.kv_dtype=auto`)
against an fp32 cache (`float32`): time, peak RSS of the pass, and how many greedy texts differ.

    python benchmarks/kv_cache.py --prompts 150 --threads 2
    python benchmarks/kv_cache.py --prompts 150 --runs float32:2.0,auto:1.0,auto:1.75

The embedded SmolLM2-135M on real MovieLens-100K TrackRec prompts (`trackrec_cot`, chat template),
64 new tokens, the main job's batch size (128). Each run is `kv_dtype:kv_cache_gb`; the first run's
texts are the reference the others are compared with. The peak is VmHWM, reset before each pass
(`rlrec.runtime.memory.reset_peak`) after a short warm-up pass that pages the weights in; it includes what
an earlier pass left resident. Precision is bf16-mixed, so this needs a CPU with native bf16 to mean
anything. Run it alone (two busy processes on 2 cores distort both).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--runs", default="float32:2.0,auto:1.0", help="kv_dtype:kv_cache_gb, comma separated")
    ap.add_argument("--llm", default="smollm2_135m", help="conf/llm/<name>.yaml")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ctr_peer import cpu_model  # lscpu's model name and its bf16 flags
    from generation import load_llm, user_prompts  # benchmarks/generation.py: the same model and prompts

    from rlrec.llm.generation import Generator, SamplingConfig
    from rlrec.runtime import memory

    cfg, model, tok = load_llm(args.llm)
    prompts = user_prompts(args.prompts)
    print(f"cpu={cpu_model()!r} "
          f"threads={torch.get_num_threads()} prompts={len(prompts)} max_new_tokens={args.max_new_tokens} "
          f"precision=bf16-mixed batch_size=128")  # fmt: skip
    # page the weights in (a safetensors file is mapped lazily) so that each pass's peak is its own
    Generator(SamplingConfig.preset(), model, tok, progress=False, precision="bf16-mixed").greedy(prompts[:2], 4)
    reference = None
    for run in args.runs.split(","):
        kv_dtype, cap = run.split(":")
        memory.release()
        memory.reset_peak()
        before = memory.rss_gb()
        gen = Generator(
            SamplingConfig.preset(batch_size=128, kv_cache_gb=float(cap), kv_dtype=kv_dtype),
            model,
            tok,
            cfg.fingerprint,
            cache_dir=None,
            precision="bf16-mixed",
            progress=False,
        )
        t0 = time.perf_counter()
        texts = gen.greedy(prompts, args.max_new_tokens)
        secs = time.perf_counter() - t0
        s = gen.last_stats
        diff = (
            ""
            if reference is None
            else f", {sum(a != b for a, b in zip(reference, texts))} of {len(texts)} texts differ from the first run's"
        )
        reference = reference or texts
        print(f"kv_dtype={kv_dtype} kv_cache_gb={cap}: {secs:.1f} s, {s.tokens_per_s:.1f} tok/s {s.detail}, "
              f"RSS before {before:.2f} GiB, peak {memory.peak_since_reset_gb():.2f} GiB{diff}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
