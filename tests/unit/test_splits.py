"""Labels, split protocols, the KAR leakage guard, behaviour histories, train-only vocabularies,
re-rank lists and prompts, on synthetic data and on the embedded ML-100K."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from rlrec.data.ctr import ctr_tensors
from rlrec.data.features import OOV, PAD, prepare
from rlrec.data.movielens import load_movielens100k
from rlrec.data.prompts import PromptTemplate, PromptView
from rlrec.data.rerank import kar_lists, ranked_lists
from rlrec.data.schema import DataError, RecData
from rlrec.data.splits import SplitConfig, add_labels, assign_splits
from rlrec.data.synthetic import load_synthetic

SAMPLE_SPLITS = ("train", "valid", "test")


def synthetic(**kw) -> RecData:
    args = dict(num_users=40, num_items=60, num_themes=4, min_len=6, max_len=30, seed=7)
    return load_synthetic(**{**args, **kw})


def coarse(data: RecData, step: int = 2_000_000) -> RecData:
    """The same data with coarse timestamps, so users have many same-time interactions."""
    inter = data.interactions.copy()
    inter["timestamp"] = inter["timestamp"] // step
    return RecData(data.name, inter, data.users, data.items, data.user_features, data.item_features).validate()


@pytest.fixture(scope="module")
def syn() -> RecData:
    return synthetic()


@pytest.fixture(scope="module")
def ml100k() -> RecData:
    return load_movielens100k()


@pytest.fixture(scope="module")
def ml_prep(ml100k):
    return prepare(ml100k, 4, SplitConfig(protocol="temporal"), history_len=20)


def split_of(prep) -> np.ndarray:
    return prep.frame["split"].to_numpy().astype(str)


def expected_prompt_len(frame: pd.DataFrame, cap: int) -> pd.Series:
    n = frame.groupby("user_id")["item_id"].size()
    return np.minimum(np.ceil(n / 2).astype(int), cap)


# ------------------------------------------------------------------------ (a) coverage, temporal


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.6, 0.25, 0.15)])
def test_temporal_split_covers_rows_in_time_order(syn, guard, ratios):
    cfg = SplitConfig(protocol="temporal", ratios=ratios, leakage_guard=guard, prompt_max_len=5)
    df = assign_splits(coarse(syn).interactions, cfg)
    assert len(df) == len(syn.interactions)
    # every input row appears exactly once, with exactly one split
    key = ["user_id", "item_id", "timestamp"]
    assert (
        df[key]
        .sort_values(key)
        .reset_index(drop=True)
        .equals(coarse(syn).interactions[key].sort_values(key).reset_index(drop=True))
    )
    split = df["split"].to_numpy().astype(str)
    assert set(split) <= {"prompt", "train", "valid", "test"}
    assert (split == "prompt").any() == guard
    # order sample rows by (timestamp, user, item): train < valid < test, as contiguous blocks
    sample = df[split != "prompt"].sort_values(["timestamp", "user_id", "item_id"], kind="mergesort")
    seq = sample["split"].astype(str).tolist()
    n = len(seq)
    n_train, n_valid = round(n * ratios[0]), round(n * ratios[1])
    assert seq == ["train"] * n_train + ["valid"] * n_valid + ["test"] * (n - n_train - n_valid)
    for a, b in (("train", "valid"), ("valid", "test")):
        last = sample[sample["split"] == a].iloc[-1][["timestamp", "user_id", "item_id"]].tolist()
        first = sample[sample["split"] == b].iloc[0][["timestamp", "user_id", "item_id"]].tolist()
        assert tuple(last) < tuple(first)
    assert abs((split == "test").sum() - n * ratios[2]) <= 1


def test_temporal_split_on_ml100k(ml_prep):
    f = ml_prep.frame
    split = split_of(ml_prep)
    assert len(f) == 100_000
    assert f.groupby(["user_id", "item_id"]).ngroups == 100_000  # every rating once
    keys = f[["timestamp", "user_id", "item_id"]].to_numpy()
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    ranked = split[order]
    ranked = ranked[ranked != "prompt"]
    rank = {"train": 0, "valid": 1, "test": 2}
    codes = np.array([rank[s] for s in ranked])
    assert np.all(np.diff(codes) >= 0), "train rows must precede valid rows, valid precede test"
    n = len(ranked)
    assert (codes == 0).sum() == round(0.8 * n) and (codes == 1).sum() == round(0.1 * n)


def test_split_config_rejects_bad_values():
    with pytest.raises(DataError, match="protocol"):
        SplitConfig(protocol="random")
    with pytest.raises(DataError, match="ratios"):
        SplitConfig(ratios=(0.8, 0.3, 0.1))
    with pytest.raises(DataError, match="ratios"):
        SplitConfig(ratios=(1.1, -0.1, 0.0))


# ------------------------------------------------------------------------------ (b) user split


@pytest.mark.parametrize("guard", [True, False])
def test_user_split_keeps_each_user_in_one_split(syn, guard):
    cfg = SplitConfig(protocol="user", ratios=(0.7, 0.1, 0.2), leakage_guard=guard, seed=5)
    df = assign_splits(syn.interactions, cfg)
    assert len(df) == len(syn.interactions)
    sample = df[df["split"] != "prompt"]
    per_user = sample.groupby("user_id")["split"].nunique()
    assert (per_user == 1).all()
    user_split = sample.groupby("user_id")["split"].first().astype(str)
    assert len(user_split) == 40
    assert (user_split == "train").sum() == 28 and (user_split == "valid").sum() == 4
    assert (user_split == "test").sum() == 8
    # seeded: same seed, same assignment; another seed, another one
    again = assign_splits(syn.interactions, cfg)
    assert again["split"].equals(df["split"])
    other = assign_splits(syn.interactions, SplitConfig(protocol="user", ratios=(0.7, 0.1, 0.2), seed=6))
    assert not other["split"].equals(
        assign_splits(syn.interactions, SplitConfig(protocol="user", ratios=(0.7, 0.1, 0.2), seed=5))["split"]
    )


# --------------------------------------------------------------------------- (c) leakage guard


@pytest.mark.parametrize("protocol", ["temporal", "user"])
@pytest.mark.parametrize("cap", [5, 30])
def test_leakage_guard_prompt_rows(syn, protocol, cap):
    data = coarse(syn)
    prep = prepare(data, 4, SplitConfig(protocol=protocol, prompt_max_len=cap), history_len=6)
    f = prep.frame
    split = split_of(prep)
    want = expected_prompt_len(f, cap)
    for user, g in f.groupby("user_id"):
        s = split[g.index.to_numpy()]
        k = int(want[user])
        # the earliest k rows in (time, item) order, and nothing else
        assert (s[:k] == "prompt").all() and not (s[k:] == "prompt").any()
        assert g["timestamp"].is_monotonic_increasing
    if cap == 5:
        assert (want < np.ceil(f.groupby("user_id").size() / 2)).any(), "the cap must bind for some user"

    prompt_rows = set(np.flatnonzero(split == "prompt").tolist())
    prompt_pairs = set(map(tuple, f.loc[split == "prompt", ["u", "i"]].to_numpy().tolist()))
    assert prompt_rows
    seen_rows = []
    for s in SAMPLE_SPLITS:
        rows = prep.rows(s)
        assert not prompt_rows & set(rows.tolist())
        seen_rows.extend(rows.tolist())
        t = ctr_tensors(prep, s)
        assert t["user"].tolist() == f["u"].to_numpy()[rows].tolist()
        assert t["item"].tolist() == f["i"].to_numpy()[rows].tolist()
        assert t["label"].tolist() == f["label"].to_numpy()[rows].tolist()
        pairs = set(zip(t["user"].tolist(), t["item"].tolist()))
        assert not pairs & prompt_pairs  # synthetic users never repeat an item
    assert sorted(seen_rows + sorted(prompt_rows)) == list(range(len(f)))


def test_leakage_guard_on_ml100k(ml_prep):
    f = ml_prep.frame
    split = split_of(ml_prep)
    want = expected_prompt_len(f, 30)
    assert (split == "prompt").sum() == int(want.sum())
    assert np.array_equal(split == "prompt", f["pos"].to_numpy() < f["user_id"].map(want).to_numpy())
    for s in SAMPLE_SPLITS:
        assert not (split[ml_prep.rows(s)] == "prompt").any()
        assert len(ctr_tensors(ml_prep, s)["item"]) == (split == s).sum()


# ---------------------------------------------------------------------------------- (d) history


def naive_history(frame: pd.DataFrame, length: int, eligible: np.ndarray) -> np.ndarray:
    """Reference: per row, the catalogue items of the user's eligible rows with a strictly earlier
    timestamp, in frame (time, item) order, the last `length` kept, right-padded with PAD."""
    out = np.full((len(frame), length), PAD, dtype=np.int64)
    for _, g in frame.groupby("user_id", sort=False):
        idx = g.index.to_numpy()
        ts, items, el = g["timestamp"].to_numpy(), g["i"].to_numpy(), eligible[idx]
        for r, t in zip(idx, ts):
            h = items[(ts < t) & el][-length:]
            out[r, : len(h)] = h
    return out


@pytest.mark.parametrize("positive_only", [False, True])
@pytest.mark.parametrize("length", [1, 4, 12])
def test_history_is_strictly_earlier_most_recent_and_right_padded(syn, positive_only, length):
    data = coarse(syn)
    prep = prepare(data, 4, SplitConfig(), history_len=length, history_positive_only=positive_only)
    f, h = prep.frame, prep.history
    assert h.shape == (len(f), length) and h.dtype == np.int64
    # ties exist, so "strictly earlier" is really exercised
    assert f.duplicated(["user_id", "timestamp"]).any()
    eligible = f["label"].to_numpy() > 0 if positive_only else np.ones(len(f), bool)
    assert np.array_equal(h, naive_history(f, length, eligible))

    # the same, stated as properties, for every sample row
    label_of = {(u, i): lab for u, i, lab in f[["u", "i", "label"]].itertuples(index=False)}
    for r in np.flatnonzero(split_of(prep) != "prompt"):
        row = h[r]
        n = int((row != PAD).sum())
        assert (row[:n] != PAD).all() and (row[n:] == PAD).all(), "padding only at the end"
        u, t = f["u"].iat[r], f["timestamp"].iat[r]
        user_rows = f[f["u"] == u]
        earlier = user_rows[(user_rows["timestamp"] < t) & eligible[user_rows.index.to_numpy()]]
        assert n == min(length, len(earlier))
        assert row[:n].tolist() == earlier["i"].tolist()[len(earlier) - n :]  # the most recent, oldest first
        if positive_only:
            assert all(label_of[(u, i)] == 1 for i in row[:n])


def test_positive_only_history_differs(syn):
    a = prepare(syn, 4, SplitConfig(), history_len=8).history
    b = prepare(syn, 4, SplitConfig(), history_len=8, history_positive_only=True).history
    assert (b != PAD).sum() < (a != PAD).sum()


def test_history_on_ml100k_sampled_rows(ml_prep):
    f, h = ml_prep.frame, ml_prep.history
    rng = np.random.default_rng(0)
    rows = rng.choice(len(f), 400, replace=False)
    user_idx = f.groupby("u").indices
    ts_all, it_all = f["timestamp"].to_numpy(), f["i"].to_numpy()
    checked_ties = False
    for r in rows:
        idx = user_idx[f["u"].iat[r]]
        ts, items = ts_all[idx], it_all[idx]
        earlier = items[ts < ts_all[r]][-20:]
        checked_ties |= ((ts == ts_all[r]).sum() > 1) and len(earlier) < 20
        assert h[r, : len(earlier)].tolist() == earlier.tolist()
        assert (h[r, len(earlier) :] == PAD).all()
    assert checked_ties


def test_history_len_must_be_positive(syn):
    with pytest.raises(DataError, match="history_len"):
        prepare(syn, 4, SplitConfig(), history_len=0)


# -------------------------------------------------------------------------------- (e) vocab


def with_test_only_item(data: RecData) -> tuple[RecData, int]:
    """Add one catalogue item that only one interaction uses, at the very last timestamp."""
    new_id = int(data.items["item_id"].max()) + 1
    items = pd.concat(
        [
            data.items,
            pd.DataFrame({"item_id": [new_id], "title": ["The Late Arrival (2024)"], "format": ["alien-format"]}),
        ],
        ignore_index=True,
    )
    late = pd.DataFrame(
        {
            "user_id": [1],
            "item_id": [new_id],
            "rating": np.float32([5.0]),
            "timestamp": [data.interactions["timestamp"].max() + 1],
        }
    )
    inter = pd.concat([data.interactions, late], ignore_index=True)
    return RecData(data.name, inter, data.users, items, data.user_features, data.item_features).validate(), new_id


@pytest.mark.parametrize("guard", [True, False])
def test_vocab_is_fitted_on_train_only(syn, guard):
    data, new_id = with_test_only_item(syn)
    prep = prepare(data, 4, SplitConfig(protocol="temporal", leakage_guard=guard), history_len=4)
    f = prep.frame
    split = split_of(prep)
    assert split[(f["item_id"] == new_id).to_numpy()].tolist() == ["test"]
    i_new = int(np.flatnonzero(prep.item_ids == new_id)[0]) + 1
    item_fields = [fl.name for fl in prep.spec.item_fields]
    assert item_fields == ["item_id", "format"]
    assert prep.spec.item_table[i_new, 0] == OOV
    assert prep.spec.item_table[i_new, 1] == OOV  # its 'format' value is unseen too
    assert new_id not in prep.vocabs["item_id"] and "alien-format" not in prep.vocabs["format"]
    assert (prep.spec.item_table[0] == PAD).all()

    train_items = set(f.loc[split == "train", "i"])
    for i in range(1, prep.spec.num_items + 1):
        in_train = i in train_items
        assert (prep.spec.item_table[i, 0] >= 2) == in_train
    assert prep.spec.item_fields[0].vocab_size == len(train_items) + 2
    # catalogue indices address the raw ids
    assert (prep.item_ids[f["i"].to_numpy() - 1] == f["item_id"].to_numpy()).all()
    assert (prep.user_ids[f["u"].to_numpy() - 1] == f["user_id"].to_numpy()).all()


def test_user_split_test_users_are_oov(syn):
    prep = prepare(syn, 4, SplitConfig(protocol="user", ratios=(0.7, 0.1, 0.2)), history_len=4)
    f = prep.frame
    split = split_of(prep)
    train_users = set(f.loc[split == "train", "u"])
    test_users = set(f.loc[split == "test", "u"])
    assert test_users and not train_users & test_users
    assert all(prep.spec.user_table[u, 0] == OOV for u in test_users)
    assert all(prep.spec.user_table[u, 0] >= 2 for u in train_users)
    # a side-feature value seen in train is not OOV for a test user
    assert all((prep.spec.user_table[u, 1:] >= 2).all() for u in test_users)


# -------------------------------------------------------------------------------- (f) labels


@pytest.mark.parametrize("threshold", [3, 4, 4.5, 5])
def test_label_is_rating_at_least_threshold(syn, threshold):
    lab = add_labels(syn.interactions, threshold)
    assert lab["label"].dtype == np.float32
    assert np.array_equal(
        lab["label"].to_numpy(), (syn.interactions["rating"].to_numpy() >= threshold).astype(np.float32)
    )
    assert "label" not in syn.interactions  # the input is not modified
    prep = prepare(syn, threshold, SplitConfig(), history_len=2)
    assert np.array_equal(
        prep.frame["label"].to_numpy(), (prep.frame["rating"].to_numpy() >= threshold).astype(np.float32)
    )


def test_labels_on_ml100k(ml_prep):
    f = ml_prep.frame
    assert np.array_equal(f["label"].to_numpy() == 1, f["rating"].to_numpy() >= 4)
    assert 0.5 < f["label"].mean() < 0.6  # 55,375 of 100,000 ratings are 4 or 5


# ------------------------------------------------------------------------------ (g) re-rank


@pytest.fixture(scope="module")
def kar_prep(syn):
    return prepare(syn, 4, SplitConfig(protocol="temporal", prompt_max_len=30), history_len=4)


def user_chunks(prep, split, size):
    rows = prep.rows(split)
    f = prep.frame
    out = []
    for _, g in f.iloc[rows].groupby("u", sort=True):
        idx = g.index.to_numpy()
        out += [(int(g["u"].iat[0]), idx[s : s + size]) for s in range(0, len(idx), size)]
    return out


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("chunk,list_len", [(4, 10), (3, 5)])
def test_kar_lists(kar_prep, split, chunk, list_len):
    prep = kar_prep
    f = prep.frame
    lists = kar_lists(prep, split, chunk=chunk, list_len=list_len, seed=1)
    chunks = user_chunks(prep, split, chunk)
    assert len(lists) == len(chunks) > 0
    assert lists.items.shape == lists.labels.shape == (len(chunks), list_len)
    assert lists.mask.all(), "KAR lists are full: no padding"
    seen = f.groupby("u")["i"].agg(set).to_dict()
    label_of = {(u, i): lab for u, i, lab in f[["u", "i", "label"]].itertuples(index=False)}
    for k, (u, rows) in enumerate(chunks):
        assert lists.user[k] == u
        items, labels = lists.items[k].tolist(), lists.labels[k].tolist()
        assert len(set(items)) == list_len, "no duplicate items within a list"
        chunk_items = f["i"].to_numpy()[rows].tolist()
        got = dict(zip(items, labels))
        for i in chunk_items:
            assert got[i] == label_of[(u, i)]
        negatives = [i for i in items if i not in chunk_items]
        assert len(negatives) == list_len - len(chunk_items)
        assert all(got[i] == 0 for i in negatives)
        assert not set(negatives) & seen[u], "negatives are never the user's own items"
        assert all(1 <= i <= prep.spec.num_items for i in negatives)
    assert (lists.initial == 0).all()
    # the shuffle puts chunk items at different positions
    assert len({tuple(np.flatnonzero(lists.labels[k] > 0)) for k in range(len(lists))}) > 1
    again = kar_lists(prep, split, chunk=chunk, list_len=list_len, seed=1)
    assert np.array_equal(again.items, lists.items)


def test_kar_lists_without_exclusion_samples_like_kar(kar_prep):
    # KAR's random.sample over the whole catalogue: distinct negatives, which may be user items
    f = kar_prep.frame
    seen = f.groupby("u")["i"].agg(set).to_dict()
    chunks = user_chunks(kar_prep, "test", 4)
    lists = kar_lists(kar_prep, "test", exclude_user_items=False, seed=3)
    assert lists.items.shape == (len(chunks), 10) and lists.mask.all()
    hits = 0
    for k, (u, rows) in enumerate(chunks):
        chunk_items = f["i"].to_numpy()[rows].tolist()
        items = lists.items[k].tolist()
        negatives = list(items)
        for i in chunk_items:
            negatives.remove(i)  # every chunk item is in the list
        assert len(negatives) == 10 - len(chunk_items) == len(set(negatives))
        hits += len(set(negatives) & seen[u])
    assert hits > 0, "without the exclusion some negatives are the user's own items"


def test_kar_lists_small_catalogue():
    # users who rated almost the whole catalogue: negatives must still be unique and not positives
    data = load_synthetic(num_users=6, num_items=12, num_themes=2, min_len=10, max_len=12, seed=1)
    prep = prepare(data, 4, SplitConfig(leakage_guard=False, ratios=(0.5, 0.0, 0.5)), history_len=2)
    for seed in range(5):
        lists = kar_lists(prep, "test", chunk=4, list_len=10, seed=seed)
        assert len(lists) > 0
        for k, (u, rows) in enumerate(user_chunks(prep, "test", 4)):
            row = lists.items[k].tolist()
            assert lists.user[k] == u and len(set(row)) == 10
            chunk_items = prep.frame["i"].to_numpy()[rows].tolist()
            assert sorted(i for i in row if i in chunk_items) == sorted(chunk_items)
    with pytest.raises(AssertionError, match="catalogue size"):
        kar_lists(prep, "test", chunk=4, list_len=13)


@pytest.mark.parametrize("list_len,min_len", [(5, 2), (10, 1)])
def test_ranked_lists_sorted_by_score(kar_prep, list_len, min_len):
    prep = kar_prep
    f = prep.frame
    rows = prep.rows("test")
    scores = np.random.default_rng(0).normal(size=len(rows)).astype(np.float32)
    score_of = dict(zip(rows.tolist(), scores.tolist()))
    lists = ranked_lists(prep, "test", scores, list_len=list_len, min_len=min_len)
    chunks = [(u, c) for u, c in user_chunks(prep, "test", list_len) if len(c) >= min_len]
    assert len(lists) == len(chunks) > 0
    assert lists.items.shape == (len(chunks), list_len)
    for k, (u, c) in enumerate(chunks):
        assert lists.user[k] == u
        n = len(c)
        init = lists.initial[k]
        assert np.all(np.diff(init[:n]) <= 0), "sorted by score, highest first"
        assert np.isneginf(init[n:]).all() and (lists.items[k, n:] == PAD).all() and (lists.labels[k, n:] == 0).all()
        assert (lists.items[k, :n] != PAD).all() and lists.mask[k].sum() == n
        order = sorted(c.tolist(), key=lambda r: -score_of[r])
        assert lists.items[k, :n].tolist() == f["i"].to_numpy()[order].tolist()
        assert lists.labels[k, :n].tolist() == f["label"].to_numpy()[order].tolist()
        assert np.allclose(init[:n], [score_of[r] for r in order])
    t = lists.tensors()
    assert t["items"].shape == (len(chunks), list_len) and t["mask"].sum().item() == sum(len(c) for _, c in chunks)
    with pytest.raises(AssertionError):
        ranked_lists(prep, "test", scores[:-1])


def test_ranked_lists_keep_only_the_chosen_rows_and_ranker_period_is_a_time_cut(kar_prep):
    """`rerank.ranker_period`: the ranker fits the train period's earliest rows; lists are cut from
    the later rows only, so no list row was ever a ranker training row."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from rlrec.downstream.lists import ranker_rows

    prep = kar_prep
    rows = prep.rows("train")
    ctx = SimpleNamespace(prep=prep, cfg=OmegaConf.create({"rerank": {"ranker_period": 0.5}}))
    ranker = ranker_rows(ctx)
    stamps = prep.frame["timestamp"].to_numpy()[rows]
    assert ranker.shape == (len(rows),) and 0 < ranker.sum() < len(rows)
    assert stamps[ranker].max() <= stamps[~ranker].min()  # a global time cut
    scores = np.random.default_rng(0).normal(size=len(rows)).astype(np.float32)
    lists = ranked_lists(prep, "train", scores, list_len=5, keep=~ranker)
    listed = set(lists.items[lists.mask].tolist())
    f = prep.frame
    later = set(zip(f["u"].to_numpy()[rows[~ranker]].tolist(), f["i"].to_numpy()[rows[~ranker]].tolist()))
    pairs = {(int(u), int(i)) for u, row, m in zip(lists.user, lists.items, lists.mask) for i in row[m]}
    assert pairs <= later and len(listed) > 0
    per_user = f.iloc[rows[~ranker]].groupby("u").size().to_numpy()  # later rows of each user
    sizes = [min(5, n - s) for n in per_user for s in range(0, n, 5)]  # chunks of 5 in time order
    kept = [k for k in sizes if k >= 2]  # min_len
    assert len(lists) == len(kept) and lists.mask.sum() == sum(kept)
    whole = OmegaConf.create({"rerank": {}})
    assert ranker_rows(SimpleNamespace(prep=prep, cfg=whole)).all()  # LibRerank's protocol: every train row
    with pytest.raises(ValueError, match="ranker_period"):
        ranker_rows(SimpleNamespace(prep=prep, cfg=OmegaConf.create({"rerank": {"ranker_period": 1.5}})))


