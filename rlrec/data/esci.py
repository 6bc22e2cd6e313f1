"""Amazon Shopping Queries (ESCI): `shopping_queries_dataset_examples.parquet` +
`shopping_queries_dataset_products.parquet`. The query plays the user's role: user_id = query_id
(the query text is a user-side column), item_id = product_id, rating = ESCI gain
(E=3, S=2, C=1, I=0), timestamp = the example's row order (the data has no time)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlrec.data.schema import DataError, RecData, require_columns, require_file

ESCI_GAIN = {"E": 3, "S": 2, "C": 1, "I": 0}


def load_esci(path: str | None = None, locale: str | None = "us", version: str | None = "small_version") -> RecData:
    folder = require_file(path, "the ESCI folder (shopping_queries_dataset_*.parquet)", "esci")
    f_ex = require_file(folder / "shopping_queries_dataset_examples.parquet", "the examples parquet", "esci")
    f_pr = require_file(folder / "shopping_queries_dataset_products.parquet", "the products parquet", "esci")
    try:
        ex, pr = pd.read_parquet(f_ex).reset_index(drop=True), pd.read_parquet(f_pr)  # index = file row
    except Exception as e:
        raise DataError(f"esci: cannot read parquet files in '{folder}': {e}") from e
    require_columns(ex, ("query_id", "query", "product_id", "product_locale", "esci_label"), f_ex)
    require_columns(pr, ("product_id", "product_title", "product_locale"), f_pr)
    if locale:
        ex, pr = ex[ex["product_locale"] == locale], pr[pr["product_locale"] == locale]
    if version:
        if version not in ex.columns:
            raise DataError(
                f"{f_ex}: no column '{version}' (dataset.version must be small_version, large_version or null)"
            )
        ex = ex[ex[version] == 1]
    bad = ~ex["esci_label"].isin(list(ESCI_GAIN))
    if bad.any():
        raise DataError(
            f"{f_ex}: row {int(ex.index[bad.to_numpy()][0])}: esci_label must be one of E/S/C/I, "
            f"got {ex['esci_label'][bad].iloc[0]!r}"
        )
    if ex.empty:
        raise DataError(f"esci: no examples left after locale={locale!r}, version={version!r}")
    inter = pd.DataFrame(
        {
            "user_id": ex["query_id"].astype(np.int64).to_numpy(),
            "item_id": ex["product_id"].astype(str).to_numpy(),
            "rating": ex["esci_label"].map(ESCI_GAIN).astype(np.float32).to_numpy(),
            "timestamp": np.arange(len(ex), dtype=np.int64),
        }
    )
    users = ex[["query_id", "query"]].drop_duplicates("query_id").rename(columns={"query_id": "user_id"})
    users["user_id"] = users["user_id"].astype(np.int64)
    items = pd.DataFrame(
        {
            "item_id": pr["product_id"].astype(str),
            "title": pr["product_title"].fillna("").astype(str),
            "brand": (pr["product_brand"] if "product_brand" in pr else pd.Series("unknown", index=pr.index))
            .fillna("unknown")
            .astype(str),
        }
    ).drop_duplicates("item_id")
    return RecData(
        name="esci",
        interactions=inter,
        users=users.reset_index(drop=True),
        items=items,
        item_features=("brand",),
        source=str(folder),
    ).validate()
