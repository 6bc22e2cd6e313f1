"""Greedy knowledge generation under bf16 autocast: rlrec's sampler as it runs (linear weights cast
to bf16 once per pass, `rlrec.runtime.precision.cast_linear_weights`; each prefill's last-position logits
through a boolean `logits_to_keep`, `rlrec.llm.logps.last_logits`) against the same sampler with
plain autocast (every forward re-casts each linear weight) and transformers' `logits_to_keep=1`
(on torch's CPU bf16 linear, a (1, 1, H) view of the last position goes through a batched matmul
that copies the whole transposed LM head first). Same prompts, same token ids, same KV cache.

    python benchmarks/bf16_sampling.py --prompts 300 --threads 2

The embedded SmolLM2-135M on real MovieLens-100K TrackRec prompts (`trackrec_cot`, chat template),
64 new tokens, the main job's batch size (128), KV cache in bf16 (1 GiB). Prints both times, their
prefill / decode split, `ratio:` (baseline seconds ÷ rlrec's) and how many greedy texts differ.
bf16 autocast means something only on a CPU with native bf16 (avx512_bf16 / AMX): the CPU model
and its flags are printed. Run it alone (two busy processes on 2 cores distort both).
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

import torch


@contextmanager
def plain_autocast():
    """The baseline: autocast's per-forward weight casts and `logits_to_keep=1` in the sampler."""
    import rlrec.llm.generation as generation
    import rlrec.llm.sampler as sampler
    from rlrec.runtime import precision

    def slice_last(model, input_ids, **kwargs):
        out = model(input_ids=input_ids, logits_to_keep=1, **kwargs)
        return out.logits[:, -1], out

    saved = generation.cast_linear_weights, sampler.last_logits
    generation.cast_linear_weights = lambda model, p, device: precision.autocast(p, device)
    sampler.last_logits = slice_last
    try:
        yield
    finally:
        generation.cast_linear_weights, sampler.last_logits = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--llm", default="smollm2_135m", help="conf/llm/<name>.yaml")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ctr_peer import cpu_model  # lscpu's model name and its bf16 flags
    from generation import load_llm, user_prompts  # benchmarks/generation.py: the same model and prompts

    from rlrec.llm.generation import Generator, SamplingConfig

    cfg, model, tok = load_llm(args.llm)
    model.requires_grad_(False)
    prompts = user_prompts(args.prompts)
    print(f"cpu={cpu_model()!r} threads={torch.get_num_threads()} prompts={len(prompts)} "
          f"max_new_tokens={args.max_new_tokens} precision=bf16-mixed batch_size=128 kv_dtype=auto kv_cache_gb=1.0")  # fmt: skip
    Generator(SamplingConfig.preset(), model, tok, progress=False, precision="bf16-mixed").greedy(
        prompts[:2], 4
    )  # page the weights in
    runs = {}
    for name, ctx in (("baseline", plain_autocast), ("rlrec", None)):
        gen = Generator(
            SamplingConfig.preset(batch_size=128, kv_cache_gb=1.0),
            model,
            tok,
            cfg.fingerprint,
            cache_dir=None,
            precision="bf16-mixed",
            progress=False,
        )
        t0 = time.perf_counter()
        if ctx is None:
            texts = gen.greedy(prompts, args.max_new_tokens)
        else:
            with ctx():
                texts = gen.greedy(prompts, args.max_new_tokens)
        runs[name] = (time.perf_counter() - t0, texts)
        s = gen.last_stats
        print(f"{name}: {runs[name][0]:.1f} s, {s.tokens_per_s:.1f} tok/s {s.detail}", flush=True)
    (t_base, base), (t_rlrec, texts) = runs["baseline"], runs["rlrec"]
    print(f"texts differing: {sum(a != b for a, b in zip(base, texts))} of {len(texts)}")
    print(f"ratio: {t_base / t_rlrec:.2f}")


if __name__ == "__main__":
    main()