# ------------------------------------------------------------------------------- (h) prompts

COT_ENTRY = re.compile(r"\['(.*?)', (\d+)\]")


@pytest.mark.parametrize("cap", [5, 30])
def test_user_prompts_show_exactly_the_prompt_history(syn, cap):
    prep = prepare(syn, 4, SplitConfig(prompt_max_len=cap), history_len=4)
    f = prep.frame
    split = split_of(prep)
    titles = prep.items.set_index("item_id")["title"]
    prompts = PromptView(prep).user_prompts("trackrec_cot")
    assert sorted(prompts) == list(range(1, prep.spec.num_users + 1))
    want = expected_prompt_len(f, cap)
    for u, text in prompts.items():
        g = f[f["u"] == u]
        mine = g[split[g.index.to_numpy()] == "prompt"]
        assert len(mine) == want[prep.user_ids[u - 1]]
        shown = COT_ENTRY.findall(text)
        assert [t for t, _ in shown] == [titles[i] for i in mine["item_id"]]
        assert [int(r) for _, r in shown] == mine["rating"].astype(int).tolist()
        prompt_titles = set(titles[mine["item_id"]])
        samples = g[split[g.index.to_numpy()] != "prompt"]
        for i in samples["item_id"]:
            if titles[i] not in prompt_titles:  # (two items may share a title)
                assert f"'{titles[i]}'" not in text
        assert text.startswith("Here is a list of movies that a user has watched")


