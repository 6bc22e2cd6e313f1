"""`dataset=table` and `dataset=recbole`: ML-100K written out as CSV, parquet and RecBole atomic
files reads back as the very RecData and split `dataset=movielens100k` gives; the example YAMLs
compose; side-feature types and time parsing on small files; and a battery of malformed files,
each with its one-line error naming the file, the line or field."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from rlrec.configs import conf_dir
from rlrec.data.__main__ import main as data_main
from rlrec.data.features import prepare
from rlrec.data.movielens import load_movielens100k
from rlrec.data.recbole import load_recbole
from rlrec.data.schema import DataError
from rlrec.data.splits import SplitConfig
from rlrec.data.table import load_table, write_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "conf"


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens100k()


@pytest.fixture(scope="module")
def written(ml100k, tmp_path_factory):
    """ML-100K in the three forms, as `python -m rlrec.data write` writes them."""
    root = tmp_path_factory.mktemp("ml100k")
    for form, folder in (("csv", "ml100k_csv"), ("parquet", "ml100k_parquet"), ("recbole", "ml100k")):
        write_files(ml100k, root / folder, form)
    return root


def _example(name: str, folder: Path):
    """The shipped example YAML `name`, composed as a user runs it, with its files under `folder`."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"dataset={name}", f"hydra.searchpath=[file://{EXAMPLES}]", f"dataset.path={folder}"]
        )
    return cfg.dataset


def _same(a, b):
    for frame in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(a, frame), getattr(b, frame), check_like=True, obj=frame)
    assert a.user_features == b.user_features and a.item_features == b.item_features


@pytest.mark.parametrize(
    "example,folder", [("ml100k_csv", "ml100k_csv"), ("ml100k_parquet", "ml100k_parquet"), ("ml100k_recbole", "ml100k")]
)
def test_ml100k_through_every_form_is_the_same_data_and_split(ml100k, written, example, folder):
    node = _example(example, written / folder)
    data = instantiate(node.loader)()
    _same(data, ml100k)
    assert (len(data.users), len(data.items), len(data.interactions)) == (943, 1682, 100_000)
    split = SplitConfig()
    ours, theirs = prepare(data, 4, split), prepare(ml100k, 4, split)
    cols = ["user_id", "item_id", "rating", "timestamp", "label", "split", "pos", "u", "i"]
    pd.testing.assert_frame_equal(ours.frame[cols], theirs.frame[cols])  # row for row
    np.testing.assert_array_equal(ours.history, theirs.history)
    np.testing.assert_array_equal(ours.spec.user_table, theirs.spec.user_table)
    np.testing.assert_array_equal(ours.spec.item_table, theirs.spec.item_table)
    assert [f.vocab_size for f in ours.spec.fields] == [f.vocab_size for f in theirs.spec.fields]


