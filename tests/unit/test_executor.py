"""Feedback fits fanned out through an executor: one artifact per (member, fold) shard, rewards
bit-identical whether the shards ran here or in worker processes, and a deleted shard rebuilt alone."""

from __future__ import annotations

import doctest
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlrec.feedback.ensemble import Ensemble
from rlrec.feedback.validator import ValidatorFeedback
from rlrec.loop import Refit, score
from rlrec.outputs.results import Probe
from rlrec.runtime import executor
from rlrec.runtime.executor import Joblib, Serial
from tests.conftest import CONF, make_context

D = 8  # knowledge vector size


def node(target: str, **kw):
    return OmegaConf.create({"_target_": target, "_partial_": True, **kw})


def test_doctests():
    assert doctest.testmod(executor).failed == 0


def _ensemble(ctx, restart=True):
    din = node("rlrec.backbones.din.DIN", embed_dim=4, mlp_dims=[8], attention_dims=[8])
    adapter = node("rlrec.knowledge.adapters.MLPConnector", hidden=[8])
    return Ensemble([
        ValidatorFeedback(ctx, None, din, adapter, node("torch.optim.Adam", lr=5e-3), folds=2, max_epochs=2,
                          patience=1, batch_size=32, restart=restart, seed=s)
        for s in (0, 1)
    ])  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tiny_prep):
    rng = np.random.default_rng(0)
    num_users = tiny_prep.spec.num_users
    table = rng.normal(size=(num_users + 1, D)).astype(np.float32)
    users = np.arange(1, num_users + 1)
    vectors = rng.normal(size=(len(users), 3, D)).astype(np.float32)  # (U, N, D)
    texts = [[f"u{u} t{j}" for j in range(3)] for u in users]
    return Probe("round0", "k0", {}, table), users, texts, vectors


def _context(tmp_path, prep, run_executor):
    ctx = make_context(tmp_path, prep, encoder=SimpleNamespace(key="stub-encoder"))
    ctx.__dict__["executor"] = run_executor
    return ctx


def _score(ctx, inputs, restart=True, probes=None):
    probe, users, texts, vectors = inputs
    return score(ctx.store, Refit(_ensemble(ctx, restart)), probes or [probe], users, texts, vectors)[0]


def _events(ctx, stage):
    return [e for e in ctx.store.events if e["stage"] == stage]


def test_rewards_are_bit_identical_in_process_and_in_worker_processes(tiny_prep, inputs, tmp_path):
    as_configured = {o: instantiate(OmegaConf.load(CONF / "executor" / f"{o}.yaml")) for o in ("serial", "joblib")}
    assert isinstance(as_configured["serial"], Serial) and isinstance(as_configured["joblib"], Joblib)
    serial = _context(tmp_path / "serial", tiny_prep, as_configured["serial"])
    workers = _context(tmp_path / "joblib", tiny_prep, as_configured["joblib"])
    a, b = _score(serial, inputs), _score(workers, inputs)
    assert a.shape == (len(inputs[1]), 3) and np.isfinite(a).all()
    assert np.array_equal(a, b), f"max |serial - joblib| = {np.abs(a - b).max()}"
    for ctx in (serial, workers):  # 2 members × 2 folds, each its own artifact, built once
        fits = _events(ctx, "feedback_fit/validator")
        assert len(fits) == 4 and not any(e["cached"] for e in fits) and len({e["key"] for e in fits}) == 4
    assert [e["key"] for e in _events(serial, "feedback_fit/validator")] == [
        e["key"] for e in _events(workers, "feedback_fit/validator")
    ]
    assert torch.get_num_threads() == 1  # the in-process jobs left the caller's thread count as it was


