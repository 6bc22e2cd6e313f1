"""The artifact store: content keys, atomic publish, use_cache=false, and two processes that need
the same stage building it once."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from rlrec.runtime.store import Store


def _build(counter: Path, value: int, seconds: float = 0.0):
    def build(work: Path) -> dict:
        with open(counter, "a") as fh:
            fh.write("built\n")
        time.sleep(seconds)
        (work / "payload.txt").write_text(str(value))
        return {"value": value}

    return build


def test_same_deps_reuse_other_deps_build(tmp_path):
    store, counter = Store(tmp_path / "s"), tmp_path / "n"
    a = store.stage("fit", {"texts": ["x"]}, _build(counter, 1))
    b = store.stage("fit", {"texts": ["x"]}, _build(counter, 2))
    c = store.stage("fit", {"texts": ["y"]}, _build(counter, 3))
    assert (a.cached, b.cached, c.cached) == (False, True, False)
    assert b.data == {"value": 1} and b.path("payload.txt").read_text() == "1" and c.data == {"value": 3}
    assert counter.read_text().count("built") == 2
    assert [e["cached"] for e in store.events] == [False, True, False]


def test_reuse_false_rebuilds_once_per_run(tmp_path):
    counter = tmp_path / "n"
    Store(tmp_path / "s").stage("fit", {"k": 1}, _build(counter, 1))
    fresh = Store(tmp_path / "s", reuse=False)
    first = fresh.stage("fit", {"k": 1}, _build(counter, 2))
    second = fresh.stage("fit", {"k": 1}, _build(counter, 3))  # the same run asks again: reuses its rebuild
    assert (first.cached, first.data, second.cached, second.data) == (False, {"value": 2}, True, {"value": 2})


def test_a_failed_build_leaves_no_artifact(tmp_path):
    store = Store(tmp_path / "s")

    def boom(work: Path) -> dict:
        (work / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.stage("fit", {"k": 1}, boom)
    art = store.stage("fit", {"k": 1}, _build(tmp_path / "n", 5))
    assert not art.cached and art.data == {"value": 5} and not art.path("half.txt").exists()
    assert json.loads(art.path("deps.json").read_text()) == {"k": 1}


def _worker(root: str, counter: str, value: int, out: str) -> None:
    art = Store(Path(root)).stage("shared", {"k": "same"}, _build(Path(counter), value, seconds=1.0))
    Path(out).write_text(json.dumps({"cached": art.cached, "value": art.data["value"]}))


def test_two_processes_build_a_stage_once(tmp_path):
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "s"), str(tmp_path / "n"), i, str(outs[i])))
             for i in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [json.loads(o.read_text()) for o in outs]
    assert (tmp_path / "n").read_text().count("built") == 1  # one built, the other waited
    assert sorted(r["cached"] for r in results) == [False, True]
    assert results[0]["value"] == results[1]["value"]  # both read the one artifact


def test_use_cache_false_reaches_the_generation_and_vector_caches(tmp_path):
    from tests.conftest import make_context

    cached = make_context(tmp_path)
    assert cached.store.reuse and cached.generation_cache is not None and cached.encoder.cache_dir is not None
    fresh = make_context(tmp_path, overrides=["use_cache=false"])
    assert not fresh.store.reuse and fresh.generation_cache is None and fresh.encoder.cache_dir is None


def test_an_adapters_key_does_not_depend_on_where_the_cache_is(tmp_path):
    """The preference config in an adapter's key leaves out the LLM node (its cache_dir is a path):
    the weights are in the key by content, so a cache moved or shared under another path is reused."""
    from omegaconf import OmegaConf

    from rlrec.policy import preference_deps

    def pref(cache):
        return OmegaConf.create({"task": {"llm": {"name": "m", "cache_dir": cache}, "beta": 0.1}, "max_epochs": 2})

    assert preference_deps(pref("/a/models")) == preference_deps(pref("/b/models")) == {
        "task": {"beta": 0.1}, "max_epochs": 2}  # fmt: skip
    assert preference_deps(pref("/a")) != preference_deps(OmegaConf.create({"task": {"beta": 0.2}, "max_epochs": 2}))
