"""A real `kill -9` of a run while it writes the generation cache: the same command then resumes from
what the killed run published, and its results equal an uninterrupted run's."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from rlrec.runtime.cache import sqlite_journal
from rlrec.runtime.store import Store
from rlrec.train import run
from tests.smoke.test_train import ENV, _paper_cfg

OVERRIDES = (
    "trainer.enable_progress_bar=false",
    "gold=none",  # the same on both sides (in-process `_paper_cfg` turns it off by default)
    # 4 samples decoded together: a generation commits its texts a few rows at a time, so the kill
    # lands between two commits of one generation (the default 128 commits a smoke probe at once)
    "sampling.batch_size=4",
)


def _start(tmp_path: Path, name: str) -> subprocess.Popen:
    """The command `_paper_cfg(…, "trackrec_movielens", *OVERRIDES)` composes in-process, on the cache
    `tmp_path/killed/cache`, run dir `tmp_path/name`, in a process group of its own; output in `name.log`."""
    cmd = [
        sys.executable, "-m", "rlrec.train", "+experiment=trackrec_movielens", "dataset=synthetic", "profile=smoke",
        "threads=1", "llm=tiny_random", "sampling.max_new_tokens=12", *OVERRIDES,
        f"cache_dir={tmp_path}/killed/cache", f"hydra.run.dir={tmp_path}/{name}",
    ]  # fmt: skip
    with open(tmp_path / f"{name}.log", "w") as out:
        return subprocess.Popen(
            cmd, cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _db(cache: Path) -> Path:
    return cache / "generations" / "generations.sqlite"


def _count(db: Path) -> int:
    """Committed rows of a generation cache another process is writing (0 before it has any)."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
            return conn.execute("SELECT COUNT(*) FROM gen").fetchone()[0]
    except sqlite3.OperationalError:  # the file is there, its table not yet
        return 0


def _rows(db: Path) -> dict[str, tuple]:
    """key → (text, n_tokens, finish, created) of every committed row."""
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", db
        return {k: tuple(v) for k, *v in conn.execute("SELECT key, text, n_tokens, finish, created FROM gen")}


def _published(cache: Path, pattern: str = "**/result.json") -> dict[str, Path]:
    """`stage/key` → folder of every published artifact (a `.partial` folder is not one)."""
    found = (p.parent for p in cache.glob(pattern))
    return {str(f.relative_to(cache)): f for f in found if not f.name.endswith(".partial")}


def _files(folder: Path) -> dict[str, object]:
    """Every file's bytes; peft's adapter_config.json parsed, with its `target_modules` sorted (a set,
    written in the order of the process's string hashes, which PYTHONHASHSEED varies)."""
    out: dict[str, object] = {}
    for p in sorted(f for f in folder.rglob("*") if f.is_file()):
        out[str(p.relative_to(folder))] = p.read_bytes()
        if p.name == "adapter_config.json":
            cfg = json.loads(p.read_text())
            out[str(p.relative_to(folder))] = {**cfg, "target_modules": sorted(cfg["target_modules"])}
    return out


def _kill_while_generating(tmp_path: Path) -> None:
    """Run the command; once the `align` stage is published, SIGKILL its whole process group right after
    the next commit to the generation cache (the aligned policy's held-out samples or its probe, each
    written in several commits; the downstream fits come after them)."""
    cache = tmp_path / "killed" / "cache"
    proc, before = _start(tmp_path, "killed"), None
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if before is None:
                if _published(cache, "align/*/result.json"):
                    before = _count(_db(cache))
            elif _count(_db(cache)) > before:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a timeout: never leave the run behind
        proc.wait()
    tail = (tmp_path / "killed.log").read_text()[-3000:]
    assert proc.returncode != 0, (
        "the run finished before the kill: the signal (a generation-cache commit after `align` was "
        f"published) came too late, or never came; its log ends:\n{tail}"
    )
    assert proc.returncode == -signal.SIGKILL, f"the run failed by itself (exit {proc.returncode}):\n{tail}"
    for _ in range(100):  # the group's other processes die with it
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"process group {proc.pid} survived SIGKILL")


