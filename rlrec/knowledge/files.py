"""Knowledge from files: `knowledge.source=<folder>` feeds a backbone or re-ranker with no LLM.
Per side (user, required; item, optional) the folder holds texts — `<side>.klg` (KAR's JSON
{id: text}), `<side>.jsonl` ({"id", "text"} per line) or `<side>.parquet` (columns id, text) — and/or
vectors — `<side>_vectors.npy` + `.ids.json` (the export format, `rlrec/runtime/artifacts.py`) or
`<side>_vectors.parquet` (id + a `vector` list column or one float column per dimension). Vectors
are used as given; texts without vectors are encoded by the run's encoder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from rlrec.data.schema import DataError
from rlrec.knowledge.index import vector_table
from rlrec.outputs.results import Probe
from rlrec.runtime.cache import fingerprint


def probe_from_files(ctx, source: str | Path) -> Probe:
    """User (and item) knowledge from a folder in the export format (`rlrec/runtime/artifacts.py`): each
    side's vectors where the folder has them, else its .klg texts encoded by the run's encoder.
    Ids are the dataset's raw ids; users without knowledge get the padding row (zeros)."""
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(
            f"knowledge.source={str(source)!r}: not a folder (expected user.klg / user.jsonl / user.parquet "
            "and/or user_vectors.npy (+ .ids.json) / user_vectors.parquet, e.g. from `rlrec export`)"
        )
    prep = ctx.prep
    user, texts = _side(ctx, folder, "user", prep.user_ids, prep.spec.num_users)
    if user is None:
        raise DataError(
            f"knowledge.source={str(source)!r}: holds no user texts (user.klg / .jsonl / .parquet) or vectors "
            "(user_vectors.npy / .parquet): the user side of the knowledge is required, the item side is optional"
        )
    item, item_texts = _side(ctx, folder, "item", prep.item_ids, prep.spec.num_items)
    key = fingerprint(
        "files",
        hashlib.sha256(user.tobytes()).hexdigest(),
        None if item is None else hashlib.sha256(item.tobytes()).hexdigest(),
    )
    return Probe("source", key, texts, user, item, {"knowledge/source_users": float(len(texts))}, item_texts)


def _side(ctx, folder: Path, side: str, raw_ids, num: int):
    """(the side's vector table or None, {index: text}) from `folder`."""
    from rlrec.runtime import artifacts

    texts: dict[int, str] = {}
    text_file = _first(folder, artifacts.TEXT_FILES, side)
    if text_file is not None:
        data = artifacts.read_texts(text_file)
        rows, values = artifacts.indexed(list(data), list(data.values()), raw_ids, side, text_file)
        texts = dict(zip(rows, values))
    vector_file = _first(folder, artifacts.VECTOR_FILES, side)
    if vector_file is not None:
        ids, vectors = artifacts.read_vectors(vector_file)
        rows, values = artifacts.indexed(ids, list(vectors), raw_ids, side, vector_file)
        if not texts:  # the vectors' users, for the count (no texts to show)
            texts = dict.fromkeys(rows, "")
        return vector_table(num, rows, np.stack(values)), texts
    if texts:
        rows = sorted(texts)
        return vector_table(num, rows, ctx.encoder.encode([texts[r] for r in rows])), texts
    return None, {}


def _first(folder: Path, names: tuple[str, ...], side: str) -> Path | None:
    return next((folder / n.format(side=side) for n in names if (folder / n.format(side=side)).is_file()), None)
