"""`trainer.precision=auto`: bf16 autocast where this machine runs a workload faster under bf16 than
in fp32, fp32 elsewhere — decided by measurement, once per machine kind.

CPUs of one cloud machine type differ: some have native bf16 (avx512_bf16, AMX) and run bf16
matmuls faster than fp32; others emulate bf16 and run it several times slower. `probe()` times
rlrec's two workloads in fp32 and under bf16 autocast:

- `llm`: the policy's linear layers (decode batch × hidden → MLP width): sampling, preference
  training (DPO / S-DPO), SFT and an LLM validator;
- `ctr`: one training step (forward and backward) of DIN's shape, the default backbone and the
  validator: a Dice-activated attention unit over 1024 × 20 behaviour rows and a ReLU MLP over the
  batch — the table's fits, the feedback models and the re-rankers. A step, not its matmuls: the
  fp32 path runs rlrec's fused/compiled CPU kernels (`rlrec.layers`), which under autocast step
  aside for their plain forms, and DIN's step is mostly elementwise work; on a CPU whose bf16
  matmuls are 3× faster the whole step can still be slower under bf16.

The result is cached per machine kind (CPU model, its bf16 flags, torch version, thread count, probe
version, whether rlrec's kernels compile) in
`~/.cache/rlrec/precision/<kind>.json` (`$XDG_CACHE_HOME`, or `$RLREC_PRECISION_CACHE` for the
folder), so the probe runs once per machine (~6 s, plus the kernels' first compilation) whatever
run or cache_dir asks.
`resolve("auto", workload)` gives Lightning's precision string for that workload: `bf16-mixed`
when bf16 was ≥ `MIN_SPEEDUP`× faster, else `32-true`. On a CUDA GPU, `auto` is `bf16-mixed` where the GPU supports bf16. An
explicit precision is used as given, under its one name (`normalise`: `32` is `32-true`, `bf16` is
`bf16-mixed`). `$RLREC_PRECISION_AUTO` pins what `auto` gives on a CPU without probing (`pinned`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from rlrec.layers import compiled
from rlrec.runtime.cache import atomic_write_json, fingerprint

log = logging.getLogger("rlrec")

WORKLOADS = ("llm", "ctr")
MIN_SPEEDUP = 1.15  # bf16 must win clearly: autocast adds casts the matmul timing does not show
# (batch, in, out) of the matmuls each workload spends its time in
SHAPES = {"llm": [(128, 576, 1536), (128, 1536, 576), (512, 576, 576)]}
# DIN's training step: attention-unit rows (batch × behaviours), their width (4 × 3 item fields × 16,
# split as rlrec does: 2 × 48), the unit's hidden width (Dice), batch, MLP input and widths
CTR_STEP = {"rows": 20480, "d_in": 96, "hidden": 64, "batch": 1024, "mlp_in": 256, "mlp_dims": (256, 128)}
PROBE_VERSION = 2  # 2: the ctr workload is a training step (1: its matmuls)
BF16 = "bf16-mixed"
FP32 = "32-true"


def cpu_identity() -> dict:
    """What decides bf16 speed on this CPU: model name and its bf16 / AMX flags, torch, threads, and
    what the probe runs (its version, whether rlrec's kernels compile)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    return {
        "cpu": model,
        "bf16_flags": wanted,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "probe": PROBE_VERSION,
        # the fp32 CTR step runs compiled kernels or their eager forms (RLREC_COMPILE): other timings
        "compiled_kernels": compiled.enabled(),
    }


