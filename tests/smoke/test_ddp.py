"""`trainer=ddp` on CPU as a new user types it: the Hydra app runs once (one pipeline process), the
table's fit runs on 2 gloo ranks started by torchrun, and its stage key differs from the
single-process fit's (strategy, devices and precision change results)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT
from tests.smoke.test_train import ENV, _cfg


def test_backbone_only_under_ddp_on_cpu_runs_the_app_once(tmp_path):
    cmd = [
        sys.executable, "-m", "rlrec.train", "+experiment=backbone_only", "profile=smoke", "dataset=synthetic",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "threads=2",
        f"cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert log.count("launching _fit on 1 × 2 ranks via torchrun") == 1  # the table's one fit
    assert log.count("stage fit/din: building") == 1  # the pipeline (and its stages) ran in one process
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= results["metrics"]["test/auc"] <= 1.0
    assert not list((tmp_path / "cache" / "launch").iterdir())  # job files cleaned up


def test_the_fit_key_depends_on_strategy_devices_and_precision(tmp_path, auto_precision):
    from rlrec.context import Context

    def key(*overrides):
        return Context(_cfg(tmp_path, *overrides), tmp_path / "run").trainer_key.__repr__()

    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    keys = {
        key(*o)
        for o in [
            ("trainer.precision=32",),
            (*ddp, "trainer.precision=32"),
            (*ddp, "trainer.precision=bf16-mixed"),
            ("trainer.precision=bf16-mixed",),
        ]
    }
    assert len(keys) == 4
    # one computation, one key: Lightning's spellings of a precision are one name
    assert key("trainer.precision=32-true") == key("trainer.precision=32")
    assert key("trainer.precision=bf16") == key("trainer.precision=bf16-mixed")
    # precision=auto (the default) keys as what it resolves to: fp32 on a CPU without native bf16,
    # bf16 autocast on one with it (the fixture runs both)
    assert key() == key(f"trainer.precision={auto_precision}")
    assert key(*ddp) == key(*ddp, "trainer.precision=bf16")  # trainer=ddp keeps trainer=gpu's explicit bf16
