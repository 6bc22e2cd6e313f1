"""A seeded generator with planted user tastes that appear in item titles.

Every item has one theme, and its title names it ("The Hidden Dragon Saga"). Every user likes
1–2 themes (`users.taste`): items of a liked theme get 4–5 stars, others 1–3, with `noise`
of the ratings flipped. So a text that names a user's themes really carries label information,
which lets tests check that informative knowledge earns a higher reward and a better model.
The theme is *not* an item feature unless `theme_feature=True`: the title is the only way in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlrec.data.schema import RecData

THEMES = (
    "space",
    "pirate",
    "dragon",
    "detective",
    "zombie",
    "cowboy",
    "robot",
    "vampire",
    "samurai",
    "wizard",
    "ninja",
    "alien",
    "mermaid",
    "knight",
    "spy",
    "dinosaur",
)
ADJECTIVES = ("Dark", "Last", "Silent", "Golden", "Broken", "Hidden", "Lost", "Wild", "Crimson", "Endless")
NOUNS = ("Return", "Legacy", "Chronicles", "Night", "Quest", "Empire", "Saga", "Code", "Dawn", "Storm")


def load_synthetic(
    num_users: int = 200,
    num_items: int = 300,
    num_themes: int = 8,
    min_len: int = 20,
    max_len: int = 60,
    liked_share: float = 0.5,
    noise: float = 0.1,
    theme_feature: bool = False,
    seed: int = 0,
) -> RecData:
    assert 1 <= num_themes <= len(THEMES), f"num_themes must be in [1, {len(THEMES)}]"
    assert 1 <= min_len <= max_len <= num_items, "need 1 <= min_len <= max_len <= num_items"
    rng = np.random.default_rng(seed)
    themes = np.array(THEMES[:num_themes])
    item_theme = rng.integers(0, num_themes, num_items)
    titles = [
        f"The {ADJECTIVES[rng.integers(len(ADJECTIVES))]} {themes[t].capitalize()} {NOUNS[rng.integers(len(NOUNS))]}"
        f" ({1950 + rng.integers(0, 70)})"
        for t in item_theme
    ]
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, num_items + 1),
            "title": titles,
            "theme": themes[item_theme],
            "format": rng.choice(["film", "series", "short"], num_items),  # uninformative side feature
        }
    )
    rows, tastes = [], []
    for u in range(1, num_users + 1):
        liked = rng.choice(num_themes, size=rng.integers(1, 3), replace=False)
        tastes.append("|".join(themes[liked]))
        n = int(rng.integers(min_len, max_len + 1))
        is_liked_item = np.isin(item_theme, liked)
        p = np.where(
            is_liked_item, liked_share / max(is_liked_item.sum(), 1), (1 - liked_share) / max((~is_liked_item).sum(), 1)
        )
        chosen = rng.choice(num_items, size=n, replace=False, p=p / p.sum())
        good = is_liked_item[chosen] ^ (rng.random(n) < noise)
        rating = np.where(good, rng.integers(4, 6, n), rng.integers(1, 4, n))
        ts = np.sort(rng.integers(0, 10**7, n)) + 10**9
        rows.append(
            pd.DataFrame({"user_id": u, "item_id": chosen + 1, "rating": rating.astype(np.float32), "timestamp": ts})
        )
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, num_users + 1),
            "gender": rng.choice(["male", "female"], num_users),
            "age": rng.choice(["18-24", "25-34", "35-44", "45-49"], num_users),
            "taste": tastes,
        }
    )
    return RecData(
        name="synthetic",
        interactions=pd.concat(rows, ignore_index=True),
        users=users,
        items=items,
        user_features=("gender", "age"),
        item_features=("theme", "format") if theme_feature else ("format",),
        source=f"synthetic(seed={seed})",
    ).validate()
