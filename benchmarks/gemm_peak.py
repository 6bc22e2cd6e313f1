"""The machine's matrix-multiply peak, and the FLOPs an LLM stage does, so each LLM benchmark can say
how far a stage is from what the CPU can do (not only how far from a peer).

    python benchmarks/gemm_peak.py --threads 2          # fp32, and bf16 where the CPU has it natively

Peak: per dtype, the fastest single `torch.mm` on square n × n matrices (2·n³ FLOPs each), n in
`--sizes`, each size called for at least `--seconds` (and `--reps` times) after a warm-up: on this
virtual machine one short burst of calls reads anywhere from 0.6 to 2.2 TFLOP/s in bf16 (AMX), so the
peak is the best of a longer window. bf16 is measured where lscpu lists avx512_bf16 or amx_bf16 (elsewhere torch
emulates it, and its "peak" would be no peak). `generation.py` and `preference.py` import
`gemm_peak` and the FLOP counts below and print `fraction of peak` lines.

FLOPs are counted from the model's shapes (`llm_shapes`): a token through the decoder costs
2 × (the layers' linear weights) plus attention's 4 × layers × hidden × context (QKᵀ and AV, every
query head), and a position whose logits are computed 2 × hidden × vocab. Model FLOPs only:
recomputation (a checkpointed pass) and padding are not counted, so a stage that recomputes shows
as a lower fraction.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass

import torch


def native_bf16() -> bool:
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gemm_peak(
    dtype: torch.dtype = torch.float32, threads: int = 2, n: int = 2048, reps: int = 10, seconds: float = 0.0
) -> float:
    """FLOP/s of the fastest n×n matmul in `dtype` on `threads` threads, of at least `reps` calls and
    at least `seconds` of calls."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        for _ in range(2):
            torch.mm(a, b)
        best, calls, start = float("inf"), 0, time.perf_counter()
        while calls < reps or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            torch.mm(a, b)
            best, calls = min(best, time.perf_counter() - t0), calls + 1
        return 2 * n**3 / best
    finally:
        torch.set_num_threads(before)


SIZES = (1024, 2048, 4096)


def peaks(threads: int, sizes=SIZES, seconds: float = 3.0, reps: int = 10) -> dict[str, float]:
    """{"fp32": FLOP/s, "bf16": FLOP/s (native bf16 only)}: the best over `sizes`."""
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if native_bf16() else {})}
    return {k: max(gemm_peak(d, threads, n, reps, seconds) for n in sizes) for k, d in dtypes.items()}


@dataclass(frozen=True)
class Shapes:
    layers: int
    hidden: int
    vocab: int
    linear_params: int  # weights of the decoder layers' linear maps (q, k, v, o, gate, up, down)

    def token(self, context: float) -> float:
        """FLOPs of one token through the decoder with `context` positions to attend to."""
        return 2 * self.linear_params + 4 * self.layers * self.hidden * context

    def head(self) -> float:
        return 2 * self.hidden * self.vocab

    def prefill(self, prompt_tokens: list[int]) -> float:
        """Each prompt once (causal: a token attends to the ones before it), logits at its last position."""
        return sum(n * self.token((n + 1) / 2) + self.head() for n in prompt_tokens)

    def decode(self, new_tokens: int, context: float) -> float:
        """`new_tokens` generated tokens, each with logits, at an average `context`."""
        return new_tokens * (self.token(context) + self.head())

    def preference_pair(self, prompt: int, response: int, negatives: int = 1) -> float:
        """A preference step's model FLOPs for one group: the prompt once, 1 + negatives responses
        after it, forward + backward (≈ 2 × forward for the activation gradients a LoRA needs)."""
        forward = prompt * self.token((prompt + 1) / 2)
        forward += (1 + negatives) * response * (self.token(prompt + (response + 1) / 2) + self.head())
        return 3 * forward


def llm_shapes(model) -> Shapes:
    """The shapes of a transformers decoder (Llama-like: SmolLM2, Qwen, Mistral)."""
    cfg = model.config
    linear = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name and "lora" not in name:
            linear += module.in_features * module.out_features
    return Shapes(cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, linear)


def fraction_line(what: str, flops: float, seconds: float, peak: dict[str, float], dtype: str) -> str:
    rate = flops / seconds if seconds > 0 else float("nan")
    ref = peak.get(dtype) or peak["fp32"]
    used = dtype if dtype in peak else "fp32"
    return f"fraction of peak, {what}: {rate / 1e9:.1f} GFLOP/s = {rate / ref:.3f} of the {used} GEMM peak ({ref / 1e9:.1f} GFLOP/s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma list of matrix sizes n")
    ap.add_argument("--seconds", type=float, default=3.0, help="calls per size for at least this long")
    ap.add_argument("--reps", type=int, default=10, help="and at least this many calls per size")
    args = ap.parse_args()
    from ctr_peer import cpu_model

    sizes = [int(s) for s in args.sizes.split(",")]
    out = peaks(args.threads, sizes, args.seconds, args.reps)
    for k, v in out.items():
        print(f"GEMM peak {k}: {v / 1e9:.1f} GFLOP/s (n in {sizes}, {args.threads} threads, {cpu_model()})")
    print(json.dumps({"threads": args.threads, "sizes": sizes, **{f"{k}_flops": v for k, v in out.items()}}))


if __name__ == "__main__":
    main()
