"""Content-addressed artifacts: a stage's output lives under `cache_dir/<stage>/<hash>`, where the
hash covers exactly the config the stage depends on. Writes are atomic (temp file + rename), so
a killed run never leaves a partial artifact that looks complete."""

from __future__ import annotations

import ast
import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def _plain(obj: Any) -> Any:
    """JSON-able form with every config resolved, however deeply it is nested (a config inside a
    plain dict must hash by its resolved values, not by its `${...}` text).

    >>> cfg = OmegaConf.create({"n": "${m}", "m": 3})
    >>> _plain({"deps": cfg})
    {'deps': {'n': 3, 'm': 3}}
    """
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


PACKAGE = Path(__file__).resolve().parents[1]
# modules that only present results (tables, plots, the console, exports, CLIs): never a stage's output
PRESENTATION = ("outputs/report.py", "outputs/export.py", "runtime/console.py", "cli.py", "data/__main__.py")
CODE_VERSION = "RLREC_CODE_VERSION"  # set: every stage key takes this instead of the code's hash


def code_version(root: str | Path = PACKAGE) -> str:
    """The version of the code under `root` (default: the rlrec package) that computes stage outputs:
    a hash of every module's syntax tree, docstrings dropped, so a comment, a docstring or a
    reformatting keeps it and any change to what the code does gives a new one. Part of every
    stage key (`rlrec.runtime.store`) and of every cached text's key (`rlrec/llm` only), so changed code never
    reuses an old output. Presentation modules (`PRESENTATION`) do not count. `$RLREC_CODE_VERSION`
    pins it for a developer who knows an edit cannot change results (a new plug-in file, say).

    >>> len(code_version())
    12
    """
    return os.environ.get(CODE_VERSION) or _tree_hash(Path(root).resolve())


@functools.cache
def _tree_hash(root: Path) -> str:
    """`code_version`'s hash, read once per process: the code this process imported (an edit on
    disk during a run does not change the code that runs, nor its keys)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in PRESENTATION:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):  # docstrings are documentation, not behaviour
            body = getattr(node, "body", None)
            if (
                isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
        h.update(f"{rel}\0{ast.dump(tree)}\0".encode())
    return h.hexdigest()[:12]


def fingerprint(*parts: Any, length: int = 16) -> str:
    """Stable hash of JSON-able parts (configs are resolved first; dict key order does not matter).

    >>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    True
    """
    blob = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextmanager
def file_lock(path: str | Path):
    """Hold `<path>.lock` exclusively while building `path` (`fcntl.flock`, released by the OS if
    the holder dies): a second process that builds the same thing waits, then finds it built."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def file_hash(path: Path, chunk: int = 1 << 16) -> str:
    """sha256 of the size and three 64 KiB samples (start, middle, end): catches weights fine-tuned
    in place without reading gigabytes."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            fh.seek(offset)
            h.update(fh.read(chunk))
    return h.hexdigest()[:16]


def folder_identity(folder: Path) -> dict:
    """What a model folder's outputs depend on: config.json and the weight files (not the folder's
    path, so an embedded model and a copy of it share one cache)."""
    weights = sorted(p for pattern in ("*.safetensors", "*.bin", "*.pt") for p in folder.glob(pattern) if p.is_file())
    return {
        "config": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16],
        "weights": [[p.name, file_hash(p)] for p in weights],
    }


SQLITE_JOURNAL_ENV = "RLREC_SQLITE_JOURNAL"
SQLITE_JOURNALS = ("wal", "delete", "truncate", "persist")


class SQLiteJournalError(RuntimeError):
    """A cache database could not be put in the configured journal mode (not a damaged file)."""


def sqlite_journal() -> str:
    """The journal mode of the SQLite caches (generations, text vectors), from `RLREC_SQLITE_JOURNAL`:
    `wal` (default: readers never wait for a writer) needs shared memory between the processes, so
    it works on a local disk only; `delete` (SQLite's classic rollback journal) for a cache on
    NFS, Lustre or GPFS, where only POSIX file locks work across nodes."""
    mode = os.environ.get(SQLITE_JOURNAL_ENV, "").strip().lower() or "wal"
    if mode not in SQLITE_JOURNALS:
        raise ValueError(
            f"{SQLITE_JOURNAL_ENV}={os.environ[SQLITE_JOURNAL_ENV]!r} is not a journal mode of the SQLite "
            f"caches; choose one of {', '.join(SQLITE_JOURNALS)} (wal on a local disk, delete on NFS/Lustre/GPFS)"
        )
    return mode


def set_sqlite_journal(conn: sqlite3.Connection, path: str | Path) -> str:
    """Put an open cache database in the `sqlite_journal()` mode (WAL with `synchronous=NORMAL`,
    SQLite's recommended pair: a crash loses at most the last commit, never the file) and check
    that SQLite applied it. An in-memory database keeps its own mode."""
    mode = sqlite_journal()
    if str(path) == ":memory:":
        return "memory"
    try:
        got = conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0].lower()
    except sqlite3.OperationalError as e:  # WAL on a network filesystem; a file open in another mode
        raise SQLiteJournalError(
            f"{path}: cannot use journal mode {mode!r} ({e}): on a shared filesystem (NFS, Lustre, GPFS) "
            f"set {SQLITE_JOURNAL_ENV}=delete, and give every process that shares the file the same setting"
        ) from e
    if got != mode:  # leaving WAL needs the only connection to the file
        raise SQLiteJournalError(
            f"{path}: SQLite kept journal mode {got!r} instead of {SQLITE_JOURNAL_ENV}={mode!r}; another "
            f"process has the file open in {got!r} mode — give every process that shares it the same setting"
        )
    if mode == "wal":
        conn.execute("PRAGMA synchronous=NORMAL")
    return mode
