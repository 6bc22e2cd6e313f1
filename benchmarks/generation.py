"""Sampling throughput: HF `generate` once per prompt (the baseline) vs `Generator.sample`.

    python benchmarks/generation.py --threads 2                 # 4 samples x 32 prompts x 96 tokens
    python benchmarks/generation.py --prompts 8 --baseline-prompts 2 --max-new-tokens 32   # quick

Both sides sample with the same temperature/top_p/max_new_tokens from real MovieLens-100K user
prompts (`trackrec_cot`, chat template applied) on the embedded SmolLM2-135M, one after the other
(never concurrently: two busy processes on 2 cores distort both). Tokens are counted up to and
including the stop token; time includes prefill. The baseline runs on a spread subset of the
prompts (every k-th) since its tok/s is stable after a few generations.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def user_prompts(n: int) -> list[str]:
    from rlrec.data.features import prepare
    from rlrec.data.movielens import load_movielens100k
    from rlrec.data.prompts import PromptView
    from rlrec.data.splits import SplitConfig

    prep = prepare(load_movielens100k(), 4, SplitConfig())
    return list(PromptView(prep).user_prompts("trackrec_cot", users=range(1, n + 1)).values())


@torch.inference_mode()
def baseline(
    model, tok, texts: list[str], temperature: float, top_p: float, max_new: int
) -> tuple[int, float]:
    """One `generate` call per prompt, num_return_sequences=1, batch 1 (no padding)."""
    stop = model.generation_config.eos_token_id
    stop = {stop} if isinstance(stop, int) else set(stop)
    tokens, t0 = 0, time.perf_counter()
    for i, text in enumerate(texts):
        torch.manual_seed(i)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(
            **ids,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,  # transformers otherwise adds top_k=50: sample the same distribution as ours
            max_new_tokens=max_new,
            num_return_sequences=1,
            pad_token_id=tok.pad_token_id,
        )
        gen = out[0, ids.input_ids.shape[1] :].tolist()
        cut = next((j for j, t in enumerate(gen) if t in stop), None)
        tokens += len(gen) if cut is None else cut + 1
    return tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--baseline-prompts", type=int, default=8, help="generations for the baseline estimate")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--engine", default="auto", choices=["auto", "prefix", "generate"])
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--llm", default="smollm2_135m", help="conf/llm/<name>.yaml")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from omegaconf import OmegaConf

    from rlrec.llm.chat import format_chat
    from rlrec.llm.generation import Generator
    from rlrec.llm.loading import LLMConfig, load_model

    raw = OmegaConf.load(f"conf/llm/{args.llm}.yaml")
    raw.cache_dir = os.path.join(os.environ.get("RLREC_CACHE", ".cache/rlrec"), "models")
    raw.seed = 0
    cfg = LLMConfig(**{k: v for k, v in OmegaConf.to_container(raw, resolve=True).items() if k != "_target_"})
    model, tok = load_model(cfg)
    prompts = user_prompts(args.prompts)
    print(f"model={cfg.name} threads={torch.get_num_threads()} prompts={len(prompts)} samples={args.samples} "
          f"max_new_tokens={args.max_new_tokens} temperature={args.temperature} top_p={args.top_p}")  # fmt: skip

    base_tps = None
    if not args.skip_baseline:
        step = max(1, len(prompts) // args.baseline_prompts)
        subset = [format_chat(tok, p) for p in prompts[::step][: args.baseline_prompts]]
        n_tok, secs = baseline(model, tok, subset, args.temperature, args.top_p, args.max_new_tokens)
        base_tps = n_tok / secs
        print(f"baseline (HF generate per prompt, {len(subset)} generations): {n_tok} tokens in {secs:.1f}s "
              f"= {base_tps:.1f} tok/s")  # fmt: skip

    gen = Generator(
        model, tok, cfg.fingerprint, cache_dir=None, batch_size=args.batch_size, engine=args.engine
    )
    gen.sample(prompts, args.samples, args.temperature, args.top_p, args.max_new_tokens, seed=0)
    s = gen.last_stats
    print(f"ours (Generator.sample, engine={args.engine}, batch_size={args.batch_size}, {s.generated} samples): "
          f"{s.new_tokens} tokens in {s.seconds:.1f}s = {s.tokens_per_s:.1f} tok/s {s.detail}")  # fmt: skip
    if base_tps:
        print(f"ratio: {s.tokens_per_s / base_tps:.2f}  (threads={torch.get_num_threads()})")


if __name__ == "__main__":
    main()
