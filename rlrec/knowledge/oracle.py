"""Oracle knowledge: texts that certainly carry signal, written from the data with no LLM. A user's
text summarises their own training-period interactions (how many, how often liked, the favourite
and least-liked genres, the favourite decades); an item's text is its title, genres and decade (as
KAR's item knowledge). If these lift a backbone, the knowledge pathway (encoder → adapter → feature
field) works on the data and the LLM's texts are the bottleneck; if not, the pathway is.

Only rows of the training split are read, so a user's text says nothing about the rows the
backbone is validated or tested on.

>>> import pandas as pd
>>> frame = pd.DataFrame({"u": [1, 1, 1, 1], "i": [1, 2, 3, 4], "label": [1, 1, 0, 1],
...                       "rating": [5, 4, 2, 4], "split": ["train"] * 3 + ["test"]})
>>> items = {1: {"genres": "Comedy|Drama", "decade": "1990s"}, 2: {"genres": "Comedy", "decade": "1990s"},
...          3: {"genres": "Horror", "decade": "1980s"}, 4: {"genres": "Horror", "decade": "1980s"}}
>>> user_texts(frame, items.get)[1]
'Rated 3 titles, liked 67% (mean rating 3.7). Favourite genres: Comedy, Drama. Least liked genres: Horror. Favourite decades: 1990s.'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pandas as pd


def _genres(fields: dict) -> list[str]:
    value = fields.get("genres") or fields.get("genre") or ""
    return [g for g in str(value).split("|") if g and g.lower() != "unknown"]


def user_texts(frame: pd.DataFrame, item: Callable[[int], dict], top: int = 3) -> dict[int, str]:
    """{user index: text} from each user's training rows (`frame` columns u, i, label, split, and
    rating when present); `item(i)` gives an item's fields (genres or genre, decade)."""
    train = frame[frame["split"] == "train"]
    out: dict[int, str] = {}
    for u, rows in train.groupby("u", sort=True):
        liked, seen = Counter(), Counter()
        decades = Counter()
        for i, label in zip(rows["i"].to_numpy(), rows["label"].to_numpy()):
            fields = item(int(i)) or {}
            for g in _genres(fields):
                seen[g] += 1
                liked[g] += label > 0
                if label > 0 and fields.get("decade"):
                    decades[fields["decade"]] += 1 / max(len(_genres(fields)), 1)
        parts = [f"Rated {len(rows)} titles, liked {float((rows['label'] > 0).mean()):.0%}"]
        if "rating" in rows:
            parts[0] += f" (mean rating {float(rows['rating'].mean()):.1f})"
        parts[0] += "."
        favourite = [g for g, c in liked.most_common() if c > 0][:top]
        if favourite:
            parts.append("Favourite genres: " + ", ".join(favourite) + ".")
        disliked = sorted((g for g in seen if seen[g] - liked[g] > 0), key=lambda g: (-(seen[g] - liked[g]), g))
        disliked = [g for g in disliked if g not in favourite][:top]
        if disliked:
            parts.append("Least liked genres: " + ", ".join(disliked) + ".")
        if decades:
            parts.append("Favourite decades: " + ", ".join(d for d, _ in decades.most_common(2)) + ".")
        out[int(u)] = " ".join(parts)
    return out


def item_texts(items: list[int], item: Callable[[int], dict]) -> list[str]:
    """An item's title, genres and decade, as one sentence each."""
    out = []
    for i in items:
        fields = item(int(i)) or {}
        bits = [str(fields.get("title") or f"item {i}")]
        if _genres(fields):
            bits.append(", ".join(_genres(fields)))
        if fields.get("decade"):
            bits.append(str(fields["decade"]))
        out.append(". ".join(bits) + ".")
    return out


def mean_words(texts) -> float:
    return float(np.mean([len(t.split()) for t in texts])) if len(texts) else 0.0
