"""Datasets from files, with no Python: CSV / TSV / parquet tables mapped to the canonical schema
by a YAML (`dataset=table`, `conf/dataset/table.yaml`); RecBole atomic files build on it
(`rlrec/data/recbole.py`).

Files are parsed by pyarrow (multi-threaded C++, only the columns asked for), never row by row
in Python. Every malformed input is a `DataError` naming the file, the line (header = line 1) or
column, and what was expected; nothing downstream runs on bad data. `write_files` writes any
loaded dataset back out in either form (the worked example of `docs/data.md`).

Side-feature types (`features: {column: type}`):
    categorical   one value per row → one CTR field (values read as text)
    numeric       numbers, bucketed into `bins` quantiles → one CTR field
    multi         a list in one cell (`sep`, default "|") → a CTR field of its first value; the whole
                  list stays in `<column>_list` for prompts (backbones take one value per field)
    text          kept for prompts and knowledge, not a CTR field
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rlrec.data.schema import DataError, RecData, require_file

FEATURE_TYPES = ("categorical", "numeric", "multi", "text")
SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".dat": "\t", ".inter": "\t", ".user": "\t", ".item": "\t"}
INTERACTION_KEYS = ("file", "sep", "quote", "user", "item", "rating", "label", "timestamp", "time_format")
SIDE_KEYS = ("file", "sep", "quote", "id", "title", "features")


# ---- reading ------------------------------------------------------------------------------------
def is_parquet(file: Path) -> bool:
    return ".parquet" in file.name or file.suffix == ".pq"


def columns_of(file: Path, sep: str | None = None, quote: bool = True) -> list[str]:
    """The column names of a table file (its header, or its parquet schema)."""
    try:
        if is_parquet(file):
            return list(pq.read_schema(file).names)
        with open(file, encoding="utf-8", errors="replace", newline="") as fh:
            line = fh.readline().rstrip("\r\n")
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a corrupt file
        raise DataError(f"{file}: cannot read: {e}") from e
    if not line:
        raise DataError(f"{file}: the file is empty (expected a header line naming the columns)")
    delim = _delimiter(file, sep)
    return next(csv.reader([line], delimiter=delim, quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE))


def _delimiter(file: Path, sep: str | None) -> str:
    return sep or SEPARATORS.get(file.suffix.lower(), ",")


def read_columns(file: Path, columns: list[str], *, sep=None, text=(), quote=True) -> pd.DataFrame:
    """Only `columns` of `file` (CSV / TSV / parquet), the ones in `text` as strings. A missing
    column or a row with the wrong number of fields names the file and the line."""
    have = columns_of(file, sep, quote)
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}; the file has {have}")
    if is_parquet(file):
        try:
            df = pq.read_table(file, columns=list(columns)).to_pandas()
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{file}: cannot read as parquet: {e}") from e
        for c in text:
            df[c] = _text(df[c])
        return df
    delim = _delimiter(file, sep)
    try:
        table = pacsv.read_csv(
            file,
            parse_options=pacsv.ParseOptions(delimiter=delim, quote_char='"' if quote else False),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns), column_types={c: pa.string() for c in text}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"{file}: {_bad_line(file, delim, len(have), quote) or e}") from e
    return table.to_pandas()


def _bad_line(file: Path, delim: str, width: int, quote: bool) -> str | None:
    """The first line whose field count is not the header's (only read when parsing failed)."""
    with open(file, encoding="utf-8", errors="replace", newline="") as fh:
        rows = csv.reader(fh, delimiter=delim, quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
        for lineno, row in enumerate(rows, 1):
            if row and len(row) != width:
                return f"line {lineno}: expected {width} fields separated by {delim!r}, got {len(row)}: {delim.join(row)[:80]!r}"
    return None


def _text(s: pd.Series) -> pd.Series:
    """Values as strings, missing stays missing (pandas' `str` dtype, as the built-in loaders')."""
    return s.astype(str)


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _line(file: Path, i: int) -> str:
    return f"{file}: row {i + 1}" if is_parquet(file) else f"{file}: line {i + 2}"


def _numbers(df: pd.DataFrame, col: str, file: Path, what: str, missing_ok: bool = False) -> pd.Series:
    """`col` as float64; the first non-numeric (or, unless `missing_ok`, missing) value names its line."""
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna().to_numpy()
    if missing_ok:
        bad = bad & ~(df[col].isna() | (df[col].astype(str).str.strip() == "")).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{_line(file, i)}: {what} '{col}' must be a number, got {_show(df[col].iloc[i])}")
    return values.astype(np.float64)


def _ids(df: pd.DataFrame, col: str, file: Path, what: str) -> pd.Series:
    """Ids as int64 when every value is an integer (as the built-in loaders keep them), else str."""
    s = df[col]
    empty = (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{_line(file, i)}: {what} id column '{col}' is empty")
    if pd.api.types.is_integer_dtype(s):
        return s.astype(np.int64)
    text = s.astype(str).str.strip()
    if text.str.fullmatch(r"-?\d{1,18}").all():
        return text.astype(np.int64)
    return text


def _seconds(df: pd.DataFrame, col: str, file: Path, fmt: str | None) -> pd.Series:
    """A time column as int64 seconds since 1970: numbers are seconds already; text is parsed as
    dates (ISO 8601, or `time_format`, a strptime pattern). Anything else names its line."""
    s = df[col]
    if pd.api.types.is_datetime64_any_dtype(s):
        stamps = pd.to_datetime(s, utc=True)
    elif fmt is None and pd.api.types.is_numeric_dtype(s):
        return _numbers(df, col, file, "time").astype(np.int64)
    else:
        if fmt is None:
            as_number = pd.to_numeric(s, errors="coerce")
            if as_number.notna().all():
                return as_number.astype(np.int64)
        if fmt is None and len(s) and pd.notna(as_number.iloc[0]):  # seconds in the first row: in every row
            stamps = as_number
        else:
            stamps = pd.to_datetime(s, format=fmt or "ISO8601", errors="coerce", utc=True)
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{_line(file, i)}: time column '{col}' is not a time: {s.iloc[i]!r} (expected seconds since 1970 "
            f"or a date such as 1997-12-04 15:55:49{'' if fmt is None else f' in the format {fmt!r}'}; "
            "set interactions.time_format for another layout)"
        )
    if pd.api.types.is_numeric_dtype(stamps):
        return stamps.astype(np.int64)
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "s")).astype(np.int64)


