"""End to end: the Hydra entry point in-process and as a subprocess multirun, the report, describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from hydra import compose, initialize_config_dir

from rlrec.train import run
from tests.conftest import CONF, ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _cfg(tmp_path, *overrides, experiment="backbone_only"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"+experiment={experiment}",
                "dataset=synthetic",
                "profile=smoke",
                "threads=1",
                f"output_dir={tmp_path}/run",
                f"cache_dir={tmp_path}/cache",
                *overrides,
            ],
        )


def test_backbone_only_in_process_then_cached(tmp_path):
    res = run(_cfg(tmp_path), tmp_path / "run")
    m = res["metrics"]
    for key in (
        "val/auc",
        "val/logloss",
        "val/uauc",
        "test/auc",
        "test/logloss",
        "test/acc",
        "train/samples_per_s",
    ):
        assert key in m, key
    assert 0.0 <= m["test/auc"] <= 1.0 and m["test/logloss"] > 0
    assert res["stages"]["fit_backbone/din"]["cached"] is False
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"]["test/auc"] == m["test/auc"]
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "results.md").exists()
    # the same command again reuses the fitted stage and reproduces its numbers
    again = run(_cfg(tmp_path), tmp_path / "run2")
    assert again["stages"]["fit_backbone/din"]["cached"] is True
    assert again["metrics"]["test/auc"] == m["test/auc"]
    assert not list((tmp_path / "cache").rglob("*.partial")), "no partial artifact may be left behind"


def test_multirun_subprocess_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "rlrec.train", "-m", "+experiment=backbone_only", "dataset=synthetic",
        "profile=smoke", "threads=1", "backbone=din,deepfm", f"cache_dir={tmp_path}/cache",
        f"hydra.sweep.dir={sweep}", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    files = sorted(sweep.rglob("results.json"))
    assert len(files) == 2
    assert {json.loads(f.read_text())["run"]["backbone"] for f in files} == {"din", "deepfm"}
    r = subprocess.run(
        [sys.executable, "-m", "rlrec.report", str(sweep)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| backbone_only")]
    assert len(rows) == 2 and any("| din |" in row for row in rows)
    assert (sweep / "report.md").exists()


def test_describe_embedded_movielens(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "rlrec.data", "describe", "dataset=movielens100k", "split=reference", "--json"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100_000)
    sizes = info["split_sizes"]
    assert (sizes["train"]["rows"], sizes["valid"]["rows"], sizes["test"]["rows"]) == (80_000, 10_000, 10_000)


def test_describe_bad_path_is_a_clear_error(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "rlrec.data", "describe", "dataset=movielens1m", f"dataset.path={tmp_path}/nope"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 1
    assert "movielens1m" in p.stderr and "nope" in p.stderr and "Traceback" not in p.stderr


def test_rerank_only_both_list_styles(tmp_path):
    for style, split in (("librerank", "temporal"), ("kar", "user")):
        cfg = _cfg(
            tmp_path,
            f"rerank.list_style={style}",
            f"split={split}",
            "backbone=setrank",
            experiment="rerank_only",
        )
        res = run(cfg, tmp_path / style)["metrics"]
        for key in (
            "test/ndcg@5",
            "test/map@5",
            "test/click@5",
            "initial/test/ndcg@5",
            "shuffled/test/ndcg@5",
        ):
            assert key in res and np.isfinite(res[key]), (style, key)
        assert 0 <= res["test/ndcg@5"] <= 1 and res["lists/test"] > 0
        if style == "kar":  # no initial ranker: the given order is random
            assert "initial_ranker/test/auc" not in res
        else:
            assert "initial_ranker/test/auc" in res


def _paper_cfg(tmp_path, experiment, *overrides):
    return _cfg(tmp_path, "llm=tiny_random", "profile.max_new_tokens=12", "profile.validator_epochs=2",
                *overrides, experiment=experiment)  # fmt: skip


def test_trackrec_smoke_in_process_and_resume_without_regenerating(tmp_path):
    from rlrec.llm import generation

    res = run(_paper_cfg(tmp_path, "trackrec_movielens"), tmp_path / "a")
    m = res["metrics"]
    for key in (
        "base/test/auc",
        "round0/test/auc",
        "aligned/test/auc",
        "iter1/reward/mean",
        "iter1/pairs/groups",
    ):
        assert key in m, key
    assert res["table"]["kind"] == "ctr" and set(res["table"]["rows"]) == {"base", "round0", "aligned"}
    assert (tmp_path / "a" / "results.md").read_text().count("knowledge") >= 3
    assert (tmp_path / "a" / "rounds.png").exists() and (tmp_path / "a" / "knowledge_variants.png").exists()
    # the same command again: every generation comes from the cache, every stage is reused
    calls = []
    original = generation.HFBackend.run

    def counting(self, requests, *a, **kw):
        calls.append(len(requests))
        return original(self, requests, *a, **kw)

    generation.HFBackend.run = counting
    try:
        again = run(_paper_cfg(tmp_path, "trackrec_movielens"), tmp_path / "b")
        # a sweep's second backbone (same cache): the LLM side is reused, only the backbone trains
        other = run(_paper_cfg(tmp_path, "trackrec_movielens", "backbone=deepfm"), tmp_path / "c")
    finally:
        generation.HFBackend.run = original
    assert sum(calls) == 0, f"regenerated {sum(calls)} requests on a rerun / second backbone"
    assert again["metrics"]["aligned/test/auc"] == m["aligned/test/auc"]
    assert again["stages"]["align/round1"]["cached"] and again["stages"]["score/round1"]["cached"]
    assert other["stages"]["align/round1"]["cached"] and other["run"]["backbone"] == "deepfm"
    assert not other["stages"]["fit_backbone/deepfm"]["cached"]


def test_dpo4rec_smoke_in_process(tmp_path):
    res = run(_paper_cfg(tmp_path, "dpo4rec_movielens"), tmp_path / "run")
    m = res["metrics"]
    for key in ("base/test/map@5", "round0/test/ndcg@5", "aligned/test/map@5", "iter1/reward/mean"):
        assert key in m, key
    assert res["table"]["kind"] == "rerank"


def test_reclaif_smoke_in_process(tmp_path):
    """The LLM as recommender: zero-shot → SFT → one DPO round on judge pairs → the table with SASRec."""
    res = run(
        _paper_cfg(tmp_path, "reclaif_movielens", "llm@feedback.strategy.llm=tiny_random",
                   "profile.rec_max_new_tokens=16", "alignment.distill.require_valid=false",
                   "alignment.distill.epochs=1", "profile.align_users=6", "profile.eval_users=6"),
        tmp_path / "a",
    )  # fmt: skip
    table = res["table"]
    assert table["kind"] == "recommend"
    assert list(table["rows"])[:3] == ["SASRec", "LLM zero-shot", "SFT"], list(table["rows"])
    for label, row in table["rows"].items():
        assert 0 <= row["validity"] <= 1 and 0 <= row["hit@1"] <= row["hit@3"] <= 1, (label, row)
    assert table["rows"]["SASRec"]["validity"] == 1.0
    llm_rows = [r for k, r in table["rows"].items() if k != "SASRec"]
    assert all(1 <= r["explainability"] <= 100 for r in llm_rows)  # judge logits → 1–100
    m = res["metrics"]
    assert m["distill/kept"] == 6  # require_valid=false keeps every non-empty teacher answer
    assert m["iter1/judge/pairs"] == 6 and m["iter1/judge/consistent"] + m["iter1/judge/inconsistent"] == 6
    assert "| SASRec |" in (tmp_path / "a" / "results.md").read_text()
    assert (tmp_path / "a" / "methods.png").exists()


def test_trackrec_with_llm_validator_and_distillation_smoke(tmp_path):
    """TrackRec with V = an LLM answering Yes/No (cross-fitted LoRA Vs, Rec-tuned by SFT), after
    distilling G on a teacher's texts (teacher = G itself here)."""
    res = run(
        _paper_cfg(tmp_path, "trackrec_movielens", "feedback=llm_validator", "llm@feedback.strategy.llm=tiny_random",
                   "profile.align_users=4", "compare.seeds=[1]", "alignment.distill.enabled=true"),
        tmp_path / "a",
    )  # fmt: skip
    m = res["metrics"]
    assert np.isfinite(m["iter1/validator/sft_loss"])  # Rec-tuning ran before scoring
    assert m["distill/kept"] == 4 and np.isfinite(m["distill/sft_loss"])  # SFT on the teacher's 4 texts
    assert res["stages"]["distill"]["cached"] is False
    # rewards are mean P(true label) ∈ (0, 1)
    assert 0 < m["iter1/reward/mean"] < 1 and m["iter1/reward/spread"] >= 0
    assert set(res["table"]["rows"]) == {"base", "round0", "aligned"}


