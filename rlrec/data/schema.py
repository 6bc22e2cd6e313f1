"""The canonical schema every loader maps its raw files to.

interactions: (user_id, item_id, rating, timestamp)    one row per rating / click / play
users:        (user_id, ...side features)               at least every user that interacts
items:        (item_id, title, ...side features)        at least every item that is interacted with

Ids are kept as the raw dataset's ids (str or int); vocabularies are fitted later, on train.
Loaders only map raw files to this; labels, splits, histories and prompts are shared code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rlrec.errors import DataError

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass
class RecData:
    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    # names of the side-feature columns, in the order they become CTR fields
    user_features: tuple[str, ...] = ()
    item_features: tuple[str, ...] = ()
    # free-form description of where the data came from (shown by `describe`)
    source: str = ""
    extra: dict = field(default_factory=dict)

    def validate(self) -> RecData:
        """Check the schema invariants; raise DataError naming the frame and column."""
        for col in INTERACTION_COLUMNS:
            if col not in self.interactions.columns:
                raise DataError(
                    f"{self.name}: interactions lack column '{col}' (have {list(self.interactions.columns)})"
                )
        if "user_id" not in self.users.columns:
            raise DataError(f"{self.name}: users frame lacks column 'user_id'")
        for col in ("item_id", "title"):
            if col not in self.items.columns:
                raise DataError(f"{self.name}: items frame lacks column '{col}'")
        for col in self.user_features:
            if col not in self.users.columns:
                raise DataError(f"{self.name}: user feature '{col}' is not a column of users")
        for col in self.item_features:
            if col not in self.items.columns:
                raise DataError(f"{self.name}: item feature '{col}' is not a column of items")
        if not np.issubdtype(self.interactions["rating"].dtype, np.number):
            raise DataError(
                f"{self.name}: interactions.rating must be numeric, got {self.interactions['rating'].dtype}"
            )
        if not np.issubdtype(self.interactions["timestamp"].dtype, np.number):
            raise DataError(
                f"{self.name}: interactions.timestamp must be numeric (seconds), got {self.interactions['timestamp'].dtype}"
            )
        if len(self.interactions) == 0:
            raise DataError(f"{self.name}: no interactions")
        missing_items = ~self.interactions["item_id"].isin(self.items["item_id"])
        if missing_items.any():
            # keep interactions whose item has no metadata: give them a placeholder title
            ids = self.interactions.loc[missing_items, "item_id"].unique()
            pad = pd.DataFrame({"item_id": ids, "title": [str(i) for i in ids]})
            self.items = pd.concat([self.items, pad], ignore_index=True)
        missing_users = ~self.interactions["user_id"].isin(self.users["user_id"])
        if missing_users.any():
            ids = self.interactions.loc[missing_users, "user_id"].unique()
            self.users = pd.concat([self.users, pd.DataFrame({"user_id": ids})], ignore_index=True)
        if self.users["user_id"].duplicated().any():
            raise DataError(f"{self.name}: users.user_id has duplicates")
        if self.items["item_id"].duplicated().any():
            raise DataError(f"{self.name}: items.item_id has duplicates")
        self.items["title"] = self.items["title"].fillna("").astype(str)
        return self

    def subsample_users(self, n: int | None, seed: int = 0) -> RecData:
        """Keep `n` users drawn at random (seeded) with all their interactions: a smaller but
        otherwise identical dataset (CPU-scale runs, smoke tests). None = keep everyone."""
        users = np.sort(self.interactions["user_id"].unique())
        if n is None or n >= len(users):
            return self
        keep = np.random.default_rng(seed).choice(users, size=int(n), replace=False)
        inter = self.interactions[self.interactions["user_id"].isin(keep)].reset_index(drop=True)
        return RecData(
            self.name,
            inter,
            self.users[self.users["user_id"].isin(keep)].reset_index(drop=True),
            self.items,
            self.user_features,
            self.item_features,
            f"{self.source} ({n} users, seed {seed})",
            dict(self.extra),
        )

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "users": int(self.interactions["user_id"].nunique()),
            "items": int(self.interactions["item_id"].nunique()),
            "interactions": len(self.interactions),
            "catalogue_items": len(self.items),
            "user_features": list(self.user_features),
            "item_features": list(self.item_features),
        }


def require_file(path: str | Path, what: str, dataset: str) -> Path:
    """Return `path` as a Path, or raise DataError naming the dataset, the file and how to fix it."""
    if path is None or str(path) in ("", "None", "???"):
        raise DataError(
            f"{dataset}: no path given for {what}. Download the dataset and pass its folder, "
            f"e.g. `dataset.path=/data/{dataset}`."
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{dataset}: {what} not found at '{p}'.")
    return p


def require_columns(df: pd.DataFrame, columns, file: Path | str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}; found {list(df.columns)}")


def to_numeric_column(df: pd.DataFrame, column: str, file: Path | str, line_offset: int = 1) -> pd.Series:
    """Parse a column as numbers; on failure name the file, the first bad line and its value."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna() | df[column].isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{file}: line {i + line_offset}: field '{column}' must be numeric, got {df[column].iloc[i]!r}")
    return values
