"""Content-addressed artifacts: `store.stage(name, deps, build) -> Artifact`.

An artifact lives in `root/<name>/<key>/`, where `key` hashes `deps`: whatever the stage's output
depends on, by content (the texts it scores, the rendered prompts, the weight files' identity,
the data's content hash, the resolved config), and the version of rlrec's code (`code_version`). `build(work_dir) -> dict` writes its files into a
private `.partial` folder and returns a JSON-able summary; the folder is renamed into place only
when `build` returns, so a killed run never leaves an artifact that looks complete.

Two processes that need the same artifact at once (a parallel sweep over backbones) build it
once: a lock file per key (`fcntl.flock`, released by the OS if the holder dies) makes the second
one wait, and it then finds the published artifact.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlrec.runtime import memory
from rlrec.runtime.cache import atomic_write_json, code_version, file_lock, fingerprint, read_json

log = logging.getLogger("rlrec")


@dataclass
class Artifact:
    """A published stage output: its folder, the summary `build` returned, and whether it was
    reused (`cached`) or built now (then `seconds` is the build time)."""

    name: str
    key: str
    dir: Path
    data: dict
    cached: bool
    seconds: float = 0.0

    def path(self, relative: str) -> Path:
        return self.dir / relative


@dataclass
class Store:
    """`root`: the cache folder shared by runs. `reuse=False` (`use_cache=false`) rebuilds every
    stage this store is asked for, replacing what was there. `events` records every stage of
    this run (name, key, cached, seconds) for `results.json`."""

    root: Path
    reuse: bool = True
    events: list[dict] = field(default_factory=list)
    _seen: set = field(default_factory=set)

    def __post_init__(self):
        self.root = Path(self.root)

    def stage(self, name: str, deps: Any, build: Callable[[Path], dict], quiet: bool = False) -> Artifact:
        """The artifact of `name` for `deps`: reused when published, else built now. One log line when a
        build starts and one when the stage ends (built, with its time, or cached); `quiet` (the many
        shards of one `executor.stages` call, which logs them together) logs at DEBUG."""
        key = self.key(deps)
        level = logging.DEBUG if quiet else logging.INFO
        final = self.root / name / key
        t0 = time.perf_counter()
        # within one run, `reuse=False` rebuilds a stage once, then reuses what it rebuilt
        reuse = self.reuse or (name, key) in self._seen
        with file_lock(final):  # waits while another process builds this very artifact
            if reuse and (final / "result.json").exists():
                art = Artifact(name, key, final, read_json(final / "result.json"), cached=True)
            else:
                log.log(level, "stage %s: building (%s)", name, key)
                work = final.with_name(key + ".partial")
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                data = build(work)
                if not isinstance(data, dict):
                    raise TypeError(f"stage {name}: build() must return a dict, got {type(data).__name__}")
                atomic_write_json(work / "result.json", data)
                atomic_write_json(work / "deps.json", deps)
                if final.exists():
                    shutil.rmtree(final)
                work.rename(final)
                art = Artifact(name, key, final, data, cached=False, seconds=time.perf_counter() - t0)
        self._seen.add((name, key))
        if not art.cached:
            memory.release()  # the build's buffers are gone: give their pages back before the next stage
        rss, peak = memory.rss_gb(), memory.peak_rss_gb()
        log.log(
            level,
            "stage %s: %s, RSS %.2f GB (peak %.2f) (%s)",
            name,
            "cached" if art.cached else f"built in {art.seconds:.1f}s",
            rss,
            peak,
            final,
        )
        self.events.append(
            {
                "stage": name,
                "key": key,
                "cached": art.cached,
                "seconds": round(art.seconds, 2),
                "rss_gb": round(rss, 2),
                "peak_rss_gb": round(peak, 2),
                "dir": str(final),
            }
        )
        return art

    @staticmethod
    def key(deps: Any) -> str:
        """A stage's key: its `deps` and the version of the code that computes it (`code_version`)."""
        return fingerprint(deps, code_version())

    def ready(self, name: str, deps: Any) -> bool:
        """True when `stage(name, deps, …)` would reuse a published artifact (nothing to build)."""
        key = self.key(deps)
        reuse = self.reuse or (name, key) in self._seen
        return reuse and (self.root / name / key / "result.json").exists()

    def fork(self) -> Store:
        """A copy for a job that builds stages elsewhere (`rlrec.runtime.executor`): the same folder and
        reuse rule, its own `events`, which `join` brings back."""
        return Store(self.root, self.reuse, [], set(self._seen))

    def join(self, events: list[dict]) -> None:
        for e in events:
            self.events.append(e)
            self._seen.add((e["stage"], e["key"]))
