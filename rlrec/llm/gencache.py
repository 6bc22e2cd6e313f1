"""The generation cache: one row per sampled text in SQLite, keyed by everything that determines it
(model and adapter fingerprints, backend, prompt, sampling parameters, seed, sample index, code version).
Journal `RLREC_SQLITE_JOURNAL`: `wal` by default, `delete` on a shared filesystem. Finished samples are
committed as they complete, so a rerun never regenerates and a killed run resumes with only the missing
samples."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlrec.runtime.cache import set_sqlite_journal


@dataclass
class Sample:
    text: str
    n_tokens: int | None
    finish_reason: str
    cached: bool = False


class GenerationCache:
    """key → (text, n_tokens, finish_reason) in SQLite (WAL on a local disk: concurrent readers;
    `RLREC_SQLITE_JOURNAL=delete` on a shared filesystem), one transaction per batch of finished
    samples, nothing half-written after a kill."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: built in one thread, used from another (never two at once)
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self.journal = set_sqlite_journal(self.db, self.path)  # RLREC_SQLITE_JOURNAL: wal | delete | …
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS gen (key TEXT PRIMARY KEY, text TEXT NOT NULL, n_tokens INTEGER,"
            " finish TEXT NOT NULL, created REAL NOT NULL)"
        )
        self.db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Sample]:
        found: dict[str, Sample] = {}
        keys = list(dict.fromkeys(keys))
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[i : i + 500]
            rows = self.db.execute(
                f"SELECT key, text, n_tokens, finish FROM gen WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            for k, text, n_tok, finish in rows:
                found[k] = Sample(text, n_tok, finish, cached=True)
        return found

    def put_many(self, rows: Sequence[tuple[str, Sample]]) -> None:
        now = time.time()
        with self.db:  # one transaction
            self.db.executemany(
                "INSERT OR REPLACE INTO gen VALUES (?, ?, ?, ?, ?)",
                [(k, s.text, s.n_tokens, s.finish_reason, now) for k, s in rows],
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM gen").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def sample_seed(seed: int, prompt_key: str, index: int) -> int:
    """64-bit seed of sample `index` of a prompt: independent of batch and cache state."""
    h = hashlib.blake2b(f"{seed}\x1f{index}\x1f{prompt_key}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")
