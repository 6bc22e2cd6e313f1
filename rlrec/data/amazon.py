"""Amazon review data, 2018 release (Ni et al.): `<Category>_5.json.gz` (or any reviews
`*.json.gz`) + `meta_<Category>.json.gz`, one JSON object per line."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd

from rlrec.data.schema import DataError, RecData, require_file

REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")


def _json_lines(file: Path):
    """Yield (line number, object). The 2018 meta files are JSON per line; some older dumps are
    Python dict literals, which are accepted too. Anything else names the line."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        obj = ast.literal_eval(line)
                    except (ValueError, SyntaxError) as e:
                        raise DataError(f"{file}: line {lineno}: not a JSON object: {line[:80]!r}") from e
                if not isinstance(obj, dict):
                    raise DataError(f"{file}: line {lineno}: not a JSON object: {line[:80]!r}")
                yield lineno, obj
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: cannot read ({e}); expected a gzip file of UTF-8 JSON lines") from e


def _find(folder: Path, pattern: str, what: str, dataset: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if not hits:
        raise DataError(f"{dataset}: no {what} matching '{pattern}' in '{folder}'")
    return hits[0]


def load_amazon(
    path: str | None = None,
    category: str = "Books",
    name: str = "amazon",
    reviews_file: str | None = None,
    meta_file: str | None = None,
) -> RecData:
    """Reviews → interactions (reviewerID, asin, overall, unixReviewTime); meta → items
    (asin, title, brand, first category below the top level)."""
    folder = require_file(path, f"the Amazon {category} folder ({category}_5.json.gz + meta_{category}.json.gz)", name)
    f_rev = folder / reviews_file if reviews_file else _find(folder, f"{category}*.json.gz", "reviews file", name)
    f_meta = folder / meta_file if meta_file else _find(folder, f"meta_{category}*.json.gz", "meta file", name)
    require_file(f_rev, "the reviews file", name)
    require_file(f_meta, "the meta file", name)

    rows = []
    for lineno, obj in _json_lines(f_rev):
        missing = [k for k in REVIEW_FIELDS if k not in obj]
        if missing:
            raise DataError(f"{f_rev}: line {lineno}: missing field(s) {missing}; expected {list(REVIEW_FIELDS)}")
        try:
            rating, ts = float(obj["overall"]), int(obj["unixReviewTime"])
        except (TypeError, ValueError) as e:
            raise DataError(
                f"{f_rev}: line {lineno}: 'overall' and 'unixReviewTime' must be numeric, got "
                f"{obj['overall']!r}, {obj['unixReviewTime']!r}"
            ) from e
        rows.append((obj["reviewerID"], obj["asin"], rating, ts))
    if not rows:
        raise DataError(f"{f_rev}: no reviews")
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    inter["rating"] = inter["rating"].astype(np.float32)
    # the 5-core files contain a few exact duplicate reviews
    inter = inter.drop_duplicates(["user_id", "item_id", "timestamp"]).reset_index(drop=True)

    wanted = set(inter["item_id"].unique())
    items = []
    for lineno, obj in _json_lines(f_meta):
        if "asin" not in obj:
            raise DataError(f"{f_meta}: line {lineno}: missing field 'asin'")
        if obj["asin"] not in wanted:
            continue
        cats = obj.get("category") or obj.get("categories") or []
        if cats and isinstance(cats[0], list):  # 2014 format: list of lists
            cats = cats[0]
        cats = [c for c in cats if isinstance(c, str)]
        items.append(
            {
                "item_id": obj["asin"],
                "title": str(obj.get("title") or "").strip(),
                "brand": str(obj.get("brand") or "unknown").strip() or "unknown",
                "category": cats[1] if len(cats) > 1 else (cats[0] if cats else "unknown"),
            }
        )
    item_frame = pd.DataFrame(items, columns=["item_id", "title", "brand", "category"]).drop_duplicates("item_id")
    users = pd.DataFrame({"user_id": inter["user_id"].unique()})
    return RecData(
        name=name,
        interactions=inter,
        users=users,
        items=item_frame,
        item_features=("brand", "category"),
        source=f"{f_rev}, {f_meta}",
    ).validate()
