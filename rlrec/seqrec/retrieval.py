"""Retrieval baselines for the query setting (ESCI in RecLAIF, Table 2): sparse BM25 and a dense
retriever over any text encoder. Both rank documents by position in `corpus`, over the whole
corpus or restricted to a query's candidate list (ESCI: 15 candidates per query).

    bm25 = BM25Retriever(product_titles)
    top5 = bm25.rank("baby gift christmas", candidate_ids=[3, 17, 42, ...], k=5)
    dense = DenseRetriever(TextEncoder(...).encode, product_titles)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from scipy import sparse

from rlrec.knowledge.index import VectorIndex, l2_normalize

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens.

    >>> tokenize("Baby-Gift, Christmas 2024!")
    ['baby', 'gift', 'christmas', '2024']
    """
    return _WORD.findall(text.lower())


def top_ids(scores: np.ndarray, ids: np.ndarray, k: int | None) -> list[int]:
    """`ids` by descending score (ties keep the given order), at most k of them."""
    order = np.argsort(-scores, kind="stable")[: None if k is None else int(k)]
    return ids[order].tolist()


def _candidates(candidate_ids: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    ids = np.arange(n) if candidate_ids is None else np.asarray(candidate_ids, dtype=np.int64).reshape(-1)
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < n), f"candidate ids must lie in [0, {n})"
    return ids


class BM25Retriever:
    """Okapi BM25 (Robertson et al.): score(d, q) = Σ_{t ∈ q} idf(t) · tf·(k1 + 1) / (tf + k1·(1 − b + b·|d|/avgdl)),
    with the always-positive idf(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5)) (Lucene's; the classic
    ln((N − n_t + 0.5) / (n_t + 0.5)) turns negative for terms in over half the documents).
    A repeated query word counts once per occurrence (as rank_bm25 does); unknown words add 0.
    The per-(document, term) weights are precomputed once, so a query is one sparse mat-vec."""

    def __init__(self, corpus: Sequence[str], k1: float = 1.5, b: float = 0.75):
        assert len(corpus) > 0, "BM25 needs a non-empty corpus"
        docs = [tokenize(t) for t in corpus]
        self.vocab: dict[str, int] = {}
        rows, cols = [], []
        for d, toks in enumerate(docs):
            for tok in toks:
                rows.append(d)
                cols.append(self.vocab.setdefault(tok, len(self.vocab)))
        n_docs, n_terms = len(docs), max(len(self.vocab), 1)
        tf = sparse.csr_matrix(
            (np.ones(len(rows), np.float64), (rows, cols)), shape=(n_docs, n_terms)
        )  # (N, V) term counts (duplicates summed)
        tf.sum_duplicates()
        doc_len = np.asarray(tf.sum(1)).ravel()  # (N,)
        df = np.bincount(tf.indices, minlength=n_terms)  # (V,) documents holding each term
        self.idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))  # (V,)
        norm = k1 * (1 - b + b * doc_len / max(doc_len.mean(), 1e-12))  # (N,)
        row_of = np.repeat(np.arange(n_docs), np.diff(tf.indptr))  # row index of every stored entry
        weights = self.idf[tf.indices] * tf.data * (k1 + 1) / (tf.data + norm[row_of])
        self.weights = sparse.csr_matrix((weights, tf.indices, tf.indptr), shape=tf.shape)  # (N, V)

    def __len__(self) -> int:
        return self.weights.shape[0]

    def scores(self, query: str) -> np.ndarray:
        """(N,) float64 BM25 score of every document; 0 for documents sharing no word with the query."""
        q = np.zeros(self.weights.shape[1])  # (V,) query term counts
        for tok in tokenize(query):
            if tok in self.vocab:
                q[self.vocab[tok]] += 1
        return self.weights @ q

    def rank(
        self, query: str, candidate_ids: Sequence[int] | np.ndarray | None = None, k: int | None = None
    ) -> list[int]:
        """Corpus positions of the top-k documents (all if k is None), best first, among
        `candidate_ids` if given; ties keep candidate (or corpus) order."""
        ids = _candidates(candidate_ids, len(self))
        return top_ids(self.scores(query)[ids], ids, k)


class DenseRetriever:
    """Cosine similarity between `encode_fn` vectors (exact inner product on L2-normalised rows).
    The corpus is embedded once at construction; each query is one `encode_fn([query])` call.
    `encode_fn(list[str]) -> (n, E)`: e.g. `TextEncoder(...).encode` (mean-pooled BERT/BGE/BLAIR).
    Whole-corpus top-k goes through the faiss `VectorIndex`; candidate lists are scored directly."""

    def __init__(self, encode_fn: Callable[[list[str]], np.ndarray], corpus: Sequence[str]):
        assert len(corpus) > 0, "DenseRetriever needs a non-empty corpus"
        self.encode_fn = encode_fn
        self.vectors = l2_normalize(encode_fn(list(corpus)))  # (N, E)
        assert len(self.vectors) == len(corpus), f"encode_fn gave {len(self.vectors)} rows for {len(corpus)} texts"
        self.index = VectorIndex(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def _encode_query(self, query: str) -> np.ndarray:
        q = l2_normalize(self.encode_fn([query]))  # (1, E)
        assert q.shape == (1, self.vectors.shape[1]), f"query vector {q.shape}, corpus dim {self.vectors.shape[1]}"
        return q

    def scores(self, query: str) -> np.ndarray:
        """(N,) float32 cosine similarity of every document to the query."""
        return self.vectors @ self._encode_query(query)[0]

    def rank(
        self, query: str, candidate_ids: Sequence[int] | np.ndarray | None = None, k: int | None = None
    ) -> list[int]:
        """Corpus positions of the top-k documents (all if k is None), best first, among
        `candidate_ids` if given (ties keep candidate order)."""
        q = self._encode_query(query)
        if candidate_ids is None:
            _, ids = self.index.search(q, len(self) if k is None else k)  # (1, k)
            return ids[0].tolist()
        ids = _candidates(candidate_ids, len(self))
        return top_ids(self.vectors[ids] @ q[0], ids, k)
