"""The files a run's knowledge, preference data and adapters travel in. One format, three uses: a
run writes it into its output dir (`artifacts/`), `python -m rlrec.outputs.export` copies what a user asks
for (and merges adapters), and `knowledge.source=<dir>` reads it back into any CTR backbone or
re-ranker with no LLM loaded.

    manifest.json              {"rounds": {name: {round, files, adapter?}}, "dataset", "llm", "encoder"}
    <round>/user.klg           JSON {raw user id: text}   (KAR's knowledge format)
    <round>/item.klg           JSON {raw item id: text}   (a round with item knowledge)
    <round>/user_vectors.npy   (n, D) float32, row k = the user `user_vectors.ids.json`[k] (raw ids)
    <round>/item_vectors.npy   (m, D) float32 + item_vectors.ids.json
    <round>/pairs.jsonl        one preference group per line: user, prompt, chosen, rejected [..],
                               reward_chosen, reward_rejected [..] (the round's training groups)
    <round>/samples.jsonl      every scored sample: user, text, reward, role (chosen | rejected | dropped)

Raw ids are the dataset's own ids (MovieLens user 196 is "196"), so the files mean the same thing
in any run over that dataset, whatever users it sampled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlrec.data.schema import DataError
from rlrec.runtime.cache import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

MANIFEST = "manifest.json"
KINDS = {  # what `--what` selects → the files of a round it covers
    "knowledge": ("user.klg", "item.klg"),
    "vectors": ("user_vectors.npy", "user_vectors.ids.json", "item_vectors.npy", "item_vectors.ids.json"),
    "pairs": ("pairs.jsonl", "samples.jsonl"),
}


# ---- writing (a run) ----------------------------------------------------------------------------
def write_run(out: Path, rounds, user_ids: np.ndarray, item_ids: np.ndarray, about: dict) -> Path:
    """Every round's probe (texts, vectors), training groups and adapter path under `out`; the
    manifest last, so a folder with a manifest is complete. `user_ids[k - 1]` is the raw id of
    catalogue index k (the same for items)."""
    out = Path(out)
    entries = {}
    for r in rounds:
        folder = out / r.name
        p = r.probe
        files = []
        if p.texts:
            files.append(_write_klg(folder / "user.klg", {user_ids[u - 1]: t for u, t in p.texts.items()}))
        if p.item_texts:
            files.append(_write_klg(folder / "item.klg", {item_ids[i - 1]: t for i, t in p.item_texts.items()}))
        if p.vectors is not None:
            files += _write_vectors(folder / "user_vectors.npy", p.vectors, sorted(p.texts), user_ids)
        if p.item_vectors is not None:
            rows = sorted(p.item_texts) or np.flatnonzero(np.abs(p.item_vectors).sum(1) > 0).tolist()
            files += _write_vectors(folder / "item_vectors.npy", p.item_vectors, rows, item_ids)
        if r.pairs:
            files.append(
                write_jsonl(folder / "pairs.jsonl", [{**g, "user": _raw(user_ids[g["user"] - 1])} for g in r.pairs])
            )
        if r.samples:
            files.append(
                write_jsonl(folder / "samples.jsonl", [{**x, "user": _raw(user_ids[x["user"] - 1])} for x in r.samples])
            )
        entry = {"round": r.t, "files": files}
        if r.adapter is not None:
            entry["adapter"] = str(Path(r.adapter).resolve())
        entries[r.name] = entry
    return atomic_write_json(out / MANIFEST, {"rounds": entries, **about})


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """One JSON object per line, written atomically; returns the file's name."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return Path(path).name


def _raw(x):
    return x.item() if isinstance(x, np.generic) else x


def _write_klg(path: Path, texts: dict) -> str:
    atomic_write_json(path, {str(_raw(k)): v for k, v in texts.items()})
    return path.name


def _write_vectors(path: Path, table: np.ndarray, rows, ids: np.ndarray) -> list[str]:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(table[list(rows)], np.float32))
    atomic_write_bytes(path, buf.getvalue())
    index = path.with_name(path.stem + ".ids.json")
    atomic_write_json(index, [_raw(ids[r - 1]) for r in rows])
    return [path.name, index.name]


# ---- reading (export, knowledge.source) --------------------------------------------------------
def manifest(folder: Path) -> dict:
    """The manifest of a run's artifacts (`<run dir>/artifacts` or the run dir itself)."""
    folder = Path(folder)
    for candidate in (folder / "artifacts" / MANIFEST, folder / MANIFEST):
        if candidate.is_file():
            try:
                return {**read_json(candidate), "dir": str(candidate.parent)}
            except json.JSONDecodeError as e:
                raise DataError(f"{candidate}: line {e.lineno}: not valid JSON ({e.msg})") from e
    raise DataError(
        f"{folder}: no artifacts/{MANIFEST} (expected a run's output dir; a run writes its artifacts when it "
        "finishes, and rerunning the same command reuses every cached stage)"
    )


