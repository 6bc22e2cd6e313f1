"""A parallel multirun under `hydra/launcher=joblib`: two jobs that need the same stages at the
same time build each of them once (the store's per-key file lock), and both finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "2", "WANDB_MODE": "offline"}


def test_joblib_multirun_builds_each_shared_stage_once(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "rlrec.train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "+experiment=trackrec_movielens", "dataset=synthetic", "profile=smoke", "llm=tiny_random",
        "sampling.max_new_tokens=8", "align.heldout_users=0", "dataset.max_users=30", "downstream.seeds=[1]",
        "backbone=din,deepfm", f"cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.num}", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = [sweep / str(i) for i in range(2)]
    results = [json.loads((j / "results.json").read_text()) for j in jobs]
    assert [r["run"]["backbone"] for r in results] == ["din", "deepfm"]
    # both ran at once: each started (config.yaml) before the other finished (results.json)
    start = [(j / "config.yaml").stat().st_mtime for j in jobs]
    end = [(j / "results.json").stat().st_mtime for j in jobs]
    assert start[0] < end[1] and start[1] < end[0], (start, end)
    cores = len(os.sched_getaffinity(0))
    for j in jobs:  # two jobs side by side get half the cores each, at most the configured threads: 2
        assert f"\nthreads: {max(1, min(2, cores // 2))}\n" in (j / "config.yaml").read_text()
    # every stage both jobs need (the LLM side: rewards, the aligned adapter) was built by exactly one
    events: list[dict] = [{}, {}]  # stage/key → cached, as the job first asked for it
    for r, seen in zip(results, events):
        for e in r["stages"]:
            seen.setdefault(e["stage"] + "/" + e["key"], e["cached"])
    shared = set(events[0]) & set(events[1])
    assert any(k.startswith("align/") for k in shared) and any(k.startswith("score/") for k in shared), shared
    for key in shared:
        assert sorted([events[0][key], events[1][key]]) == [False, True], (key, events)
    # each backbone's own fits were built in its job
    assert all(not cached for k, cached in events[0].items() if k.startswith("fit/din/"))
    assert all(not cached for k, cached in events[1].items() if k.startswith("fit/deepfm/"))
    assert not list((tmp_path / "cache").rglob("*.partial")), "no partial artifact may be left behind"
