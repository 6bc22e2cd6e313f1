"""Every loader on small fixture files written here in the datasets' published formats, the
embedded ML-100K, and malformed inputs (each must raise DataError naming the file and the line
or field)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlrec.data.amazon import load_amazon
from rlrec.data.esci import load_esci
from rlrec.data.lastfm import load_lastfm
from rlrec.data.movielens import embedded_movielens100k_dir, load_movielens1m, load_movielens100k
from rlrec.data.schema import DataError


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time (to show nothing is written)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*"))}


def inter_rows(data) -> list[tuple]:
    df = data.interactions.sort_values(["user_id", "item_id", "timestamp"])
    return [
        (u, i, float(r), int(t))
        for u, i, r, t in df[["user_id", "item_id", "rating", "timestamp"]].itertuples(index=False)
    ]


# --------------------------------------------------------------------------------------- ML-1M

ML1M_RATINGS = [
    "1::1193::5::978300760",
    "1::661::3::978302109",
    "2::1193::4::978298413",
    "2::3408::2::978300275",
    "3::73::4::978297867",
]
ML1M_USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117"]
ML1M_MOVIES = [
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical",
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
    "3408::Erin Brockovich (2000)::Drama",
    "73::Misérables, Les (1995)::Drama|Musical",
]


def write_ml1m(folder: Path, ratings=ML1M_RATINGS, users=ML1M_USERS, movies=ML1M_MOVIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("ratings.dat", ratings), ("users.dat", users), ("movies.dat", movies)):
        # GroupLens ships these as latin-1 with '\n' line ends
        (folder / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def test_movielens1m_maps_every_field(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    before = snapshot(tmp_path)
    data = load_movielens1m(str(folder))
    assert snapshot(tmp_path) == before, "the loader must not write anything"

    assert data.name == "movielens1m"
    assert inter_rows(data) == [
        (1, 661, 3.0, 978302109),
        (1, 1193, 5.0, 978300760),
        (2, 1193, 4.0, 978298413),
        (2, 3408, 2.0, 978300275),
        (3, 73, 4.0, 978297867),
    ]
    assert data.interactions["rating"].dtype == np.float32
    assert data.interactions["timestamp"].dtype == np.int64

    users = data.users.set_index("user_id")
    assert users.loc[1, ["gender", "age", "occupation", "zip"]].tolist() == ["female", "under 18", "K-12 student", "4"]
    assert users.loc[2, ["gender", "age", "occupation", "zip"]].tolist() == ["male", "56+", "self-employed", "7"]
    assert users.loc[3, ["gender", "age", "occupation", "zip"]].tolist() == ["male", "25-34", "scientist", "5"]
    assert data.user_features == ("gender", "age", "occupation", "zip")

    items = data.items.set_index("item_id")
    assert len(items) == 4
    assert items.loc[73, "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert items.loc[73, "genre"] == "Drama" and items.loc[73, "genres"] == "Drama|Musical"
    assert items.loc[661, "genre"] == "Animation"
    assert items.loc[1193, "decade"] == "1970s"
    assert items.loc[3408, "decade"] == "2000s"
    assert data.item_features == ("genre", "decade")


@pytest.mark.parametrize("sep", ["\t", ","])
def test_movielens1m_wrong_delimiter_names_file_and_line(tmp_path, sep):
    ratings = list(ML1M_RATINGS)
    ratings[1] = ratings[1].replace("::", sep)
    folder = write_ml1m(tmp_path / "ml-1m", ratings=ratings)
    with pytest.raises(DataError) as e:
        load_movielens1m(str(folder))
    msg = str(e.value)
    assert "ratings.dat" in msg and "line 2" in msg and "'::'" in msg


def test_movielens1m_wrong_delimiter_in_users_file(tmp_path):
    users = [u.replace("::", ",") for u in ML1M_USERS]
    folder = write_ml1m(tmp_path / "ml-1m", users=users)
    with pytest.raises(DataError, match=r"users\.dat: line 1: .*'::'"):
        load_movielens1m(str(folder))


def test_movielens1m_non_numeric_rating_names_line_and_field(tmp_path):
    ratings = list(ML1M_RATINGS)
    ratings[2] = "2::1193::five::978298413"
    folder = write_ml1m(tmp_path / "ml-1m", ratings=ratings)
    with pytest.raises(DataError) as e:
        load_movielens1m(str(folder))
    msg = str(e.value)
    assert "ratings.dat" in msg and "line 3" in msg and "'rating'" in msg and "'five'" in msg


def test_movielens1m_missing_file_and_missing_path(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    (folder / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"movies\.dat"):
        load_movielens1m(str(folder))
    with pytest.raises(DataError, match="no path given"):
        load_movielens1m(None)
    with pytest.raises(DataError, match="not found"):
        load_movielens1m(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------------- ML-100K


@pytest.fixture(scope="module")
def ml100k():
    folder = embedded_movielens100k_dir()
    before = snapshot(folder)
    data = load_movielens100k()
    assert snapshot(folder) == before, "the loader must not write into the package"
    return data


def test_movielens100k_embedded_counts_and_features(ml100k):
    inter = ml100k.interactions
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943
    assert inter["item_id"].nunique() == 1682
    assert len(ml100k.items) == 1682 and len(ml100k.users) == 943
    assert set(inter["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert not inter.duplicated(["user_id", "item_id"]).any()
    items = ml100k.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story (1995)"
    assert ml100k.items["title"].iloc[0] == "Toy Story (1995)"
    assert items.loc[1, "decade"] == "1990s"
    assert set(items.loc[1, "genres"].split("|")) == {"Animation", "Children's", "Comedy"}
    assert ml100k.user_features == ("gender", "age", "occupation", "zip")
    users = ml100k.users.set_index("user_id")
    for col in ml100k.user_features:
        assert users[col].notna().all() and (users[col] != "").all()
    assert set(users["gender"]) == {"male", "female"}
    assert set(users["age"]) <= {"under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    # GroupLens u.user line 1: "1|24|M|technician|85711"
    assert users.loc[1, ["gender", "age", "occupation", "zip"]].tolist() == ["male", "18-24", "technician", "8"]


def test_movielens100k_folder_without_files(tmp_path):
    with pytest.raises(DataError, match=r"MovieLens100k_data\.parquet\.brotli"):
        load_movielens100k(str(tmp_path))


def test_movielens100k_missing_column_names_file(tmp_path):
    src = embedded_movielens100k_dir()
    for k in ("data", "items", "users"):
        df = pd.read_parquet(src / f"MovieLens100k_{k}.parquet.brotli")
        if k == "data":
            df = df.drop(columns="rating").head(50)
        df.to_parquet(tmp_path / f"MovieLens100k_{k}.parquet.brotli")
    with pytest.raises(DataError) as e:
        load_movielens100k(str(tmp_path))
    assert "MovieLens100k_data.parquet.brotli" in str(e.value) and "'rating'" in str(e.value)


# ------------------------------------------------------------------------------ Amazon 2018


def review(reviewer, asin, overall, t, **kw):
    obj = {
        "overall": overall,
        "verified": True,
        "reviewTime": "01 1, 2015",
        "reviewerID": reviewer,
        "asin": asin,
        "style": {"Format:": " Paperback"},
        "reviewerName": "Reader",
        "reviewText": "A fine book.",
        "summary": "Five Stars",
        "unixReviewTime": t,
    }
    obj.update(kw)
    return obj


REVIEWS = [
    review("A1REUF3A1YCPHM", "0001713353", 5.0, 1112140800),
    review("A1REUF3A1YCPHM", "0001061240", 3.0, 1120000000),
    review("AVP0HXC9FG790", "0001713353", 4.0, 1113000000, vote="2"),
    review("AVP0HXC9FG790", "0002005549", 1.0, 1114000000),  # no meta: placeholder title
    review("AVP0HXC9FG790", "0002005549", 1.0, 1114000000),  # exact duplicate in the 5-core file
]
META = [
    {
        "category": ["Books", "Children's Books", "Literature & Fiction"],
        "tech1": "",
        "description": ["A tale."],
        "fit": "",
        "title": "The King, the Mice and the Cheese",
        "also_buy": [],
        "tech2": "",
        "brand": "Nancy Gurney",
        "feature": [],
        "rank": "1,231,093 in Books (",
        "also_view": [],
        "main_cat": "Books",
        "similar_item": "",
        "date": "",
        "price": "",
        "asin": "0001713353",
        "imageURL": [],
        "imageURLHigh": [],
    },
    {"category": ["Books"], "title": "Mog's Christmas", "brand": "", "main_cat": "Books", "asin": "0001061240"},
    {"category": ["Books", "Arts"], "title": "Unreviewed", "brand": "X", "asin": "9999999999"},
    {"category": ["Books", "Children's Books"], "title": "The King, the Mice and the Cheese", "asin": "0001713353"},
]


def write_jsonl_gz(file: Path, lines) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(file, "wt", encoding="utf-8") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return file


def write_amazon(folder: Path, reviews=REVIEWS, meta=META) -> Path:
    write_jsonl_gz(folder / "Books_5.json.gz", reviews)
    write_jsonl_gz(folder / "meta_Books.json.gz", meta)
    return folder


def test_amazon_maps_reviews_and_meta(tmp_path):
    folder = write_amazon(tmp_path / "amazon")
    before = snapshot(tmp_path)
    data = load_amazon(str(folder), category="Books")
    assert snapshot(tmp_path) == before, "the loader must not write anything"

    assert inter_rows(data) == [
        ("A1REUF3A1YCPHM", "0001061240", 3.0, 1120000000),
        ("A1REUF3A1YCPHM", "0001713353", 5.0, 1112140800),
        ("AVP0HXC9FG790", "0001713353", 4.0, 1113000000),
        ("AVP0HXC9FG790", "0002005549", 1.0, 1114000000),
    ]
    assert data.interactions["rating"].dtype == np.float32
    items = data.items.set_index("item_id")
    assert "9999999999" not in items.index  # meta of items nobody reviewed is dropped
    assert items.loc["0001713353", "title"] == "The King, the Mice and the Cheese"
    assert items.loc["0001713353", "brand"] == "Nancy Gurney"
    assert items.loc["0001713353", "category"] == "Children's Books"  # first below the top level
    assert items.loc["0001061240", "category"] == "Books"  # only the top level
    assert items.loc["0001061240", "brand"] == "unknown"  # empty brand
    assert items.loc["0002005549", "title"] == "0002005549"  # no meta: the asin stands in
    assert data.item_features == ("brand", "category")
    assert sorted(data.users["user_id"]) == ["A1REUF3A1YCPHM", "AVP0HXC9FG790"]


def test_amazon_explicit_file_names(tmp_path):
    folder = tmp_path / "amazon"
    write_jsonl_gz(folder / "reviews.json.gz", REVIEWS[:2])
    write_jsonl_gz(folder / "my_meta.json.gz", META)
    data = load_amazon(str(folder), reviews_file="reviews.json.gz", meta_file="my_meta.json.gz")
    assert len(data.interactions) == 2


def test_amazon_non_numeric_overall_names_line_and_field(tmp_path):
    reviews = [REVIEWS[0], review("AVP0HXC9FG790", "0001713353", "five stars", 1113000000)]
    folder = write_amazon(tmp_path / "amazon", reviews=reviews)
    with pytest.raises(DataError) as e:
        load_amazon(str(folder))
    msg = str(e.value)
    assert "Books_5.json.gz" in msg and "line 2" in msg and "'overall'" in msg and "five stars" in msg


@pytest.mark.parametrize("bad", ['{"overall": 5.0, "reviewerID": "A", ', "[1, 2, 3]", "42"])
def test_amazon_bad_json_line_names_file_and_line(tmp_path, bad):
    folder = write_amazon(tmp_path / "amazon", reviews=[REVIEWS[0], REVIEWS[1], bad])
    with pytest.raises(DataError) as e:
        load_amazon(str(folder))
    assert "Books_5.json.gz" in str(e.value) and "line 3" in str(e.value)


def test_amazon_bad_json_in_meta_names_file_and_line(tmp_path):
    folder = write_amazon(tmp_path / "amazon", meta=[META[0], "{'asin': '0001061240', 'title': "])
    with pytest.raises(DataError, match=r"meta_Books\.json\.gz: line 2"):
        load_amazon(str(folder))


def test_amazon_non_utf8_names_file(tmp_path):
    folder = write_amazon(tmp_path / "amazon")
    with gzip.open(folder / "Books_5.json.gz", "wb") as fh:
        fh.write(json.dumps(REVIEWS[0]).encode() + b"\n")
        fh.write(b'{"reviewerID": "A", "asin": "B", "overall": 5.0, "unixReviewTime": 1, "reviewText": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"Books_5\.json\.gz: cannot read .*UTF-8"):
        load_amazon(str(folder))


def test_amazon_missing_review_field(tmp_path):
    r = review("A", "0001713353", 5.0, 1)
    del r["unixReviewTime"]
    folder = write_amazon(tmp_path / "amazon", reviews=[r])
    with pytest.raises(DataError, match=r"Books_5\.json\.gz: line 1: missing field\(s\) \['unixReviewTime'\]"):
        load_amazon(str(folder))


def test_amazon_not_gzip_names_file(tmp_path):
    folder = tmp_path / "amazon"
    folder.mkdir()
    (folder / "Books_5.json.gz").write_text(json.dumps(REVIEWS[0]) + "\n")
    write_jsonl_gz(folder / "meta_Books.json.gz", META)
    with pytest.raises(DataError, match=r"Books_5\.json\.gz: cannot read"):
        load_amazon(str(folder))


def test_amazon_missing_files_and_path(tmp_path):
    folder = tmp_path / "amazon"
    write_jsonl_gz(folder / "Books_5.json.gz", REVIEWS)
    with pytest.raises(DataError, match=r"meta_Books\*\.json\.gz"):
        load_amazon(str(folder))
    with pytest.raises(DataError, match="reviews file"):
        load_amazon(str(folder), category="Electronics")
    with pytest.raises(DataError, match=r"nothere\.json\.gz"):
        load_amazon(str(folder), reviews_file="nothere.json.gz", meta_file="Books_5.json.gz")
    with pytest.raises(DataError, match="no path given"):
        load_amazon(None)


# --------------------------------------------------------------------------------- Last.fm

LASTFM = {
    "user_artists.dat": ["userID\tartistID\tweight", "2\t51\t13883", "2\t52\t11690", "3\t51\t100", "3\t52\t7"],
    "artists.dat": [
        "id\tname\turl\tpictureURL",
        "51\tDuran Duran\thttp://www.last.fm/music/Duran+Duran\thttp://userserve-ak.last.fm/serve/252/155668.jpg",
        "52\tMorcheeba\thttp://www.last.fm/music/Morcheeba\thttp://userserve-ak.last.fm/serve/252/31857.jpg",
        "53\tAir\thttp://www.last.fm/music/Air\thttp://userserve-ak.last.fm/serve/252/15196.jpg",
        "54\tHocico\thttp://www.last.fm/music/Hocico\t",
    ],
    "user_taggedartists-timestamps.dat": [
        "userID\tartistID\ttagID\ttimestamp",
        "2\t52\t13\t1238536800000",
        "2\t52\t15\t1238536800000",
        "2\t51\t13\t1241128800000",
        "2\t53\t18\t1234000000000",  # tagged, never played: play count 0
        "3\t51\t13\t1275350400000",
        "3\t51\t14\t1270080000000",  # the first tagging time is the minimum, not the first line
    ],
    "tags.dat": ["tagID\ttagValue", "13\tchillout", "14\tdowntempo", "15\telectronic", "18\tpop"],
}


def write_lastfm(folder: Path, **override) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in {**LASTFM, **override}.items():
        (folder / name).write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return folder


def test_lastfm_tagged_interactions(tmp_path):
    folder = write_lastfm(tmp_path / "hetrec2011-lastfm-2k")
    before = snapshot(tmp_path)
    data = load_lastfm(str(folder))
    assert snapshot(tmp_path) == before, "the loader must not write anything"

    # one row per tagged (user, artist): first tag time in seconds, rating = play count
    assert inter_rows(data) == [
        (2, 51, 13883.0, 1241128800),
        (2, 52, 11690.0, 1238536800),
        (2, 53, 0.0, 1234000000),
        (3, 51, 100.0, 1270080000),
    ]
    items = data.items.set_index("item_id")
    assert items.loc[51, "title"] == "Duran Duran"
    assert items.loc[51, "tag"] == "chillout"  # tag 13 used twice on artist 51
    assert items.loc[52, "tag"] == "chillout"  # tie 13/15: the smaller tag id
    assert items.loc[53, "tag"] == "pop"
    assert items.loc[54, "tag"] == "unknown"  # never tagged
    assert data.item_features == ("tag",)
    assert sorted(data.users["user_id"]) == [2, 3]


def test_lastfm_played_interactions(tmp_path):
    folder = write_lastfm(tmp_path / "lastfm")
    data = load_lastfm(str(folder), interactions="played")
    assert inter_rows(data) == [
        (2, 51, 13883.0, 1241128800),
        (2, 52, 11690.0, 1238536800),
        (3, 51, 100.0, 1270080000),
        (3, 52, 7.0, 0),  # played, never tagged: no time
    ]
    with pytest.raises(DataError, match="'tagged' or 'played'"):
        load_lastfm(str(folder), interactions="listened")


def test_lastfm_without_tags_file_uses_tag_ids(tmp_path):
    folder = write_lastfm(tmp_path / "lastfm")
    (folder / "tags.dat").unlink()
    data = load_lastfm(str(folder))
    assert data.items.set_index("item_id").loc[53, "tag"] == "18"


def test_lastfm_missing_column_names_file_and_column(tmp_path):
    folder = write_lastfm(tmp_path / "lastfm", **{"user_artists.dat": ["userID\tartistID\tplays", "2\t51\t1"]})
    with pytest.raises(DataError) as e:
        load_lastfm(str(folder))
    assert "user_artists.dat" in str(e.value) and "'weight'" in str(e.value)


def test_lastfm_wrong_delimiter_names_file(tmp_path):
    lines = [line.replace("\t", ",") for line in LASTFM["user_taggedartists-timestamps.dat"]]
    folder = write_lastfm(tmp_path / "lastfm", **{"user_taggedartists-timestamps.dat": lines})
    with pytest.raises(DataError, match=r"user_taggedartists-timestamps\.dat: expected tab-separated"):
        load_lastfm(str(folder))


def test_lastfm_non_numeric_value_names_line(tmp_path):
    lines = list(LASTFM["user_artists.dat"])
    lines[3] = "3\t51\tlots"  # file line 4 (line 1 is the header)
    folder = write_lastfm(tmp_path / "lastfm", **{"user_artists.dat": lines})
    with pytest.raises(DataError, match=r"user_artists\.dat: line 4: field 'weight' must be numeric, got 'lots'"):
        load_lastfm(str(folder))


def test_lastfm_missing_file_and_path(tmp_path):
    folder = write_lastfm(tmp_path / "lastfm")
    (folder / "artists.dat").unlink()
    with pytest.raises(DataError, match=r"artists\.dat"):
        load_lastfm(str(folder))
    with pytest.raises(DataError, match="no path given"):
        load_lastfm(None)


# ------------------------------------------------------------------------------------ ESCI

EXAMPLES = pd.DataFrame(
    {
        "example_id": [0, 1, 2, 3, 4, 5, 6],
        "query": [
            "revent 80 cfm",
            "revent 80 cfm",
            "revent 80 cfm",
            "!awnmower tires",
            "!awnmower tires",
            "zapatos",
            "tv",
        ],
        "query_id": [0, 0, 0, 1, 1, 2, 3],
        "product_id": ["B000MOO21W", "B07X3Y6B1V", "B07WDM7MQQ", "B075SCHMPY", "B08L3B9B9P", "B07ES1", "B0TV01"],
        "product_locale": ["us", "us", "us", "us", "us", "es", "us"],
        "esci_label": ["I", "E", "S", "C", "E", "E", "E"],
        "small_version": [1, 1, 1, 1, 1, 1, 0],
        "large_version": [1, 1, 1, 1, 1, 1, 1],
        "split": ["train", "train", "train", "test", "test", "train", "train"],
    }
)
PRODUCTS = pd.DataFrame(
    {
        "product_id": ["B000MOO21W", "B07X3Y6B1V", "B07WDM7MQQ", "B075SCHMPY", "B08L3B9B9P", "B07ES1", "B0TV01"],
        "product_title": [
            "Panasonic FV-20VQ3 Fan",
            "Homewerks 7141-80 Fan",
            "Homewerks 7140-80",
            None,
            "Tire",
            "Zap",
            "TV",
        ],
        "product_description": [None, "desc", None, None, None, None, None],
        "product_bullet_point": ["bp", None, None, None, None, None, None],
        "product_brand": ["Panasonic", "Homewerks", "Homewerks", "RamPro", None, "Zap", "Sony"],
        "product_color": ["White", None, "White", "Black", None, None, None],
        "product_locale": ["us", "us", "us", "us", "us", "es", "us"],
    }
)


def write_esci(folder: Path, examples=EXAMPLES, products=PRODUCTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    examples.to_parquet(folder / "shopping_queries_dataset_examples.parquet", index=False)
    products.to_parquet(folder / "shopping_queries_dataset_products.parquet", index=False)
    return folder


def test_esci_maps_queries_products_and_gains(tmp_path):
    folder = write_esci(tmp_path / "esci")
    before = snapshot(tmp_path)
    data = load_esci(str(folder))  # us, small_version
    assert snapshot(tmp_path) == before, "the loader must not write anything"

    inter = data.interactions
    assert inter["user_id"].tolist() == [0, 0, 0, 1, 1]
    assert inter["item_id"].tolist() == ["B000MOO21W", "B07X3Y6B1V", "B07WDM7MQQ", "B075SCHMPY", "B08L3B9B9P"]
    assert inter["rating"].tolist() == [0.0, 3.0, 2.0, 1.0, 3.0]  # I=0, E=3, S=2, C=1
    assert inter["timestamp"].tolist() == [0, 1, 2, 3, 4]  # row order stands in for time
    users = data.users.set_index("user_id")
    assert users.loc[0, "query"] == "revent 80 cfm" and users.loc[1, "query"] == "!awnmower tires"
    items = data.items.set_index("item_id")
    assert "B07ES1" not in items.index  # other locale
    assert items.loc["B000MOO21W", "title"] == "Panasonic FV-20VQ3 Fan"
    assert items.loc["B075SCHMPY", "title"] == ""  # missing title
    assert items.loc["B07X3Y6B1V", "brand"] == "Homewerks"
    assert items.loc["B08L3B9B9P", "brand"] == "unknown"
    assert data.item_features == ("brand",)


def test_esci_all_locales_and_versions(tmp_path):
    folder = write_esci(tmp_path / "esci")
    data = load_esci(str(folder), locale=None, version=None)
    assert len(data.interactions) == 7
    assert data.interactions.set_index("item_id").loc["B07ES1", "rating"] == 3.0
    assert load_esci(str(folder), version="large_version").interactions["item_id"].iloc[-1] == "B0TV01"
    with pytest.raises(DataError, match="no column 'tiny_version'"):
        load_esci(str(folder), version="tiny_version")


def test_esci_bad_label_names_file_row_and_field(tmp_path):
    ex = EXAMPLES.copy()
    ex.loc[4, "esci_label"] = "X"
    folder = write_esci(tmp_path / "esci", examples=ex)
    with pytest.raises(DataError) as e:
        load_esci(str(folder))
    msg = str(e.value)
    assert "shopping_queries_dataset_examples.parquet" in msg and "esci_label" in msg and "'X'" in msg
    assert "row 4" in msg  # the row of the file, not of the filtered frame


def test_esci_bad_label_row_counts_filtered_rows(tmp_path):
    ex = EXAMPLES.copy()
    ex.loc[6, "esci_label"] = "exact"  # row 5 (locale 'es') is filtered out before the check
    folder = write_esci(tmp_path / "esci", examples=ex)
    with pytest.raises(DataError, match=r"row 6: esci_label"):
        load_esci(str(folder), version=None)


def test_esci_missing_column_names_file_and_column(tmp_path):
    folder = write_esci(tmp_path / "esci", products=PRODUCTS.drop(columns="product_title"))
    with pytest.raises(DataError) as e:
        load_esci(str(folder))
    assert "shopping_queries_dataset_products.parquet" in str(e.value) and "'product_title'" in str(e.value)
    folder = write_esci(tmp_path / "esci2", examples=EXAMPLES.drop(columns="esci_label"))
    with pytest.raises(DataError, match=r"examples\.parquet: missing column\(s\) \['esci_label'\]"):
        load_esci(str(folder))


def test_esci_missing_file_and_path(tmp_path):
    folder = write_esci(tmp_path / "esci")
    (folder / "shopping_queries_dataset_products.parquet").unlink()
    with pytest.raises(DataError, match=r"shopping_queries_dataset_products\.parquet|products parquet"):
        load_esci(str(folder))
    (folder / "shopping_queries_dataset_products.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read parquet"):
        load_esci(str(folder))
    with pytest.raises(DataError, match="no path given"):
        load_esci(None)