def read_klg(path: Path) -> dict[str, str]:
    """{raw id (str): text} from a KAR-style .klg file, checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (expected a JSON object {{id: text}}, KAR's .klg format)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); expected {{id: text}}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{id: text}}, got a {type(data).__name__}")
    bad = next((k for k, v in data.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"{path}: id {bad!r}: expected a text (string), got {type(data[bad]).__name__}")
    return {str(k): v for k, v in data.items()}


TEXT_FILES = ("{side}.klg", "{side}.jsonl", "{side}.parquet")  # knowledge.source reads the first present
VECTOR_FILES = ("{side}_vectors.npy", "{side}_vectors.parquet")


def read_texts(path: Path) -> dict[str, str]:
    """{raw id (str): text} from a KAR .klg JSON object, a JSONL file of {"id", "text"} objects, or a
    parquet file with columns id and text; checked, naming the line or row."""
    path = Path(path)
    if path.suffix == ".klg":
        return read_klg(path)
    if path.suffix == ".parquet":
        frame = _parquet(path, ("id", "text"))
        bad = ~frame["text"].map(lambda t: isinstance(t, str)).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: row {i + 1}: text must be a string, got {frame['text'].iloc[i]!r}")
        return dict(zip(frame["id"].astype(str), frame["text"]))
    out = {}
    for n, row, line in jsonl_rows(path, 'expected {"id": .., "text": ..}'):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
            raise DataError(f"{path}: line {n}: expected an object with an id and a text (string), got {line[:80]!r}")
        out[str(row["id"])] = row["text"]
    return out


def jsonl_rows(path: Path, expected: str = ""):
    """(line number, parsed object, the line) of each non-empty line of a JSONL file; a line that is
    not JSON is a DataError naming it (and, when given, what was `expected`)."""
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line), line.strip()
            except json.JSONDecodeError as e:
                hint = f"; {expected}" if expected else ""
                raise DataError(f"{path}: line {n}: not valid JSON ({e.msg}){hint}") from e


def _parquet(path: Path, columns: tuple[str, ...]):
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a parquet file ({e})") from e
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {names}")
    return pq.read_table(path).to_pandas()


def read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """(raw ids as str, (n, D) float32) from `<name>.npy` + `<name>.ids.json`, or from a parquet file
    with an `id` column and either a `vector` column of lists or one float column per dimension."""
    path = Path(path)
    if path.suffix == ".parquet":
        frame = _parquet(path, ("id",))
        if "vector" in frame.columns:
            lengths = frame["vector"].map(len)
            if lengths.nunique() > 1:
                i = int(np.flatnonzero((lengths != lengths.iloc[0]).to_numpy())[0])
                raise DataError(
                    f"{path}: row {i + 1}: vector of length {lengths.iloc[i]}, row 1's is {lengths.iloc[0]}"
                )
            vectors = np.stack(frame["vector"].map(lambda v: np.asarray(v, np.float32)).to_list())
        else:
            dims = [c for c in frame.columns if c != "id"]
            if not dims:
                raise DataError(f"{path}: no vector columns (expected `vector` or one float column per dimension)")
            vectors = frame[dims].to_numpy(np.float32)
        ids = frame["id"].astype(str).tolist()
        if not np.isfinite(vectors).all():
            raise DataError(f"{path}: row {int(np.flatnonzero(~np.isfinite(vectors).all(1))[0]) + 1} is not finite")
        return ids, vectors
    index = path.with_name(path.stem + ".ids.json")
    for p in (path, index):
        if not p.is_file():
            raise DataError(f"{p}: not found (vectors are <name>.npy (n, D) + <name>.ids.json [n raw ids])")
    try:
        vectors = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a .npy array ({e})") from e
    try:
        ids = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{index}: line {e.lineno}: not valid JSON ({e.msg}); expected a list of ids") from e
    if vectors.ndim != 2 or not isinstance(ids, list) or len(ids) != len(vectors):
        raise DataError(
            f"{path}: expected (n, D) vectors with n = the {len(ids) if isinstance(ids, list) else '?'} "
            f"ids of {index.name}, got shape {vectors.shape}"
        )
    if not np.isfinite(vectors).all():
        raise DataError(f"{path}: row {int(np.flatnonzero(~np.isfinite(vectors).all(1))[0])} is not finite")
    return [str(i) for i in ids], vectors.astype(np.float32)


def read_pairs(path: Path) -> list[dict]:
    """The groups of a pairs.jsonl, checked line by line."""
    path = Path(path)
    groups = []
    for n, g, _ in jsonl_rows(path):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in g]
        if missing or not isinstance(g.get("rejected"), list):
            raise DataError(
                f"{path}: line {n}: expected prompt, chosen and rejected [list of texts]; "
                f"missing {missing or 'a list in rejected'}"
            )
        groups.append(g)
    return groups


def indexed(ids: list[str], values, known: np.ndarray, what: str, path: Path) -> tuple[list[int], list]:
    """(catalogue indices, values) of the `ids` this dataset has (`known[k - 1]` = raw id of index k);
    ids it does not have are dropped, but if none match the file is for another dataset: an error."""
    lookup = {str(_raw(x)): k + 1 for k, x in enumerate(known)}
    rows = [(lookup[i], v) for i, v in zip(ids, values) if i in lookup]
    if ids and not rows:
        raise DataError(
            f"{path}: none of its {len(ids)} {what} ids (e.g. {ids[0]!r}) is a {what} of this "
            f"dataset (e.g. {str(_raw(known[0]))!r}); is it for another dataset?"
        )
    return [r for r, _ in rows], [v for _, v in rows]