@pytest.mark.slow
def test_rewards_are_bit_identical_through_submitit_local_processes(tiny_prep, inputs, tmp_path):
    """The same through a submitit job array of local processes (~1.5 min on 2 cores: 4 process starts)."""
    pytest.importorskip("submitit")
    from rlrec.runtime.executor import Submitit

    serial = _context(tmp_path / "serial", tiny_prep, Serial(threads=1))
    array = _context(tmp_path / "submitit", tiny_prep, Submitit(folder=str(tmp_path / "jobs"), cluster="local"))
    assert np.array_equal(_score(serial, inputs), _score(array, inputs))
    assert [e["cached"] for e in _events(array, "feedback_fit/validator")] == [False] * 4
    assert len(list((tmp_path / "jobs").glob("*_log.out"))) == 4  # the shards ran as submitit jobs


def test_deleting_one_shard_rebuilds_that_shard_only(tiny_prep, inputs, tmp_path):
    ctx = _context(tmp_path, tiny_prep, Serial(threads=1))
    first = _score(ctx, inputs)
    fits = _events(ctx, "feedback_fit/validator")
    gone = fits[2]  # member 1, fold 0
    shutil.rmtree(gone["dir"])
    shutil.rmtree(_events(ctx, "score")[0]["dir"])  # a fresh score stage, so the feedback is refit
    ctx.store.events.clear()
    again = _score(ctx, inputs)
    fits = _events(ctx, "feedback_fit/validator")
    assert [e["cached"] for e in fits].count(False) == 1 and len(fits) == 4
    assert next(e for e in fits if not e["cached"])["key"] == gone["key"]
    assert not _events(ctx, "score")[0]["cached"]
    assert np.array_equal(first, again)  # the rebuilt shard is the same fit


def test_a_continued_fit_chains_its_shards(tiny_prep, inputs, tmp_path):
    """`restart=false`: fold k's shard on probe 2 continues from its shard on probe 1 (its key names
    that shard), and the chain is rebuilt from the store in the same order."""
    probe, users, texts, vectors = inputs
    second = Probe("round1", "k1", {}, probe.vectors[::-1].copy())
    ctx = _context(tmp_path, tiny_prep, Serial(threads=1))
    fb = _ensemble(ctx, restart=False)
    fb.refit(probe)
    firsts = [f.key for m in fb.members for f in m.fits]
    fb.refit(second)
    deps = [(f.path("deps.json"), f.key) for m in fb.members for f in m.fits]
    assert [json.loads(p.read_text())["after"] for p, _ in deps] == firsts
    r = _score(ctx, inputs, restart=False, probes=[probe, second])
    again = _events(ctx, "feedback_fit/validator")[8:]
    assert len(again) == 8 and all(e["cached"] for e in again)  # the chain came from the store, in order
    assert np.isfinite(r).all()


def test_the_compare_stage_fits_are_one_stage_each_and_the_same_in_worker_processes(tmp_path):
    """`evaluate()` fits (variant × seed) through the executor: here and in joblib workers, the same
    metrics; each fit its own `fit/<name>` stage, found in the store the second time."""
    from hydra.utils import instantiate as build

    out = {}
    for name, run_executor in (("serial", Serial(threads=1)), ("joblib", Joblib(n_jobs=2, threads=1))):
        ctx = make_context(tmp_path / name, overrides=["backbone.embed_dim=4", "downstream.seeds=[1,2]"])
        ctx.__dict__["executor"] = run_executor
        _, out[name] = build(ctx.cfg.downstream)(ctx=ctx).evaluate([])
        fits = [e for e in ctx.store.events if e["stage"].startswith("fit/")]
        assert len(fits) == 2 and not any(e["cached"] for e in fits) and fits[0]["key"] != fits[1]["key"]
    assert out["serial"]["test/auc"] == out["joblib"]["test/auc"] and np.isfinite(out["serial"]["test/auc"])
    speed = ("train/samples_per_s", "train/samples_per_s_std")  # wall-clock, not results
    assert {k: v for k, v in out["serial"].items() if k not in speed} == {
        k: v for k, v in out["joblib"].items() if k not in speed
    }
    ctx.store.events.clear()
    build(ctx.cfg.downstream)(ctx=ctx).evaluate([])
    assert [e["cached"] for e in ctx.store.events if e["stage"].startswith("fit/")] == [True, True]
