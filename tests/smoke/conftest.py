"""One TrackRec smoke run shared by the smoke tests that read a whole run's outputs (its metrics,
W&B files, exported artifacts, the Trainers it built), instead of one run per test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

# W&B offline (the run's dashboard files), and a marker every Trainer of the run must receive
OVERRIDES = ("logger=wandb", "downstream.seeds=[1]")


@pytest.fixture(scope="session")
def trackrec_smoke(tmp_path_factory):
    """`+experiment=trackrec_movielens profile=smoke` on synthetic users with the tiny random LLM,
    in process: `.dir` (its cache_dir's parent), `.run` (its output dir), `.results`, `.trainers`
    (the `default_root_dir` every `pl.Trainer` of the run was built with), `.overrides` (to rerun it)."""
    import pytorch_lightning as pl

    from rlrec.train import run
    from tests.smoke.test_train import _paper_cfg

    tmp = tmp_path_factory.mktemp("trackrec")
    overrides = (*OVERRIDES, f"+trainer.default_root_dir={tmp / 'marker'}")
    seen: list = []
    original = pl.Trainer.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("default_root_dir"))
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pl.Trainer, "__init__", spy)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        results = run(_paper_cfg(tmp, "trackrec_movielens", *overrides, gold="validator"), tmp / "run")
    return SimpleNamespace(dir=tmp, run=tmp / "run", results=results, trainers=seen, overrides=overrides,
                           marker=str(tmp / "marker"))  # fmt: skip
