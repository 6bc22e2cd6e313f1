"""Shared fixtures: tiny synthetic data (seeded, milliseconds) and the conf directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tests are many tiny ops: one thread avoids spinning OpenMP workers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


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
