"""`trainer=ddp` on CPU as a new user types it: the Hydra app runs once (one pipeline process), the
table's fit runs on 2 gloo ranks started by torchrun and computes what one process with twice the
batch computes, and its stage key differs from the single-process fit's (strategy, devices and
precision change results)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlrec.train import run
from tests.conftest import ROOT
from tests.smoke.test_train import ENV, _cfg

# DDP averages the ranks' gradients, each the mean BCE over its batch: 2 ranks × batch B step as one
# process with batch 2B when the two batches together are that batch and nothing depends on the batch
# beyond the mean. Hence deepfm, not backbone_only's din (Dice normalises each rank's batch by its own
# statistics: CPU has no SyncBatchNorm). TensorBatches gives rank r every 2nd row of the epoch's shared
# order from r on (DistributedSampler's interleave), so the ranks' k-th batches together are the single
# process's k-th batch: two batches per epoch here. 72 users give 2,200 training rows, an even count,
# so the ranks' shares are the whole split. Same seed, same initial weights; fp32 on both sides.
TRAIN_ROWS = 2200
COMMON = ("backbone=deepfm", "dataset.max_users=72", "trainer.max_epochs=3", "trainer.precision=32-true")


def test_backbone_only_under_ddp_on_cpu_runs_the_app_once_and_equals_one_process(tmp_path):
    cmd = [
        sys.executable, "-m", "rlrec.train", "+experiment=backbone_only", "profile=smoke", "dataset=synthetic",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "threads=1", *COMMON,
        f"dataset.batch_size={TRAIN_ROWS // 4}", f"cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run",
        "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert log.count("launching _fit on 1 × 2 ranks via torchrun") == 1  # the table's one fit
    assert log.count("stage fit/deepfm: building") == 1  # the pipeline (and its stages) ran in one process
    assert not list((tmp_path / "cache" / "launch").iterdir())  # job files cleaned up
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["split_sizes"]["train"]["rows"] == TRAIN_ROWS

    two = results["metrics"]
    one = run(_cfg(tmp_path, *COMMON, f"dataset.batch_size={TRAIN_ROWS // 2}"), tmp_path / "one")["metrics"]
    assert two["train/epochs"] == one["train/epochs"] == 3  # the same early-stopping decisions
    # Equal up to fp32 rounding: the gradient sums run in another order (per rank, then gloo's
    # all-reduce), so weights differ by ~1e-7 relative (Adam's eps keeps near-zero gradients from
    # amplifying that). Log-loss, a mean of logits' losses, moves by about as much; AUC only when two
    # samples' logits lie within rounding of each other and swap, each swap 1/(pos·neg) ≈ 5e-5 here.
    # One rank's gradient left out of the mean moves val/test AUC by 1e-2 and log-loss by 6e-5.
    for split in ("val", "test"):
        assert two[f"{split}/auc"] == pytest.approx(one[f"{split}/auc"], abs=1e-4), split
        assert two[f"{split}/logloss"] == pytest.approx(one[f"{split}/logloss"], abs=2e-6), split


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
