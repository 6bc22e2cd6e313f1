"""`RLREC_SQLITE_JOURNAL` sets the journal mode of both SQLite caches (generations, text vectors):
`wal` on a local disk, `delete` on a shared filesystem, where WAL's shared memory does not work."""

from __future__ import annotations

import sqlite3

import pytest

from rlrec.knowledge.encoder import _VectorStore
from rlrec.llm.gencache import GenerationCache, Sample
from rlrec.runtime.cache import SQLITE_JOURNAL_ENV, SQLiteJournalError, sqlite_journal


def _file_mode(path) -> str:
    """The mode a new connection finds: WAL is recorded in the file, the rollback modes are not."""
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA journal_mode").fetchone()[0]


@pytest.mark.parametrize("mode", ["wal", "delete", "truncate", "persist"])
def test_both_caches_use_the_configured_mode(mode, tmp_path, monkeypatch):
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, mode.upper() if mode == "delete" else mode)  # case-insensitive
    gen = GenerationCache(tmp_path / "generations.sqlite")
    gen.put_many([("k", Sample("a text", 2, "stop"))])
    vec = _VectorStore(str(tmp_path / "vectors.sqlite"))
    for db in (gen.db, vec.conn):
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == mode
    assert gen.journal == mode and gen.get_many(["k"])["k"].text == "a text"
    assert vec.conn.execute("PRAGMA page_size").fetchone()[0] == 16384  # set before the mode, in WAL too
    assert (tmp_path / "generations.sqlite-wal").exists() == (mode == "wal")
    gen.close()
    vec.conn.close()
    assert _file_mode(tmp_path / "generations.sqlite") == ("wal" if mode == "wal" else "delete")


def test_default_is_wal(tmp_path, monkeypatch):
    monkeypatch.delenv(SQLITE_JOURNAL_ENV, raising=False)
    assert sqlite_journal() == "wal"
    assert GenerationCache(tmp_path / "g.sqlite").db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_wal_cache_moves_to_delete_and_keeps_its_rows(tmp_path, monkeypatch):
    """A cache made on a local disk, copied to a cluster's shared filesystem: opened with `delete`
    it leaves WAL (its rows intact), so nodes without shared memory can use it."""
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, "wal")
    gen = GenerationCache(tmp_path / "g.sqlite")
    gen.put_many([("k", Sample("kept", 1, "stop"))])
    gen.close()
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, "delete")
    again = GenerationCache(tmp_path / "g.sqlite")
    assert again.get_many(["k"])["k"].text == "kept" and _file_mode(tmp_path / "g.sqlite") == "delete"


def test_a_mode_that_cannot_be_applied_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, "wal")
    holder = GenerationCache(tmp_path / "g.sqlite")  # another process still has it open in WAL
    holder.get_many(["k"])
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, "delete")
    with pytest.raises(SQLiteJournalError, match=f"{SQLITE_JOURNAL_ENV}=delete"):
        GenerationCache(tmp_path / "g.sqlite")
    # the vector cache does not take this for a damaged file: nothing is moved aside
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, "wal")
    held = _VectorStore(str(tmp_path / "v2.sqlite"))
    held.conn.execute("SELECT count(*) FROM vectors").fetchone()
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, "delete")
    with pytest.raises(SQLiteJournalError):
        _ = _VectorStore(str(tmp_path / "v2.sqlite")).conn
    assert [p.name for p in tmp_path.glob("v2.sqlite.corrupt-*")] == []


@pytest.mark.parametrize("value", ["wall", "memory", "off"])
def test_an_unknown_mode_is_a_clear_error(value, tmp_path, monkeypatch):
    monkeypatch.setenv(SQLITE_JOURNAL_ENV, value)
    for build in (lambda: GenerationCache(tmp_path / "g.sqlite"), lambda: _VectorStore(str(tmp_path / "v")).conn):
        with pytest.raises(ValueError, match=rf"{SQLITE_JOURNAL_ENV}='{value}'.*wal, delete, truncate, persist"):
            build()