def test_the_worked_example_of_docs_data_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/data.md's `python -m rlrec.data` commands, in order, from a checkout (here a folder that
    links the repository's examples/conf): the files are written, each form describes ML-100K."""
    import json
    import shlex

    page = (EXAMPLES.parents[1] / "docs" / "data.md").read_text().split("## Worked example")[1].split("\n## ")[0]
    commands = [ln.strip() for ln in page.splitlines() if ln.startswith("python -m rlrec.data ")]
    assert [c.split()[3] for c in commands] == ["write"] * 3 + ["describe"] * 3
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "conf").symlink_to(EXAMPLES)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        capsys.readouterr()
        assert data_main(shlex.split(command)[3:]) == 0, command
        out = " ".join(capsys.readouterr().out.split())
        if "describe" in command:
            assert "users 943 · items 1,682 (catalogue 1,682) · interactions 100,000" in out, out
            assert "│ prompt │ 22,723 │ 943 │" in out and "│ test │ 7,727 │ 164 │" in out, out
    assert data_main(["describe", "dataset=ml100k_parquet", f"hydra.searchpath=[file://{EXAMPLES}]", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100_000)
    assert info["peak_rss_gb"] > 0 and 0 < info["load_seconds"] <= info["seconds"]


# ---- types, time, labels ---------------------------------------------------------------------------
INTER = "uid,iid,stars,when\na,x,5,2001-01-02\na,y,2,2001-01-03\nb,x,4,2001-01-01 10:00:00\n"


def test_string_ids_dates_and_side_feature_types(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "r.csv").write_text(INTER)
    (folder / "items.tsv").write_text(
        "iid\tname\tprice\ttags\tblurb\nx\tThe X\t1.5\tsci|fi\tabout x\ny\tThe Y\t9\t\tabout y\n"
    )
    data = load_table(
        str(folder),
        interactions={"file": "r.csv", "user": "uid", "item": "iid", "rating": "stars", "timestamp": "when"},
        items={
            "file": "items.tsv",
            "id": "iid",
            "title": "name",
            "features": {"price": {"type": "numeric", "bins": 2}, "tags": "multi", "blurb": "text"},
        },
    )
    inter = data.interactions
    assert inter["user_id"].tolist() == ["a", "a", "b"] and inter["item_id"].tolist() == ["x", "y", "x"]
    assert inter["timestamp"].tolist() == [978393600, 978480000, 978343200]  # UTC seconds
    assert inter["rating"].dtype == np.float32 and inter["rating"].tolist() == [5, 2, 4]
    items = data.items.set_index("item_id")
    assert items.loc["x", "title"] == "The X" and items.loc["y", "title"] == "The Y"
    assert items.loc["x", "tags"] == "sci" and items.loc["x", "tags_list"] == "sci, fi"
    assert pd.isna(items.loc["y", "tags"])  # an empty list: no value, the field's OOV index
    assert items.loc["x", "price"] != items.loc["y", "price"]  # two quantile bins
    assert data.item_features == ("price", "tags")  # text is kept, not a field
    assert items.loc["y", "blurb"] == "about y"
    assert data.users["user_id"].tolist() == ["a", "b"]  # no users file: the interactions' users


def test_a_label_column_and_row_order_time(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "clicks.csv").write_text("u,i,click\n1,7,1\n1,8,0\n2,7,1\n")
    data = load_table(
        str(folder),
        interactions={
            "file": "clicks.csv",
            "user": "u",
            "item": "i",
            "rating": None,
            "label": "click",
            "timestamp": None,
        },
    )
    assert data.interactions["rating"].tolist() == [1, 0, 1]
    assert data.interactions["timestamp"].tolist() == [0, 1, 2]  # the file's row order
    assert data.extra["label_column"] == "click"
    assert data.items["title"].tolist() == ["7", "8"]


def test_a_time_format_and_parquet_timestamps(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "r.csv").write_text("user_id,item_id,rating,t\n1,2,5,04/01/2001\n")
    data = load_table(str(folder), interactions={"file": "r.csv", "timestamp": "t", "time_format": "%d/%m/%Y"})
    assert data.interactions["timestamp"].tolist() == [978566400]
    frame = pd.DataFrame({"user_id": [1], "item_id": [2], "rating": [5.0], "t": pd.to_datetime(["2001-01-04"])})
    frame.to_parquet(folder / "r.parquet")
    data = load_table(str(folder), interactions={"file": "r.parquet", "timestamp": "t"})
    assert data.interactions["timestamp"].tolist() == [978566400]


# ---- malformed files: one error each, naming the file and the line or field ------------------------
GOOD_ITEMS = "item_id,title\n1,A\n2,B\n"
CASES = {
    "missing column": (
        {"r.csv": "user_id,item_id,stars\n1,1,5\n"},
        {"interactions": {"file": "r.csv", "timestamp": None}},
        r"r\.csv: missing column\(s\) \['rating'\]; the file has \['user_id', 'item_id', 'stars'\]",
    ),
    "not a number": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n1,2,five,11\n"},
        {"interactions": {"file": "r.csv"}},
        r"r\.csv: line 3: rating 'rating' must be a number, got 'five'",
    ),
    "not a time": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n1,2,4,Toy Story\n"},
        {"interactions": {"file": "r.csv"}},
        r"r\.csv: line 3: time column 'timestamp' is not a time: 'Toy Story'",
    ),
    "a date, then not": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,2001-01-02\n1,2,4,yesterday\n"},
        {"interactions": {"file": "r.csv"}},
        r"r\.csv: line 3: time column 'timestamp' is not a time: 'yesterday' \(expected seconds since 1970 or a date",
    ),
    "wrong field count": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n1,2,4,11,extra\n"},
        {"interactions": {"file": "r.csv"}},
        r"r\.csv: line 3: expected 4 fields separated by ',', got 5",
    ),
    "duplicate ids": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n", "items.csv": "item_id,title\n1,A\n2,B\n1,C\n"},
        {"interactions": {"file": "r.csv"}, "items": {"file": "items.csv", "title": "title"}},
        r"items\.csv: line 4: duplicate item id 1 \(first at line 2\)",
    ),
    "unknown user": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n9,2,4,11\n", "users.csv": "user_id,g\n1,f\n"},
        {"interactions": {"file": "r.csv"}, "users": {"file": "users.csv", "features": {"g": "categorical"}}},
        r"r\.csv: line 3: user 9 is not in .*users\.csv \(1 interaction\(s\)",
    ),
    "unknown item": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,3,5,10\n", "items.csv": GOOD_ITEMS},
        {"interactions": {"file": "r.csv"}, "items": {"file": "items.csv", "title": "title"}},
        r"r\.csv: line 2: item 3 is not in .*items\.csv",
    ),
    "empty id": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,,5,10\n"},
        {"interactions": {"file": "r.csv"}},
        r"r\.csv: line 2: item id column 'item_id' is empty",
    ),
    "label not 0/1": (
        {"r.csv": "user_id,item_id,click,timestamp\n1,1,1,10\n1,2,3,11\n"},
        {"interactions": {"file": "r.csv", "rating": None, "label": "click"}},
        r"r\.csv: line 3: label 'click' must be 0 or 1, got 3",
    ),
    "unknown feature type": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n", "items.csv": "item_id,title,c\n1,A,x\n"},
        {"interactions": {"file": "r.csv"}, "items": {"file": "items.csv", "features": {"c": "category"}}},
        r"dataset\.loader\.items\.features\.c: type must be one of \['categorical', 'numeric', 'multi', 'text'\], got 'category'",
    ),
    "unknown option": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n"},
        {"interactions": {"file": "r.csv", "users": "u"}},
        r"dataset\.loader\.interactions: unknown option\(s\) \['users'\]",
    ),
    "no file": ({}, {"interactions": {"file": "ratings.csv"}}, r"the interactions file not found at '.*ratings\.csv'"),
    "empty file": ({"r.csv": ""}, {"interactions": {"file": "r.csv"}}, r"r\.csv: the file is empty"),
    "numeric feature": (
        {"r.csv": "user_id,item_id,rating,timestamp\n1,1,5,10\n", "users.csv": "user_id,age\n1,old\n"},
        {"interactions": {"file": "r.csv"}, "users": {"file": "users.csv", "features": {"age": "numeric"}}},
        r"users\.csv: line 2: numeric feature 'age' must be a number, got 'old'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_table_gives_its_one_line_error(tmp_path, case):
    files, mapping, message = CASES[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message) as err:
        load_table(str(tmp_path), **mapping)
    assert "\n" not in str(err.value)


def test_malformed_recbole_headers_and_fields(tmp_path):
    (tmp_path / "d.inter").write_text("user_id:token\titem_id:tok\n1\t2\n")
    with pytest.raises(DataError, match=r"d\.inter: line 1: column 'item_id:tok' is not `field:type`"):
        load_recbole(str(tmp_path), name="d")
    (tmp_path / "d.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t2\t5\n")
    with pytest.raises(
        DataError, match=r"d\.inter: line 1: no field 'timestamp' for dataset\.loader\.timestamp \(set it to null"
    ):
        load_recbole(str(tmp_path), name="d")
    data = load_recbole(str(tmp_path), name="d", timestamp=None)
    assert data.interactions[["user_id", "item_id"]].values.tolist() == [[1, 2]]


def test_recbole_fields_become_features_by_their_type(tmp_path):
    (tmp_path / "m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t100\n2\t11\t2\t50\n"
    )
    (tmp_path / "m.item").write_text(
        'item_id:token\tmovie_title:token_seq\tclass:token_seq\tyear:float\temb:float_seq\n10\tAlien "1979"\tHorror Sci-Fi\t1979\t0.1 0.2\n11\tHeat\tCrime\t1995\t0.3 0.4\n'
    )
    data = load_recbole(str(tmp_path), name="m")
    items = data.items.set_index("item_id")
    assert items.loc[10, "title"] == 'Alien "1979"'  # bare quotes: RecBole files are not CSV-quoted
    assert items.loc[10, "class"] == "Horror" and items.loc[10, "class_list"] == "Horror, Sci-Fi"
    assert data.item_features == ("class", "year")  # float_seq is not a field; the title is text
    assert items.loc[10, "emb"] == "0.1 0.2"


def test_an_empty_split_after_the_leakage_guard_names_it(tmp_path):
    (tmp_path / "r.csv").write_text("user_id,item_id,rating,timestamp\n1,1,5,10\n1,2,4,11\n")
    data = load_table(str(tmp_path), interactions={"file": "r.csv"})
    with pytest.raises(DataError, match=r"table: the valid split is empty after the leakage guard kept 1 of 2 rows"):
        prepare(data, 4, SplitConfig())


def test_a_label_column_needs_threshold_one(tmp_path):
    from rlrec.data.datamodule import RecDataModule

    (tmp_path / "r.csv").write_text("u,i,click\n1,7,1\n")
    loader = functools.partial(
        load_table,
        str(tmp_path),
        interactions={"file": "r.csv", "user": "u", "item": "i", "rating": None, "label": "click", "timestamp": None},
    )
    dm = RecDataModule("clicks", loader, {"protocol": "temporal"}, label_threshold=4)
    with pytest.raises(
        DataError,
        match=r"clicks: labels come from the 0/1 column 'click', so dataset\.label_threshold must be 1 \(got 4\)",
    ):
        dm.setup()


# ---- knowledge from files: every form reads to the same table -----------------------------------
def test_knowledge_texts_and_vectors_in_every_file_form_give_one_probe(tmp_path):
    import json
    from types import SimpleNamespace

    from rlrec.knowledge.files import probe_from_files
    from rlrec.runtime import artifacts

    texts = {"10": "likes noir", "30": "likes musicals", "99": "not a user here"}
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    encoder = SimpleNamespace(encode=lambda ts: np.array([[len(t), t.count("s"), 1.0] for t in ts], np.float32))
    prep = SimpleNamespace(
        user_ids=np.array([10, 20, 30]), item_ids=np.array([5]), spec=SimpleNamespace(num_users=3, num_items=1)
    )
    ctx = SimpleNamespace(prep=prep, encoder=encoder)

    forms = {}
    for form in ("klg", "jsonl", "parquet"):
        folder = tmp_path / form
        folder.mkdir()
        if form == "klg":
            (folder / "user.klg").write_text(json.dumps(texts))
        elif form == "jsonl":
            (folder / "user.jsonl").write_text(
                "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items())
            )
        else:
            pd.DataFrame({"id": list(texts), "text": list(texts.values())}).to_parquet(folder / "user.parquet")
        forms[form] = probe_from_files(ctx, folder)
    for p in forms.values():
        np.testing.assert_array_equal(p.vectors, forms["klg"].vectors)
        assert p.texts == {1: "likes noir", 3: "likes musicals"} and p.key == forms["klg"].key
    assert forms["klg"].vectors[2].tolist() == [0, 0, 0]  # user 20 has none: the padding row
    assert forms["klg"].vectors[1].tolist() == [10, 1, 1]

    ids = ["10", "20", "30"]
    npy, lists, columns = tmp_path / "npy", tmp_path / "lists", tmp_path / "columns"
    for folder in (npy, lists, columns):
        folder.mkdir()
    np.save(npy / "user_vectors.npy", vectors)
    (npy / "user_vectors.ids.json").write_text(json.dumps(ids))
    pd.DataFrame({"id": ids, "vector": list(vectors)}).to_parquet(lists / "user_vectors.parquet")
    pd.DataFrame({"id": ids, **{f"d{j}": vectors[:, j] for j in range(4)}}).to_parquet(columns / "user_vectors.parquet")
    got = [probe_from_files(ctx, f).vectors for f in (npy, lists, columns)]
    for g in got:
        np.testing.assert_array_equal(g, got[0])
    np.testing.assert_array_equal(got[0][1:], vectors)

    (tmp_path / "bad.jsonl").write_text('{"id": 1, "text": "ok"}\n{"id": 2}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: expected an object with an id and a text"):
        artifacts.read_texts(tmp_path / "bad.jsonl")
    pd.DataFrame({"id": ["1", "2"], "vector": [[1.0, 2.0], [1.0]]}).to_parquet(tmp_path / "ragged.parquet")
    with pytest.raises(DataError, match=r"ragged\.parquet: row 2: vector of length 1, row 1's is 2"):
        artifacts.read_vectors(tmp_path / "ragged.parquet")