def test_prompt_history_without_guard_is_recent_train_rows(syn):
    prep = prepare(syn, 4, SplitConfig(leakage_guard=False, prompt_max_len=5), history_len=4)
    f = prep.frame
    split = split_of(prep)
    hist = prep.prompt_history()
    for u, rows in hist.items():
        train_rows = [r for r in np.flatnonzero(f["u"].to_numpy() == u) if split[r] == "train"]
        assert rows.tolist() == train_rows[-5:]
    assert set(hist) == set(f.loc[split == "train", "u"])


def test_custom_template_file(tmp_path, kar_prep):
    path = tmp_path / "mine.j2"
    path.write_text(
        "{{ user.gender }}|{% for h in history %}{{ h.item_id }}:{{ h.label | int }};{% endfor %}|{{ domain.item }}"
    )
    view = PromptView(kar_prep, domain={"item": "song"})
    out = view.user_prompts(str(path), users=[1, 2])
    f = kar_prep.frame
    for u in (1, 2):
        rows = view.histories[u]
        expect = "".join(
            f"{i}:{int(lab)};" for i, lab in zip(f["item_id"].to_numpy()[rows], f["label"].to_numpy()[rows])
        )
        assert out[u] == f"{kar_prep.users['gender'].iloc[u - 1]}|{expect}|song"
    # a path without the .j2 suffix works as well, and item prompts render per catalogue item
    txt = tmp_path / "item.txt"
    txt.write_text("<{{ item.title }}>")
    items = view.item_prompts(str(txt))
    assert len(items) == kar_prep.spec.num_items
    assert items[3] == f"<{kar_prep.items['title'].iloc[2]}>"


