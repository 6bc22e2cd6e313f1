"""What a run prints. The entry points (`rlrec.train`, `rlrec.outputs.export`, `rlrec.data`, the `rlrec`
command) call `quiet_libraries()`: library noise a user would have to learn to ignore (faiss's
loader lines, deprecation warnings raised inside transformers / torch / Lightning, Lightning's tips
and device banners, weight-loading bars) stays off the console. The library code itself filters
nothing, so a program importing rlrec keeps its own warning settings.

`bar(total, desc, unit)` is the one progress bar: tqdm on a terminal, and where stderr is not a
terminal (SLURM logs, CI, `nohup`, `| tee`) log lines: one at least every `EVERY` seconds while the
work runs (count, time, rate, time left) and one when it ends. A Lightning fit (a preference or SFT
round, a feedback model) gets the same from `FitLines` (`rlrec/runtime/launch.py`, in every Trainer
when stderr is not a terminal). `RLREC_PROGRESS=1` / `0` forces either.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

log = logging.getLogger("rlrec")

_QUIET = False  # quiet_libraries() ran in this process
EVERY = float(os.environ.get("RLREC_PROGRESS_SECONDS", 60))  # a log file's progress line at least this often
_LIBRARIES = r"(transformers|torch|pytorch_lightning|lightning_fabric|lightning|peft|trl|accelerate|faiss|hydra)(\.|$)"


def quiet_libraries() -> None:
    """Silence the noise of libraries (not rlrec's own warnings or errors) for this process and the
    workers it starts (`RLREC_QUIET=1` tells `executor.call` to do the same there); where stderr is
    a log, libraries' own tqdm bars are off too (`TQDM_DISABLE`)."""
    global _QUIET
    if _QUIET:  # once per process (executor.call runs it before every job of a worker)
        return
    _QUIET = True
    os.environ["RLREC_QUIET"] = "1"
    if not interactive():
        os.environ.setdefault("TQDM_DISABLE", "1")
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
    # Lightning formats its warnings itself; its deprecations are DeprecationWarning subclasses
    warnings.filterwarnings("ignore", message=r".*(is deprecated|will be removed)", module=_LIBRARIES)
    warnings.filterwarnings("ignore", message=r".*`?past_key_values`? is deprecated")
    # Lightning's advice on tiny fits (a feedback shard of a few batches logs less often than it steps)
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
    quiet_loggers()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # "[transformers] ... deprecated" lines
        hf_logging.disable_progress_bar()  # "Loading weights: 100%|…" per model load
    except ImportError:
        pass


def quiet_loggers() -> None:
    """Library loggers at WARNING. Lightning sets its loggers to INFO when it is imported, so an
    entry point that imports it after `quiet_libraries` calls this again."""
    for name in ("faiss", "faiss.loader", "pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)


def interactive() -> bool:
    forced = os.environ.get("RLREC_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str = "it", *, leave: bool = True):
    """A progress bar over `total` units of work: tqdm on a terminal, else one line at `close()`."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)
    return LineBar(total, desc, unit)


class LineBar:
    """tqdm's interface (update, set_postfix_str, close, context manager) for logs: one line at the
    end, `desc: n/total unit in 12.3s (4.5 unit/s) postfix`."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float | None = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n, self.postfix, self.t0, self.closed = 0, "", time.perf_counter(), False
        self.every, self.last = EVERY if every is None else every, self.t0

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.perf_counter()
        if now - self.last >= self.every and self.n < self.total:  # long work: a line at least every `every` s
            self.last = now
            seconds = now - self.t0
            left = seconds / self.n * (self.total - self.n) if self.n else float("nan")
            log.info("%s, ~%.0fs left", self.line(seconds), left)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.closed or self.total == 0:
            return
        self.closed = True
        log.info("%s", self.line(time.perf_counter() - self.t0))

    def line(self, seconds: float) -> str:
        """
        >>> bar = LineBar(300, "generate[hf]", "prompt"); bar.update(300); bar.line(150.0)
        'generate[hf]: 300/300 prompt in 150.0s, 2.0 prompt/s'
        >>> bar = LineBar(1, "align", "round"); bar.update(1); bar.line(900.0)
        'align: 1/1 round in 900.0s, 900.0 s/round'
        """
        rate = ""
        if seconds > 0 and self.n:
            per_s = self.n / seconds
            rate = f", {per_s:.1f} {self.unit}/s" if per_s >= 1 else f", {seconds / self.n:.1f} s/{self.unit}"
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit} in {seconds:.1f}s{rate}{post}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
