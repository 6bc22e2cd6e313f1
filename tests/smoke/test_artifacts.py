"""Artifacts out and in: a run's knowledge, vectors, pairs and adapter in the export format,
`python -m rlrec.outputs.export` (with `--merge`), and `knowledge.source=` feeding them back to a backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlrec.data.schema import DataError
from rlrec.outputs.export import export, main
from rlrec.train import run
from tests.smoke.test_train import _cfg

pytestmark = pytest.mark.xdist_group("trackrec_smoke")  # the worker that builds the shared run


@pytest.fixture(scope="module")
def trackrec_run(trackrec_smoke):
    return trackrec_smoke.dir, trackrec_smoke.results


def test_a_run_exports_knowledge_vectors_pairs_and_its_adapter(trackrec_run, tmp_path):
    from datasets import load_dataset

    tmp, res = trackrec_run
    out = tmp_path / "export"
    assert main([str(tmp / "run"), "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["rounds"]) == {"round0", "round1"}
    # KAR's format: raw user ids → the round's greedy text (results.json shows the first two)
    klg = json.loads((out / "round1" / "user.klg").read_text())
    assert len(klg) > 2 and set(res["examples"]["round1"].values()) <= set(klg.values())
    assert not (out / "round1" / "item.klg").exists()  # no item knowledge in this experiment
    vectors = np.load(out / "round1" / "user_vectors.npy")
    ids = json.loads((out / "round1" / "user_vectors.ids.json").read_text())
    assert vectors.shape == (len(klg), 384) and sorted(map(str, ids)) == sorted(klg)
    # row k is the vector of user ids[k]'s text: equal texts, equal rows; different texts, different rows
    text = [klg[str(i)] for i in ids]
    for a in range(len(ids)):
        for b in range(a):
            assert np.allclose(vectors[a], vectors[b]) == (text[a] == text[b])
    # the round's training groups, every negative listed, and trl's one-negative rows
    groups = [json.loads(line) for line in (out / "round1" / "pairs.jsonl").read_text().splitlines()]
    assert len(groups) == res["metrics"]["iter1/pairs/groups"]
    assert all(g["reward_chosen"] > max(g["reward_rejected"]) for g in groups)
    trl = load_dataset("json", data_files=str(out / "round1" / "pairs.trl.jsonl"), split="train")
    assert len(trl) == sum(len(g["rejected"]) for g in groups)
    assert {"prompt", "chosen", "rejected"} <= set(trl.column_names) and isinstance(trl[0]["rejected"], str)
    # round 1's LoRA adapter as a peft folder; round 0 (the base weights) has none
    assert (out / "round1" / "adapter" / "adapter_config.json").is_file()
    assert not (out / "round0" / "adapter").exists() and not (out / "round0" / "pairs.jsonl").exists()


def test_merged_adapter_gives_the_logits_of_base_plus_adapter(trackrec_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlrec.llm.loading import LLMConfig, load_model

    tmp, _ = trackrec_run
    out = tmp_path / "merged"
    export(tmp / "run", out, what=("adapter",), rounds=["round1"], merge=True)
    merged = AutoModelForCausalLM.from_pretrained(out / "round1" / "merged").eval()
    man = json.loads((tmp / "run" / "artifacts" / "manifest.json").read_text())
    llm = {k: v for k, v in man["llm"].items() if k != "_target_"}
    base, tok = load_model(LLMConfig(**llm))
    ref = PeftModel.from_pretrained(base, str(out / "round1" / "adapter")).eval()
    ids = tok(["a user who likes"], return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = merged(ids).logits, ref(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    plain, _ = load_model(LLMConfig(**llm))
    with torch.no_grad():  # and the adapter changed the model
        assert not torch.allclose(plain(ids).logits, b, atol=1e-4)


def test_exported_knowledge_feeds_a_backbone_with_no_llm(trackrec_run, tmp_path):
    tmp, res = trackrec_run
    out = tmp_path / "export"
    export(tmp / "run", out, what=("knowledge",), rounds=["round1"])
    # texts only: the run's encoder embeds them; the table has a base and a files row, no LLM rows
    cfg = _cfg(tmp_path, f"knowledge.source={out / 'round1'}", "downstream.seeds=[1]", "llm.source=/nonexistent",
               experiment="trackrec_movielens")  # fmt: skip
    got = run(cfg, tmp_path / "src")
    rows = got["table"]["rows"]
    assert list(rows) == ["base (no knowledge)", "+ knowledge from files (knowledge.source)"]
    m = got["metrics"]
    assert m["source/test/auc"] != m["base/test/auc"]
    assert m["base/test/auc"] == pytest.approx(res["metrics"]["base/test/auc"])  # the same base fit
    assert not [e for e in got["stages"] if e["stage"] in ("align", "score")]


def test_bad_knowledge_files_name_the_file_and_what_was_expected(trackrec_run, tmp_path):
    tmp, _ = trackrec_run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "user.klg").write_text('{"1": "likes sci-fi",\n "2": 3}')
    with pytest.raises(DataError, match=r"user\.klg: id '2': expected a text"):
        run(_cfg(tmp_path, f"knowledge.source={bad}", experiment="trackrec_movielens"), tmp_path / "r1")
    (bad / "user.klg").write_text('{"1": "likes sci-fi",\n "2" "x"}')
    with pytest.raises(DataError, match=r"user\.klg: line 2: not valid JSON"):
        run(_cfg(tmp_path, f"knowledge.source={bad}", experiment="trackrec_movielens"), tmp_path / "r2")
    (bad / "user.klg").write_text('{"no-such-user": "likes sci-fi"}')
    with pytest.raises(DataError, match="none of its 1 user ids .* another dataset"):
        run(_cfg(tmp_path, f"knowledge.source={bad}", experiment="trackrec_movielens"), tmp_path / "r3")
    with pytest.raises(DataError, match="knowledge.source='/nonexistent': not a folder"):
        run(_cfg(tmp_path, "knowledge.source=/nonexistent", experiment="trackrec_movielens"), tmp_path / "r4")
    # export: a folder that is not a run, an unknown --what, a round the run does not have
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(DataError, match="no artifacts/manifest.json"):
        export(bad, tmp_path / "o")
    with pytest.raises(DataError, match=r"--what: unknown \['knowledg'\]"):
        export(tmp / "run", tmp_path / "o", what=("knowledg",))
    with pytest.raises(DataError, match=r"--rounds: \['round7'\] not in"):
        export(tmp / "run", tmp_path / "o", rounds=["round7"])
