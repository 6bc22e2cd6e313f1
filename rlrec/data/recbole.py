"""RecBole atomic files (`dataset=recbole`, `conf/dataset/recbole.yaml`): `<name>.inter` (+ optional
`<name>.user`, `<name>.item`), tab-separated, unquoted, with typed headers
`field:token|float|token_seq|float_seq`, as RecBole's converted public datasets ship them. The files
are read through `load_table` with a mapping built from their headers: token fields become
categorical features, float numeric, token_seq multi-valued (space-separated); float_seq is kept as
text."""

from __future__ import annotations

from pathlib import Path

from rlrec.data.schema import DataError, RecData, require_file
from rlrec.data.table import columns_of, load_table

RECBOLE_TYPES = {"token": "categorical", "float": "numeric", "token_seq": "multi"}  # float_seq: not a field
TITLE_COLUMNS = ("title", "movie_title", "item_name", "name")


def _typed_header(file: Path) -> dict[str, tuple[str, str]]:
    """`{field: (header name, type)}` from a RecBole header such as `user_id:token\\tage:float`."""
    out = {}
    for col in columns_of(file, "\t", quote=False):
        field, _, kind = col.rpartition(":")
        if not field or kind not in (*RECBOLE_TYPES, "float_seq"):
            raise DataError(
                f"{file}: line 1: column {col!r} is not `field:type` with type token, float, token_seq or float_seq"
            )
        out[field] = (col, kind)
    return out


def _recbole_side(file: Path | None, key: str, fields, what: str, title: str | None):
    """A `.user` / `.item` file as a table spec (every column read; `fields` or, when None, every
    token / float / token_seq column other than the id and title are the CTR fields)."""
    if file is None:
        return None
    header = _typed_header(file)
    if key not in header:
        raise DataError(f"{file}: line 1: no id field '{key}' (fields: {list(header)})")
    if fields is None:
        fields = [f for f, (_, k) in header.items() if f not in (key, title) and k != "float_seq"]
    for f in fields:
        if f not in header:
            raise DataError(f"dataset.loader.{what}_features: {f!r} is not a field of {file} (fields: {list(header)})")
    features = {
        f: ({"type": "multi", "sep": " "} if RECBOLE_TYPES.get(k) == "multi" else RECBOLE_TYPES.get(k, "text"))
        if f in fields
        else "text"
        for f, (_, k) in header.items()
        if f not in (key, title)
    }
    return header, {"file": file.name, "sep": "\t", "quote": False, "id": key, "title": title, "features": features}


def load_recbole(
    path: str | None = None,
    *,
    name: str | None = None,
    user: str = "user_id",
    item: str = "item_id",
    rating: str | None = "rating",
    label: str | None = None,
    timestamp: str | None = "timestamp",
    title: str | None = None,
    user_features: list[str] | None = None,
    item_features: list[str] | None = None,
) -> RecData:
    """RecBole atomic files `<name>.inter` (+ optional `<name>.user`, `<name>.item`) in the folder
    `path` (`name` defaults to the folder's name). Fields keep their RecBole names; `*_features`
    = None makes every token / float / token_seq field a CTR field, a list picks them."""
    folder = require_file(path, "the folder of the RecBole atomic files", "recbole")
    base = name or folder.name
    inter_file = require_file(folder / f"{base}.inter", f"{base}.inter", "recbole")
    header = _typed_header(inter_file)
    if label is not None:
        rating = None
    for opt, f in (("user", user), ("item", item), ("rating", rating), ("label", label), ("timestamp", timestamp)):
        if f is not None and f not in header:
            hint = " (set it to null if the data has none)" if opt in ("rating", "timestamp") else ""
            raise DataError(
                f"{inter_file}: line 1: no field '{f}' for dataset.loader.{opt}{hint}; fields: {list(header)}"
            )
    user_file, item_file = (folder / f"{base}.{s}" for s in ("user", "item"))
    if title is None and item_file.is_file():
        title = next((t for t in TITLE_COLUMNS if t in _typed_header(item_file)), None)
    sides = {}
    for what, file, key, fields, t in (
        ("user", user_file, user, user_features, None),
        ("item", item_file, item, item_features, title),
    ):
        side = _recbole_side(file if file.is_file() else None, key, fields, what, t)
        sides[what] = None if side is None else _rename(side)
    spec = {
        "file": inter_file.name,
        "sep": "\t",
        "quote": False,
        "user": header[user][0],
        "item": header[item][0],
        "rating": header[rating][0] if rating else None,
        "label": header[label][0] if label else None,
        "timestamp": header[timestamp][0] if timestamp else None,
    }
    data = load_table(str(folder), name=base, interactions=spec, users=sides["user"], items=sides["item"])
    # features keep their RecBole names, without the `:type` of the header
    rename = {full: f for f, (full, _) in {**_headers(user_file), **_headers(item_file)}.items()}
    rename |= {f"{full}_list": f"{f}_list" for full, f in list(rename.items())}
    data.users = data.users.rename(columns=rename)
    data.items = data.items.rename(columns=rename)
    data.user_features = tuple(rename.get(c, c) for c in data.user_features)
    data.item_features = tuple(rename.get(c, c) for c in data.item_features)
    return data


def _headers(file: Path) -> dict:
    return _typed_header(file) if file.is_file() else {}


def _rename(side) -> dict:
    """A side spec over the header's full `field:type` names (what the file's columns are called)."""
    header, spec = side
    spec["id"] = header[spec["id"]][0]
    if spec["title"]:
        spec["title"] = header[spec["title"]][0]
    spec["features"] = {header[f][0]: kind for f, kind in spec["features"].items()}
    return spec