def _unique(ids: pd.Series, file: Path, what: str) -> None:
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((ids == ids.iloc[i]).to_numpy())[0])
        raise DataError(
            f"{_line(file, i)}: duplicate {what} id {_show(ids.iloc[i])} (first at {_line(file, first).split(': ')[-1]})"
        )


def _known(ids: pd.Series, catalogue: pd.Series, file: Path, other: Path, what: str) -> None:
    unknown = ~ids.isin(catalogue).to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{_line(file, i)}: {what} {_show(ids.iloc[i])} is not in {other} "
            f"({int(unknown.sum())} interaction(s) name {what}s that file lacks)"
        )


# ---- the mapping --------------------------------------------------------------------------------
def _options(spec, keys: tuple[str, ...], where: str) -> dict:
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise DataError(f"dataset.loader.{where}: unknown option(s) {unknown}; expected some of {list(keys)}")
    return spec


def _feature_types(features, where: str) -> dict[str, dict]:
    """`{column: type}` or `{column: {type, bins, sep}}` → `{column: {type, ...}}`, checked."""
    out = {}
    for col, kind in dict(features or {}).items():
        opts = {"type": kind} if isinstance(kind, str) else dict(kind)
        if opts.get("type") not in FEATURE_TYPES:
            raise DataError(
                f"dataset.loader.{where}.features.{col}: type must be one of {list(FEATURE_TYPES)}, got {opts.get('type')!r}"
            )
        extra = sorted(set(opts) - {"type", "bins", "sep"})
        if extra:
            raise DataError(f"dataset.loader.{where}.features.{col}: unknown option(s) {extra} (type, bins, sep)")
        out[col] = opts
    return out