def test_sigkill_mid_generation_then_the_same_command_resumes_to_the_same_results(tmp_path):
    killed, reference = tmp_path / "killed" / "cache", tmp_path / "reference"
    _kill_while_generating(tmp_path)
    at_kill = _published(killed)
    # the killed writer's database as it left it (WAL not checkpointed), read from a copy: opening the
    # original here would recover it before the resumed run has to
    db = _db(killed)
    if sqlite_journal() == "wal":
        assert db.with_name(db.name + "-wal").exists(), "the kill left no WAL: the cache was closed cleanly"
    (tmp_path / "at_kill").mkdir()
    for f in db.parent.glob(db.name + "*"):
        shutil.copy(f, tmp_path / "at_kill" / f.name)
    rows_at_kill = _rows(tmp_path / "at_kill" / db.name)

    # the same command again (same cache, new run dir), while an uninterrupted run (own cache) runs here
    resume = _start(tmp_path, "resumed")
    try:
        run(_paper_cfg(reference, "trackrec_movielens", *OVERRIDES), reference / "run")
        assert resume.wait(timeout=600) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    finally:
        if resume.poll() is None:
            os.killpg(resume.pid, signal.SIGKILL)
            resume.wait()
    ref = json.loads((reference / "run" / "results.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())
    ref_rows = _rows(_db(reference / "cache"))
    # stage keys hold the version of rlrec's code: another edit to it while this runs changes them
    changed = "the runs' stage keys differ: did rlrec's code change while the test ran?"
    assert set(at_kill) <= set(_published(reference / "cache")), f"{changed} {sorted(at_kill)}"

    # the kill left the run half-done: the aligned policy published, the downstream fits not yet,
    # some but not all texts in the generation cache
    late = "the kill landed after the run's last generation (the signal came too late)"
    names = {name.rsplit("/", 1)[0] for name in at_kill}
    assert "align" in names and "fit/din" not in names, f"{late}: {sorted(at_kill)}"
    assert 0 < len(rows_at_kill) < len(ref_rows), f"{late}: {len(rows_at_kill)} of {len(ref_rows)} texts"
    # and nothing it left is corrupt: every committed text and every published artifact is the
    # uninterrupted run's, byte for byte, under the key its deps give
    assert {k: r[:3] for k, r in rows_at_kill.items()} == {k: ref_rows[k][:3] for k in rows_at_kill}
    for name, folder in at_kill.items():
        assert Store.key(json.loads((folder / "deps.json").read_text())) == folder.name, name
        assert _files(folder) == _files(reference / "cache" / name), f"{name} is not the uninterrupted run's"

    # the resumed run reused exactly what was published before the kill, and the texts committed then
    def stages(results: dict, cached=(True, False)) -> list[str]:
        return sorted(f"{e['stage']}/{e['key']}" for e in results["stages"] if e["cached"] in cached)

    assert stages(resumed) == stages(ref), changed  # the same stages under the same keys: the same config
    assert stages(resumed, cached=(True,)) == sorted(at_kill)
    after = _rows(db)
    assert all(after[k] == r for k, r in rows_at_kill.items()), "a text from before the kill was regenerated"
    assert {k: r[:3] for k, r in after.items()} == {k: r[:3] for k, r in ref_rows.items()}
    assert not list(killed.rglob("*.partial")), "a partial artifact was left behind"

    # every metric equals the uninterrupted run's but the fits' throughput (wall-clock samples/s)
    def same(a, b) -> bool:
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))

    clock = {k for k in ref["metrics"] if k.endswith("/samples_per_s")}
    assert clock and resumed["metrics"].keys() == ref["metrics"].keys()
    m = resumed["metrics"]
    differ = {k: (m[k], v) for k, v in ref["metrics"].items() if k not in clock and not same(m[k], v)}
    assert not differ, f"resumed vs uninterrupted: {differ}"
