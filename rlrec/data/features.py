"""The FeatureSpec models are built from, and the prepared dataset it describes.

Index conventions (every categorical field and the catalogues):
    0 = padding, 1 = out-of-vocabulary (value unseen in train), 2.. = values seen in train.
Users and items are addressed by *catalogue index* (1..num_users / 1..num_items, 0 = padding).
`user_table[u]` / `item_table[i]` give the field indices of a user / item, so a CTR batch is just
(user, item, history, label) and every field embedding is a lookup — no per-sample feature copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rlrec.data.schema import DataError, RecData
from rlrec.data.splits import SplitConfig, add_labels, assign_splits, previous_items

PAD, OOV = 0, 1


@dataclass(frozen=True)
class Field:
    name: str
    vocab_size: int  # includes PAD and OOV
    side: str  # "user" | "item"


@dataclass(frozen=True, eq=False)
class FeatureSpec:
    """What a CTR backbone needs to know about its input, available before any model is built."""

    fields: tuple[Field, ...]
    history_len: int
    num_users: int  # catalogue sizes, without the padding row
    num_items: int
    user_table: np.ndarray = field(repr=False)  # (num_users + 1, F_user) field indices
    item_table: np.ndarray = field(repr=False)  # (num_items + 1, F_item) field indices
    knowledge_dims: tuple[int, ...] = ()  # dense knowledge vectors per sample (user, item), 0 = none

    @property
    def user_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.side == "user")

    @property
    def item_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.side == "item")

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def with_knowledge(self, dims: tuple[int, ...]) -> FeatureSpec:
        return FeatureSpec(
            self.fields, self.history_len, self.num_users, self.num_items, self.user_table, self.item_table, tuple(dims)
        )


def fit_vocab(values: pd.Series) -> dict:
    """Values seen in train → 2.. (sorted for determinism); everything else maps to OOV."""
    uniq = pd.unique(values.dropna())
    try:
        uniq = np.sort(uniq)
    except TypeError:
        uniq = np.array(sorted(uniq, key=str), dtype=object)
    return {v: i + 2 for i, v in enumerate(uniq.tolist())}


def encode(values: pd.Series, vocab: dict) -> np.ndarray:
    return values.map(vocab).fillna(OOV).astype(np.int64).to_numpy()


@dataclass
class PreparedData:
    """Everything the views need: labelled, split interactions + catalogues + FeatureSpec."""

    raw: RecData
    frame: pd.DataFrame  # interactions sorted by (user, time, item) + label, split, pos, u, i
    history: np.ndarray  # (R, L) catalogue item indices, right-padded with 0
    spec: FeatureSpec
    user_ids: np.ndarray  # catalogue index - 1 → raw user id
    item_ids: np.ndarray  # catalogue index - 1 → raw item id
    split_cfg: SplitConfig
    label_threshold: float
    vocabs: dict = field(default_factory=dict, repr=False)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.frame["split"].to_numpy() == split)

    @property
    def items(self) -> pd.DataFrame:
        """Item metadata in catalogue order (row k = catalogue index k + 1)."""
        return self.raw.items.set_index("item_id").loc[self.item_ids].reset_index()

    @property
    def users(self) -> pd.DataFrame:
        return self.raw.users.set_index("user_id").loc[self.user_ids].reset_index()

    def prompt_history(self, max_len: int | None = None) -> dict:
        """Per user catalogue index → row indices (time order) of the history an LLM may see:
        the `prompt` rows under the leakage guard, otherwise the user's `train` rows."""
        which = "prompt" if self.split_cfg.leakage_guard else "train"
        cap = max_len or self.split_cfg.prompt_max_len
        f = self.frame
        rows = np.flatnonzero(f["split"].to_numpy() == which)
        out: dict[int, np.ndarray] = {}
        users = f["u"].to_numpy()[rows]
        bounds = np.flatnonzero(np.diff(users)) + 1
        for chunk in np.split(rows, bounds):
            if len(chunk):
                out[int(users[np.searchsorted(rows, chunk[0])])] = chunk[-cap:]
        return out

    def split_sizes(self) -> dict:
        counts = self.frame["split"].value_counts()
        out = {}
        for s in ("prompt", "train", "valid", "test"):
            n = int(counts.get(s, 0))
            sub = self.frame[self.frame["split"] == s]
            out[s] = {
                "rows": n,
                "users": int(sub["user_id"].nunique()),
                "positive_rate": round(float(sub["label"].mean()), 4) if n else None,
            }
        return out


def prepare(
    data: RecData,
    label_threshold: float,
    split: SplitConfig,
    history_len: int = 20,
    history_positive_only: bool = False,
) -> PreparedData:
    """Label, split and index a RecData; fit vocabularies on the train split only."""
    if history_len < 1:
        raise DataError(f"dataset.history_len must be >= 1, got {history_len}")
    df = assign_splits(add_labels(data.interactions, label_threshold), split)
    counts = df["split"].value_counts()
    for name, ratio in zip(("train", "valid", "test"), split.ratios):
        if ratio > 0 and not counts.get(name, 0):
            guard = (
                f" after the leakage guard kept {int(counts.get('prompt', 0))} of {len(df)} rows for prompts"
                if split.leakage_guard
                else ""
            )
            raise DataError(
                f"{data.name}: the {name} split is empty{guard} ({split.protocol} split, ratios {list(split.ratios)}): "
                "the data has too few interactions per user or too few users for it; "
                "use split.leakage_guard=false, other split.ratios, or more data"
            )
    train = df["split"].to_numpy() == "train"

    user_ids = np.sort(df["user_id"].unique())
    item_ids = data.items["item_id"].to_numpy()
    item_ids = np.sort(item_ids) if item_ids.dtype != object else np.array(sorted(item_ids, key=str), dtype=object)
    df["u"] = pd.Index(user_ids).get_indexer(df["user_id"]) + 1
    df["i"] = pd.Index(item_ids).get_indexer(df["item_id"]) + 1
    assert (df["u"] > 0).all() and (df["i"] > 0).all()

    users = data.users.set_index("user_id").loc[user_ids].reset_index()
    items = data.items.set_index("item_id").loc[item_ids].reset_index()
    train_users = set(df.loc[train, "user_id"])
    train_items = set(df.loc[train, "item_id"])
    u_train = users["user_id"].isin(train_users)
    i_train = items["item_id"].isin(train_items)

    fields, vocabs, user_cols, item_cols = [], {}, [], []
    for side, frame, mask, cols, out in (
        ("user", users, u_train, ("user_id", *data.user_features), user_cols),
        ("item", items, i_train, ("item_id", *data.item_features), item_cols),
    ):
        for col in cols:
            vocab = fit_vocab(frame.loc[mask, col])
            vocabs[col] = vocab
            fields.append(Field(col, len(vocab) + 2, side))
            out.append(encode(frame[col], vocab))
    user_table = np.zeros((len(user_ids) + 1, len(user_cols)), np.int64)
    user_table[1:] = np.stack(user_cols, 1)
    item_table = np.zeros((len(item_ids) + 1, len(item_cols)), np.int64)
    item_table[1:] = np.stack(item_cols, 1)

    eligible = df["label"].to_numpy() > 0 if history_positive_only else None
    history = previous_items(df, df["i"].to_numpy(), history_len, eligible)
    spec = FeatureSpec(tuple(fields), history_len, len(user_ids), len(item_ids), user_table, item_table)
    return PreparedData(data, df, history, spec, user_ids, item_ids, split, label_threshold, vocabs)