def test_unknown_template_lists_available(kar_prep):
    with pytest.raises(DataError) as e:
        PromptView(kar_prep).user_prompts("no_such_template")
    msg = str(e.value)
    assert "no_such_template" in msg
    for name in ("kar_user_movie", "trackrec_cot", "trackrec_rec", "reclaif_judge"):
        assert name in msg


def test_template_errors_name_the_file(tmp_path, kar_prep):
    bad = tmp_path / "bad.j2"
    bad.write_text("line one\n{% for h in history %}")
    with pytest.raises(DataError, match=r"bad\.j2: line \d+: template syntax error"):
        PromptTemplate(str(bad))
    undefined = tmp_path / "undef.j2"
    undefined.write_text("{{ nothing_here }}")
    with pytest.raises(DataError, match=r"undef\.j2: .*nothing_here"):
        PromptView(kar_prep).user_prompts(str(undefined), users=[1])


def test_trackrec_prompt_counts_on_ml100k(ml_prep):
    view = PromptView(ml_prep)
    prompts = view.user_prompts("trackrec_cot", users=[1, 2])
    f = ml_prep.frame
    titles = ml_prep.items.set_index("item_id")["title"]
    for u, text in prompts.items():
        n = int((f["u"] == u).sum())
        shown = COT_ENTRY.findall(text)
        assert len(shown) == min(math.ceil(n / 2), 30)
        rows = f.index[(f["u"] == u) & (split_of(ml_prep) == "prompt")]
        assert [t for t, _ in shown] == [titles[i] for i in f.loc[rows, "item_id"]]


