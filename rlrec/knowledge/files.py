"""Knowledge read back from files in the export format (`rlrec/runtime/artifacts.py`):
`knowledge.source=<folder>` feeds a backbone or re-ranker with no LLM."""

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
            f"knowledge.source={str(source)!r}: not a folder (expected user.klg and/or "
            "user_vectors.npy + user_vectors.ids.json, e.g. from `rlrec export`)"
        )
    prep = ctx.prep
    user, texts = _side(ctx, folder, "user", prep.user_ids, prep.spec.num_users)
    if user is None:
        raise DataError(
            f"knowledge.source={str(source)!r}: holds neither user_vectors.npy nor user.klg "
            "(the user side of the knowledge is required; item.klg / item_vectors.npy are optional)"
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
    klg = folder / f"{side}.klg"
    if klg.is_file():
        data = artifacts.read_klg(klg)
        rows, values = artifacts.indexed(list(data), list(data.values()), raw_ids, side, klg)
        texts = dict(zip(rows, values))
    npy = folder / f"{side}_vectors.npy"
    if npy.is_file():
        ids, vectors = artifacts.read_vectors(npy)
        rows, values = artifacts.indexed(ids, list(vectors), raw_ids, side, npy)
        if not texts:  # the vectors' users, for the count (no texts to show)
            texts = dict.fromkeys(rows, "")
        return vector_table(num, rows, np.stack(values)), texts
    if texts:
        rows = sorted(texts)
        return vector_table(num, rows, ctx.encoder.encode([texts[r] for r in rows])), texts
    return None, {}
