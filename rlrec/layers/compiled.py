"""Elementwise kernels compiled by TorchInductor where it can, eager torch where it cannot.

A few layers (Dice's batch-statistics activation, for one) are chains of elementwise ops and column
reductions over tensors larger than the CPU's cache: eager torch makes a full pass over memory per
op, ~40 passes for Dice's forward and backward. `kernel(fn)` compiles such a pure function with
`torch.compile` on its first call, so each chain becomes one or two fused loops
(TorchInductor writes C++ with vectorised exp/sigmoid and builds it with the system's C++ compiler;
its cache makes later processes start in seconds). Where compilation is unavailable or fails (no C++
compiler, an unsupported platform) or is switched off (`RLREC_COMPILE=0`), the same function runs
eagerly, with the same values; a warning says so once.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

_state = {"enabled": os.environ.get("RLREC_COMPILE", "1").lower() not in ("0", "false", "no", "off")}


def enabled() -> bool:
    """Whether `kernel` functions try to compile (`RLREC_COMPILE=0` or `set_enabled(False)`: never)."""
    return _state["enabled"]


def set_enabled(on: bool) -> None:
    _state["enabled"] = bool(on)


def kernel(fn: Callable | None = None, *, eager: Callable | None = None, dynamic: bool = True) -> Callable:
    """`fn` (pure tensor function) compiled on first use; if compiling is off or fails, `eager` (a
    function with the same values written for eager torch, e.g. in-place loops instead of broadcast
    temporaries) or else `fn` itself. Use as `@kernel` or `@kernel(eager=...)`. `wrapper.eager` is
    the function that runs uncompiled, for tests. `dynamic=False` compiles per input shape (for
    kernels whose loop bounds are small model dimensions, which inductor unrolls and vectorises
    only when they are constants; a training run sees two shapes, the full and the last batch)."""
    if fn is None:
        return functools.partial(kernel, eager=eager, dynamic=dynamic)
    plain = eager or fn
    compiled: dict[str, Callable | None] = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _state["enabled"] or torch.compiler.is_compiling():
            return plain(*args, **kwargs)
        if "fn" not in compiled:
            _configure()
            compiled["fn"] = torch.compile(fn, dynamic=dynamic)
        c = compiled["fn"]
        if c is None:
            return plain(*args, **kwargs)
        try:
            return c(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 — any compiler failure falls back to the same function
            compiled["fn"] = None
            warnings.warn(
                f"rlrec: compiling {fn.__qualname__} failed ({type(err).__name__}: {str(err)[:200]}); "
                "running it eagerly (same values, slower). Set RLREC_COMPILE=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            return plain(*args, **kwargs)

    wrapper.eager = plain  # type: ignore[attr-defined]
    return wrapper


@functools.cache
def _configure() -> None:
    """Compile in this process (no worker pool: the machines this runs on often have 2 cores, and a
    pool of compile workers outlives the work)."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1
    except Exception:  # noqa: BLE001 — an older/newer inductor without the knob compiles as it likes
        log.debug("inductor compile_threads not set", exc_info=True)