def _time(fn, repeats: int = 5) -> float:
    fn()  # warm-up (oneDNN picks its kernel on the first call)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(shapes=SHAPES, repeats: int = 5, ctr_step: dict | None = CTR_STEP) -> dict:
    """{workload: {"fp32_ms", "bf16_ms", "speedup"}}, best of `repeats`, in fp32 and under CPU bf16
    autocast (weights stay fp32, as in autocast training): each of `shapes`' workloads times its
    matmuls (forward); `ctr` times `ctr_step`'s training step (`_ctr_step`)."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for workload, dims in shapes.items():
        mats = [(torch.randn(b, i, generator=gen), torch.randn(o, i, generator=gen)) for b, i, o in dims]

        @torch.inference_mode()
        def run(mats=mats):
            for x, w in mats:
                torch.nn.functional.linear(x, w)

        out[workload] = _compare(run, repeats)
    if ctr_step is not None:  # a training step, whatever grad mode the caller is in
        with torch.inference_mode(False), torch.enable_grad():
            out["ctr"] = _compare(_ctr_step(gen, **ctr_step), repeats)
    return out


def _compare(run, repeats: int) -> dict:
    def run_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            run()

    fp32, bf16 = _time(run, repeats), _time(run_bf16, repeats)
    return {
        "fp32_ms": float(f"{fp32 * 1e3:.4g}"),
        "bf16_ms": float(f"{bf16 * 1e3:.4g}"),
        "speedup": float(f"{fp32 / bf16:.4g}"),
    }


def _ctr_step(gen, rows: int, d_in: int, hidden: int, batch: int, mlp_in: int, mlp_dims):
    """A training step of DIN's shape with rlrec's own layers: Dice attention unit on (rows, d_in)
    and a ReLU MLP on (batch, mlp_in), forward (under the caller's autocast, if any) and backward."""
    from rlrec.layers.mlp import MLP

    torch.manual_seed(0)
    unit, top = MLP(d_in, (hidden,), 1, activation_fn="dice"), MLP(mlp_in, tuple(mlp_dims), 1)
    x, z = torch.randn(rows, d_in, generator=gen), torch.randn(batch, mlp_in, generator=gen)
    params = [*unit.parameters(), *top.parameters()]

    def step():
        loss = unit(x).float().mean() + top(z).float().mean()
        with torch.autocast("cpu", enabled=False):
            loss.backward()
        for p in params:
            p.grad = None

    return step


def machine_cache() -> Path:
    """Where probes are kept: `$RLREC_PRECISION_CACHE`, else `$XDG_CACHE_HOME/rlrec`, else
    `~/.cache/rlrec`."""
    if os.environ.get("RLREC_PRECISION_CACHE"):
        return Path(os.environ["RLREC_PRECISION_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlrec"


def probe(cache_dir: str | Path | None = None) -> dict:
    """This machine kind's measurement (see `measure`), read from `<cache_dir>/precision/`
    (default `machine_cache()`) when it was measured there already; measured and written otherwise."""
    ident = cpu_identity()
    path = Path(cache_dir or machine_cache()) / "precision" / f"{fingerprint(ident)}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # unreadable: measure again and replace it
    result = {**ident, "min_speedup": MIN_SPEEDUP, "workloads": measure()}
    log.info(
        "precision=auto: bf16 vs fp32 on %s (%s): %s",
        ident["cpu"],
        ", ".join(ident["bf16_flags"]) or "no bf16 flags",
        ", ".join(f"{w} {v['speedup']:.2f}x" for w, v in result["workloads"].items()),
    )
    try:
        atomic_write_json(path, result)
    except OSError as e:  # a read-only home: measure again next time
        log.warning("precision=auto: could not cache the probe in %s (%s)", path, e)
    return result


# Lightning's spellings of one precision (32, "32", "32-true" are one computation): every value is
# normalised before it enters a stage key, a log or a result, so one computation has one key
CANONICAL = {
    "32": FP32,
    "32-true": FP32,
    "bf16": BF16,
    "bf16-mixed": BF16,
    "bf16-true": "bf16-true",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "16-true": "16-true",
    "64": "64-true",
    "64-true": "64-true",
}
PINNED = "RLREC_PRECISION_AUTO"  # what `auto` resolves to without probing: one precision, or per workload


def normalise(precision) -> str:
    """The one name of a Lightning precision (`auto` stays `auto`).

    >>> normalise(32), normalise("32"), normalise("bf16"), normalise("bf16-mixed"), normalise(16)
    ('32-true', '32-true', 'bf16-mixed', 'bf16-mixed', '16-mixed')
    """
    name = str(precision).strip()
    if name == "auto":
        return name
    if name not in CANONICAL:
        raise ValueError(f"trainer.precision={name!r}: expected auto or one of {', '.join(CANONICAL)}")
    return CANONICAL[name]


def pinned(workload: str) -> str | None:
    """`auto`'s answer for `workload` when `$RLREC_PRECISION_AUTO` fixes it: `32-true`, `bf16-mixed`,
    or per workload `llm=bf16-mixed,ctr=32-true` (a workload it does not name is probed). Pins a
    fleet of mixed CPUs to one choice, and the test suite to each outcome in turn."""
    value = os.environ.get(PINNED, "").strip()
    if not value:
        return None
    if "=" not in value:
        return normalise(value)
    pairs = dict(part.split("=", 1) for part in value.split(",") if part.strip())
    unknown = set(pairs) - set(WORKLOADS)
    if unknown:
        raise ValueError(f"${PINNED}={value!r}: unknown workload(s) {sorted(unknown)}; expected {WORKLOADS}")
    return normalise(pairs[workload]) if workload in pairs else None


def resolve(precision, workload: str = "llm", accelerator: str = "cpu", cache_dir=None) -> str:
    """Lightning's precision string for `workload` (`llm` | `ctr`), normalised (`normalise`): `auto`
    decided as the module docstring says (or as `$RLREC_PRECISION_AUTO` pins it on a CPU)."""
    if str(precision) != "auto":
        return normalise(precision)
    if workload not in WORKLOADS:
        raise ValueError(f"precision workload {workload!r}: one of {WORKLOADS}")
    if str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return BF16 if torch.cuda.is_bf16_supported() else "16-mixed"
    if str(accelerator) not in ("cpu", "auto"):
        return FP32  # mps and others: fp32, the safe default
    if (fixed := pinned(workload)) is not None:
        return fixed
    speed = probe(cache_dir)["workloads"][workload]["speedup"]
    return BF16 if speed >= MIN_SPEEDUP else FP32


def is_bf16(precision: str) -> bool:
    return str(precision).startswith("bf16")


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The autocast context of a resolved precision for code outside Lightning (the sampler):
    bf16 autocast for `bf16-*`, fp16 for `16-mixed` on CUDA, nothing for fp32 / `*-true`."""
    device_type = torch.device(device).type
    if is_bf16(precision) and not str(precision).endswith("-true"):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if str(precision) in ("16-mixed", "16") and device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cast_linear_weights(model: torch.nn.Module, precision: str, device: torch.device | str = "cpu"):
    """Inference under `autocast(precision)` with every `nn.Linear`'s weight and bias cast to the
    autocast dtype once for the block, instead of on every forward: autocast caches the casts of
    leaf parameters only while grad mode is on and they require grad, so an inference pass (a
    sampler's prefill and every decode step) re-casts each linear weight on each call. 48 greedy
    TrackRec prompts on SmolLM2-135M (2 threads, AMX): prefill 16.0 → 13.4 s, decode 12.9 → 9.9 s,
    the same texts. Numerics are autocast's: the same fp32 → bf16 rounding, done once. The original
    Parameters (fp32, LoRA-merged or not) are put back on exit, untouched; tied weights share one
    cast. The copies cost the model's linear weights in the low dtype (0.27 GB for SmolLM2-135M in
    bf16). Without a low-precision autocast the block changes nothing."""
    with autocast(precision, device), low_precision_weights(model, autocast_dtype(precision, device)):
        yield


def autocast_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    """The dtype `autocast(precision, device)` computes matmuls in; None when it is no autocast."""
    ctx = autocast(precision, device)
    return ctx.fast_dtype if isinstance(ctx, torch.autocast) else None


@contextlib.contextmanager
def low_precision_weights(model: torch.nn.Module, dtype: torch.dtype | None, frozen_only: bool = False):
    """Within the block each fp32 `nn.Linear` weight and bias of `model` (with `frozen_only`: those
    that do not require grad — a LoRA fit's base weights) is replaced by a copy in `dtype` (no
    grad); the original Parameters come back on exit. For code under an autocast to `dtype`, which
    would cast them on every forward anyway: the block's outputs and gradients are autocast's. A
    training step under bf16 autocast saves its weight casts for the backward, so the copies replace
    memory the step held already. `dtype=None`: nothing changes."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    casts: dict[int, torch.nn.Parameter] = {}
    try:
        for m in model.modules() if dtype is not None else ():
            if not isinstance(m, torch.nn.Linear):
                continue
            for name in ("weight", "bias"):
                p = getattr(m, name)
                if p is None or p.dtype != torch.float32 or (frozen_only and p.requires_grad):
                    continue
                if id(p) not in casts:
                    casts[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
                swapped.append((m, name, p))
                setattr(m, name, casts[id(p)])
        yield
    finally:
        for m, name, p in reversed(swapped):
            setattr(m, name, p)


def full_precision(device: torch.device | str = "cpu"):
    """Autocast off inside a `bf16-mixed` step: for evaluation forwards whose outputs are ranked or
    thresholded against each other (CTR probabilities for AUC, a list's candidate scores). A bf16
    score has 8 significant bits: probabilities near 0.6 collapse onto steps of 0.004 and a list's
    close scores tie, and ties fall back to the given order. Training keeps bf16; the weights are
    fp32 in either case."""
    return torch.autocast(torch.device(device).type, enabled=False)