def _side_features(df: pd.DataFrame, types: dict[str, dict], file: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Apply each feature's type to its column; returns the frame and the CTR field names in order."""
    fields = []
    for col, opts in types.items():
        kind = opts["type"]
        if kind == "numeric":
            x = _numbers(df, col, file, "numeric feature", missing_ok=True)
            bins = pd.qcut(x, q=int(opts.get("bins", 10)), duplicates="drop")
            df[col] = _text(bins.astype(object))
        elif kind == "multi":
            lists = df[col].fillna("").astype(str).str.split(opts.get("sep", "|"), regex=False)
            df[col + "_list"] = _text(lists.map(lambda v: ", ".join(x.strip() for x in v if x.strip())))
            df[col] = _text(lists.map(lambda v: next((x.strip() for x in v if x.strip()), None)))
        else:
            df[col] = _text(df[col])
        if kind != "text":
            fields.append(col)
    return df, tuple(fields)


def _side(folder: Path, spec, where: str, default_id: str, title: bool):
    """(frame with `<side>_id` [+ title], field names, file) of an optional users/items table."""
    spec = _options(spec, SIDE_KEYS, where)
    if not spec.get("file"):
        return None, (), None
    file = require_file(folder / spec["file"], f"the {where} file", where)
    key = spec.get("id") or default_id
    types = _feature_types(spec.get("features"), where)
    title_col = spec.get("title") if title else None
    cols = list(dict.fromkeys([key, *([title_col] if title_col else []), *types]))
    text = [c for c in cols if c != key]
    df = read_columns(file, cols, sep=spec.get("sep"), text=text, quote=spec.get("quote", True))
    out = pd.DataFrame({default_id: _ids(df, key, file, where[:-1])})
    _unique(out[default_id], file, where[:-1])
    if title:
        out["title"] = df[title_col].fillna("").astype(str).str.strip() if title_col else out[default_id].astype(str)
    body, fields = _side_features(df[[c for c in types]].copy(), types, file)
    return pd.concat([out, body], axis=1), fields, file


def load_table(
    path: str | None = None,
    *,
    name: str = "table",
    interactions: dict | None = None,
    users: dict | None = None,
    items: dict | None = None,
) -> RecData:
    """A dataset from table files under the folder `path`: `interactions` maps the user, item,
    rating or 0/1 label, and time columns; `users` / `items` (optional) add side features and the
    item titles prompts use. See `conf/dataset/table.yaml` and `docs/data.md`."""
    folder = require_file(path, "the folder of the table files", name)
    spec = _options(interactions, INTERACTION_KEYS, "interactions")
    if not spec.get("file"):
        raise DataError(
            f"{name}: dataset.loader.interactions.file is required (a CSV / TSV / parquet file under {folder})"
        )
    file = require_file(folder / spec["file"], "the interactions file", name)
    rating, label, ts = spec.get("rating", "rating"), spec.get("label"), spec.get("timestamp", "timestamp")
    if rating is None and label is None:
        raise DataError(
            f"{name}: dataset.loader.interactions needs `rating` (labels by dataset.label_threshold) or `label` (a 0/1 column)"
        )
    if rating is not None and label is not None:
        raise DataError(f"{name}: dataset.loader.interactions sets both `rating` and `label`; give one of them")
    u, i = spec.get("user") or "user_id", spec.get("item") or "item_id"
    score = label if label is not None else rating
    cols = list(dict.fromkeys([c for c in (u, i, score, ts) if c]))
    df = read_columns(file, cols, sep=spec.get("sep"), text=[c for c in (u, i) if c], quote=spec.get("quote", True))
    inter = pd.DataFrame(
        {
            "user_id": _ids(df, u, file, "user"),
            "item_id": _ids(df, i, file, "item"),
            "rating": _numbers(df, score, file, "label" if label else "rating").astype(np.float32),
            "timestamp": _seconds(df, ts, file, spec.get("time_format")) if ts else np.arange(len(df), dtype=np.int64),
        }
    )
    if label is not None:
        bad = ~inter["rating"].isin([0, 1]).to_numpy()
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(f"{_line(file, k)}: label '{label}' must be 0 or 1, got {_show(df[label].iloc[k])}")
    user_frame, user_fields, user_file = _side(folder, users, "users", "user_id", title=False)
    item_frame, item_fields, item_file = _side(folder, items, "items", "item_id", title=True)
    if user_frame is None:
        user_frame = pd.DataFrame({"user_id": pd.unique(inter["user_id"])})
    else:
        _known(inter["user_id"], user_frame["user_id"], file, user_file, "user")
    if item_frame is None:
        ids = pd.unique(inter["item_id"])
        item_frame = pd.DataFrame({"item_id": ids, "title": [str(x) for x in ids]})
    else:
        _known(inter["item_id"], item_frame["item_id"], file, item_file, "item")
    return RecData(
        name=name,
        interactions=inter,
        users=user_frame,
        items=item_frame,
        user_features=user_fields,
        item_features=item_fields,
        source=str(folder),
        extra={"label_column": label} if label is not None else {},
    ).validate()


# ---- writing (the worked example, or an export to RecBole) --------------------------------------
FORMS = ("csv", "parquet", "recbole")


def write_files(data: RecData, out: str | Path, form: str) -> list[Path]:
    """`data` as the files a user brings: `csv` / `parquet` (interactions, users, items tables with
    the canonical column names) or `recbole` (atomic files named after `out`'s folder). Each file is
    written whole, then renamed into place."""
    from rlrec.runtime.cache import atomic_write_bytes

    if form not in FORMS:
        raise DataError(f"--format must be one of {list(FORMS)}, got {form!r}")
    out = Path(out)
    frames = {"interactions": data.interactions, "users": data.users, "items": data.items}
    written = []
    if form == "recbole":
        features = set(data.user_features) | set(data.item_features)
        kinds = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float", "title": "token_seq"}
        for frame, ext in ((data.interactions, "inter"), (data.users, "user"), (data.items, "item")):
            cols = [c for c in frame.columns if c in kinds or c in features or pd.api.types.is_string_dtype(frame[c])]
            body = frame[cols].astype(object).where(frame[cols].notna(), "")
            body = body.replace(r"[\t\r\n]", " ", regex=True)
            header = [f"{c}:{kinds.get(c, 'token')}" for c in cols]
            text = body.to_csv(sep="\t", index=False, header=header, quoting=csv.QUOTE_NONE, lineterminator="\n")
            path = out / f"{out.name}.{ext}"
            atomic_write_bytes(path, text.encode()).chmod(0o644)
            written.append(path)
        return written
    for key, frame in frames.items():
        path = out / f"{key}.{form}"
        if form == "csv":
            payload = frame.to_csv(index=False).encode()
        else:
            payload = frame.to_parquet(index=False)
        atomic_write_bytes(path, payload).chmod(0o644)
        written.append(path)
    return written