def test_ranked_lists_carry_each_rows_personal_vector(kar_prep):
    """PRM's personalised vectors travel with their rows through the sort; padding gets zeros."""
    prep = kar_prep
    rows = prep.rows("test")
    rng = np.random.default_rng(1)
    scores = rng.normal(size=len(rows)).astype(np.float32)
    vectors = rng.normal(size=(len(rows), 3)).astype(np.float32)
    vectors[:, 0] = scores  # column 0 = the row's own score: readable after the sort
    lists = ranked_lists(prep, "test", scores, list_len=5, vectors=vectors)
    assert lists.pv.shape == (len(lists), 5, 3)
    np.testing.assert_array_equal(lists.pv[..., 0][lists.mask], lists.initial[lists.mask])
    assert (lists.pv[~lists.mask] == 0).all()
    sub = lists.subset(np.arange(len(lists)) % 2 == 0)
    np.testing.assert_array_equal(sub.pv, lists.pv[::2])
    t = lists.tensors()
    assert t["initial_pv"].shape == (len(lists), 5, 3) and t["initial_pv"].dtype.is_floating_point
    assert "initial_pv" not in ranked_lists(prep, "test", scores, list_len=5).tensors()


def test_kar_lists_ordered_by_a_scorer(kar_prep):
    """`rerank=kar_ranked`: the same lists as KAR's (same items, labels, users), each ordered by the
    scorer's scores, highest first, with the scores and vectors moved along; the scorer sees each
    list's first interaction as its anchor; `keep` lists only the chosen rows."""
    prep = kar_prep
    f = prep.frame
    calls = {}

    def scorer(user, items, anchor):
        calls["anchor"] = anchor
        s = (items * 7919 % 101).astype(np.float32)  # any fixed function of the item
        return s, np.stack([s, items.astype(np.float32)], -1)

    plain = kar_lists(prep, "test", seed=4)
    ranked = kar_lists(prep, "test", seed=4, scorer=scorer)
    np.testing.assert_array_equal(plain.user, ranked.user)
    for k in range(len(plain)):
        assert dict(zip(plain.items[k], plain.labels[k])) == dict(zip(ranked.items[k], ranked.labels[k]))
    assert np.all(np.diff(ranked.initial, axis=1) <= 0), "highest score first"
    np.testing.assert_array_equal(ranked.initial, (ranked.items * 7919 % 101).astype(np.float32))
    np.testing.assert_array_equal(ranked.pv[..., 1], ranked.items.astype(np.float32))
    firsts = [rows[0] for _, rows in user_chunks(prep, "test", 4)]
    np.testing.assert_array_equal(calls["anchor"], firsts)
    assert (f["u"].to_numpy()[calls["anchor"]] == ranked.user).all()

    keep = np.arange(len(prep.rows("train"))) % 3 != 0
    some = kar_lists(prep, "train", seed=4, keep=keep)
    rows = prep.rows("train")[keep]
    kept = set(zip(f["u"].to_numpy()[rows].tolist(), f["i"].to_numpy()[rows].tolist()))
    seen = f.groupby("u")["i"].agg(set).to_dict()
    own = {(int(u), int(i)) for u, row in zip(some.user, some.items) for i in row if i in seen[u]}
    assert own == kept  # negatives are never the user's items: a list's own items are exactly the kept rows
    assert len(some) == sum(math.ceil(n / 4) for n in f.iloc[rows].groupby("u").size())