def _write_esci(folder, queries=24, products=120, seed=0):
    """A small ESCI-shaped folder: each query has 12 Exact and 6 other judged products."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    words = ["lamp", "desk", "usb", "cable", "shoe", "red", "blue", "steel", "wood", "mini", "pro", "case"]
    titles = [" ".join(rng.choice(words, 3)) + f" {p}" for p in range(products)]
    rows = []
    for q in range(queries):
        picked = rng.choice(products, 18, replace=False)
        for k, p in enumerate(picked):
            rows.append({"query": f"{words[q % 12]} {words[(q * 5) % 12]}", "query_id": q, "product_id": f"P{p}",
                         "product_locale": "us", "esci_label": "E" if k < 12 else "SCI"[k % 3],
                         "small_version": 1, "large_version": 1, "split": "train"})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "shopping_queries_dataset_examples.parquet", index=False)
    pd.DataFrame({"product_id": [f"P{p}" for p in range(products)], "product_title": titles,
                  "product_locale": "us"}).to_parquet(folder / "shopping_queries_dataset_products.parquet", index=False)  # fmt: skip
    return folder


def test_reclaif_query_setting_with_retrieval_baselines(tmp_path):
    """ESCI-style query retrieval: 10 Exact + 5 others per query, BM25 and dense baselines, the LLM rows."""
    folder = _write_esci(tmp_path / "esci")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            "+experiment=reclaif_esci", f"dataset.path={folder}", "profile=smoke", "threads=1",
            f"output_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", "llm=tiny_random",
            "llm@feedback.strategy.llm=tiny_random", "profile.rec_max_new_tokens=12", "alignment.distill.enabled=false",
            "profile.align_users=4", "profile.eval_users=5", "dataset.max_users=null",
        ])  # fmt: skip
    res = run(cfg, tmp_path / "run")
    rows = res["table"]["rows"]
    assert (
        res["table"]["setting"] == "query" and 1 <= res["table"]["users"] <= 5
    )  # test queries: a seeded 20%
    assert list(rows)[:3] == ["BM25", "Dense", "LLM (round 0)"], list(rows)
    for name in ("BM25", "Dense"):  # a retriever always returns k candidates: precision@5 ≥ 0 and validity 1
        assert rows[name]["validity"] == 1.0 and 0 <= rows[name]["precision@5"] <= 1
        assert 0 <= rows[name]["ndcg@5"] <= 1 and 0 < rows[name]["diversity"] <= 2


def test_kar_smoke_generates_user_and_item_knowledge_once(tmp_path):
    """KAR: user + item knowledge → DLCM/PRM/SetRank with and without it; a rerun regenerates nothing."""
    from rlrec.llm import generation

    overrides = ("profile.kar_item_tokens=8", "kar.backbones=[dlcm,setrank]")
    res = run(_paper_cfg(tmp_path, "kar_movielens", *overrides), tmp_path / "a")
    rows = res["table"]["rows"]
    assert set(rows) == {"dlcm/base", "dlcm/kar", "setrank/base", "setrank/kar"}
    assert res["table"]["items"] > 0 and res["table"]["users"] > 0
    for row in rows.values():
        assert 0 <= row["test/map@5"] <= 1 and 0 <= row["test/ndcg@5"] <= 1
    assert (
        rows["dlcm/kar"]["test/ndcg@5"] != rows["dlcm/base"]["test/ndcg@5"]
    )  # the knowledge reached the model
    assert "+ KAR" in (tmp_path / "a" / "results.md").read_text() and (tmp_path / "a" / "kar.png").exists()
    calls = []
    original = generation.HFBackend.run
    generation.HFBackend.run = lambda self, requests, *a, **kw: (
        calls.append(len(requests)) or original(self, requests, *a, **kw)
    )
    try:
        again = run(_paper_cfg(tmp_path, "kar_movielens", *overrides), tmp_path / "b")
    finally:
        generation.HFBackend.run = original
    assert sum(calls) == 0 and again["table"]["rows"] == rows
