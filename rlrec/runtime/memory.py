"""Process memory, as a user reads it in `top` or `/usr/bin/time -v`: the resident set (RSS) now,
its peak so far, and the peak of finished child processes (executor workers, torchrun ranks).

Every stage logs the RSS it ended at and the peak so far (`Store.stage`); a run prints its peak at
the end and writes it to `results.json` (`memory`). `release()` hands freed heap pages back to the
OS: glibc keeps the pages of large freed buffers (a KV cache, a fit's activations) mapped, so
the RSS of a long run ratchets up stage after stage without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import sys

_GB = 2**30


def rss_gb() -> float:
    """Resident set size of this process now, in GiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _GB
    except OSError:  # not Linux
        import psutil

        return psutil.Process().memory_info().rss / _GB


def _maxrss_gb(who: int) -> float:
    kb = resource.getrusage(who).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (_GB if sys.platform == "darwin" else 2**20)


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GiB (what `/usr/bin/time -v` reports)."""
    return _maxrss_gb(resource.RUSAGE_SELF)


def children_peak_rss_gb() -> float:
    """The largest peak RSS among finished child processes (workers, ranks), in GiB."""
    return _maxrss_gb(resource.RUSAGE_CHILDREN)


def summary() -> dict:
    """`{"peak_rss_gb", "children_peak_rss_gb", "rss_gb"}`, rounded to 0.01 GiB, for results.json."""
    return {
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "children_peak_rss_gb": round(children_peak_rss_gb(), 2),
        "rss_gb": round(rss_gb(), 2),
    }


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM, via /proc/self/clear_refs) so that
    `peak_since_reset_gb` measures one stretch of work; False where it cannot (then the peak is the
    process's). getrusage reads the same high-water mark, so `peak_rss_gb` restarts too: for
    benchmarks, never inside a run whose peak is reported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_since_reset_gb() -> float:
    """Peak RSS since `reset_peak` (VmHWM), in GiB; the process's peak where there is no VmHWM."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return peak_rss_gb()


_LIBC = None
_SETTLED = False


def settle_imports() -> None:
    """Move what the process holds now (the imported libraries' ~600K objects: modules, classes,
    functions) out of the cyclic collector's reach, once per process (`gc.freeze`): every later
    `gc.collect` scans only what the run creates (0.8 s → milliseconds per collection with torch,
    transformers and Lightning loaded). Frozen objects are still freed by reference counting."""
    global _SETTLED
    if not _SETTLED:
        gc.collect()
        gc.freeze()
        _SETTLED = True


def release() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc `malloc_trim`; a no-op
    elsewhere). Cheap (milliseconds once `settle_imports` ran): called between stages and after big
    buffers are dropped."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name and sys.platform.startswith("linux") else False
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
