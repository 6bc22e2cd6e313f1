"""Shared fixtures: tiny synthetic data (seeded, milliseconds) and the conf directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# one thread per process: the suite runs in one worker per core (pytest-xdist), and a subprocess a test
# starts (a run, a rank, a joblib worker) with more threads than its share spins against the others
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# rlrec.layers.compiled kernels run eagerly in tests (same values; compiling each test's shapes would
# cost minutes): tests/unit/test_layers.py switches compilation on to check compiled == eager
os.environ.setdefault("RLREC_COMPILE", "0")
# precision=auto resolves by what this CPU runs faster (rlrec.runtime.precision): pinned to fp32 for the suite
# (subprocesses inherit it), so every machine of the kind runs the same code paths; tests whose outcome
# depends on the probe's answer take `auto_precision` and run once with each answer
os.environ["RLREC_PRECISION_AUTO"] = "32-true"
# converted model folders (the tiny random LLM's tokenizer, read from the embedded GGUF in ~10 s) are
# built once for the whole suite, its subprocesses included, not once per test's cache_dir
os.environ.setdefault("RLREC_MODEL_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "rlrec" / "models"))
torch.set_num_threads(1)  # tests are many tiny ops: one thread avoids spinning OpenMP workers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(params=["32-true", "bf16-mixed"], ids=["auto=fp32", "auto=bf16"])
def auto_precision(request, monkeypatch):
    """`trainer.precision=auto` resolving to fp32 (a CPU without native bf16) and to bf16 autocast (one
    with avx512_bf16 / AMX), whichever CPU runs the test."""
    monkeypatch.setenv("RLREC_PRECISION_AUTO", request.param)
    return request.param


@pytest.fixture(scope="session")
def tiny_prep():
    from rlrec.data.features import prepare
    from rlrec.data.splits import SplitConfig
    from rlrec.data.synthetic import load_synthetic

    data = load_synthetic(num_users=30, num_items=40, num_themes=4, min_len=6, max_len=16, seed=3)
    return prepare(data, 4, SplitConfig(protocol="temporal", leakage_guard=False), history_len=8)


@pytest.fixture()
def tiny_batch(tiny_prep):
    from rlrec.data.ctr import ctr_tensors

    t = ctr_tensors(tiny_prep, "train")
    return {k: v[:48] for k, v in t.items()}


def make_context(tmp_path, prep=None, overrides=(), encoder=None):
    """A run Context from the real config tree (`dataset=synthetic`, tiny random LLM, no progress
    bars); with `prep`, that PreparedData stands in for the DataModule's."""
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir

    from rlrec.context import Context

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=synthetic", "llm=tiny_random", "profile=smoke", "threads=1",
                                          f"output_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache",
                                          "trainer.enable_progress_bar=false", *overrides])  # fmt: skip
    ctx = Context(cfg, tmp_path / "run")
    if prep is not None:
        ctx.__dict__["datamodule"] = SimpleNamespace(prep=prep, fingerprint="test-data-" + str(id(prep)))
    if encoder is not None:
        ctx.__dict__["encoder"] = encoder
    return ctx


class JSONHandler:
    """Mixin for the fake HTTP servers of the tests: reply with a JSON body, log nothing."""

    def send_json(self, reply: dict) -> None:
        import json

        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
