"""HetRec 2011 Last.fm-2k (`hetrec2011-lastfm-2k/`): `user_artists.dat` (userID, artistID, weight),
`artists.dat` (id, name, url, pictureURL), `user_taggedartists-timestamps.dat` (userID, artistID,
tagID, timestamp in ms) and `tags.dat` (tagID, tagValue); tab-separated with a header row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlrec.data.schema import DataError, RecData, require_columns, require_file, to_numeric_column


def _read_tsv(file: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_csv(file, sep="\t", encoding="latin-1", dtype=str, quoting=3)
    except Exception as e:
        raise DataError(f"{file}: cannot parse as tab-separated values: {e}") from e
    if len(df.columns) == 1 and len(columns) > 1:
        raise DataError(f"{file}: expected tab-separated columns {list(columns)}, found one column {df.columns[0]!r}")
    require_columns(df, columns, file)
    return df


def load_lastfm(path: str | None = None, interactions: str = "tagged") -> RecData:
    """`interactions="tagged"` (default, sequential as in LLaRA/RecLAIF): one interaction per
    (user, artist) at the user's first tagging time, rating = play count (0 if never played).
    `interactions="played"`: every user_artists row, timestamp = first tagging time, or 0."""
    folder = require_file(path, "the hetrec2011-lastfm-2k folder", "lastfm")
    f_ua = require_file(folder / "user_artists.dat", "user_artists.dat", "lastfm")
    f_ar = require_file(folder / "artists.dat", "artists.dat", "lastfm")
    f_tt = require_file(folder / "user_taggedartists-timestamps.dat", "user_taggedartists-timestamps.dat", "lastfm")
    ua = _read_tsv(f_ua, ("userID", "artistID", "weight"))
    ar = _read_tsv(f_ar, ("id", "name"))
    tt = _read_tsv(f_tt, ("userID", "artistID", "tagID", "timestamp"))
    plays = pd.DataFrame(
        {
            "user_id": to_numeric_column(ua, "userID", f_ua, 2).astype(np.int64),
            "item_id": to_numeric_column(ua, "artistID", f_ua, 2).astype(np.int64),
            "rating": to_numeric_column(ua, "weight", f_ua, 2).astype(np.float32),
        }
    )
    tags = pd.DataFrame(
        {
            "user_id": to_numeric_column(tt, "userID", f_tt, 2).astype(np.int64),
            "item_id": to_numeric_column(tt, "artistID", f_tt, 2).astype(np.int64),
            "tag_id": to_numeric_column(tt, "tagID", f_tt, 2).astype(np.int64),
            "timestamp": (to_numeric_column(tt, "timestamp", f_tt, 2) // 1000).astype(np.int64),
        }
    )
    first_tag = tags.groupby(["user_id", "item_id"], as_index=False)["timestamp"].min()
    if interactions == "tagged":
        inter = first_tag.merge(plays, on=["user_id", "item_id"], how="left")
        inter["rating"] = inter["rating"].fillna(0).astype(np.float32)
    elif interactions == "played":
        inter = plays.merge(first_tag, on=["user_id", "item_id"], how="left")
        inter["timestamp"] = inter["timestamp"].fillna(0).astype(np.int64)
    else:
        raise DataError(f"lastfm: dataset.interactions must be 'tagged' or 'played', got {interactions!r}")
    inter = inter[["user_id", "item_id", "rating", "timestamp"]]
    # each artist's most used tag is a side feature (its "genre")
    top_tag = tags.groupby(["item_id", "tag_id"]).size().rename("n").reset_index()
    top_tag = top_tag.sort_values(["item_id", "n", "tag_id"], ascending=[True, False, True]).drop_duplicates("item_id")
    tag_names = {}
    f_tags = folder / "tags.dat"
    if f_tags.exists():
        t = _read_tsv(f_tags, ("tagID", "tagValue"))
        tag_names = dict(zip(to_numeric_column(t, "tagID", f_tags, 2).astype(np.int64), t["tagValue"]))
    items = pd.DataFrame(
        {"item_id": to_numeric_column(ar, "id", f_ar, 2).astype(np.int64), "title": ar["name"].astype(str)}
    )
    items = items.merge(top_tag[["item_id", "tag_id"]], on="item_id", how="left")
    items["tag"] = [tag_names.get(t, str(int(t))) if pd.notna(t) else "unknown" for t in items["tag_id"]]
    items = items.drop(columns="tag_id")
    users = pd.DataFrame({"user_id": np.sort(inter["user_id"].unique())})
    return RecData(
        name="lastfm", interactions=inter, users=users, items=items, item_features=("tag",), source=str(folder)
    ).validate()
