"""Lightning DataModule over one dataset: loads (via the configured loader), labels, splits and
indexes it once, exposes the FeatureSpec before any model is built, and serves CTR batches."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pandas as pd
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from rlrec.data.ctr import TensorBatches, ctr_tensors
from rlrec.data.features import FeatureSpec, PreparedData, prepare
from rlrec.data.prompts import PromptView
from rlrec.data.schema import DataError, RecData
from rlrec.data.splits import SplitConfig
from rlrec.runtime.cache import fingerprint


def _plain(x):
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


class RecDataModule(pl.LightningDataModule):
    def __init__(
        self,
        name: str,
        loader: Callable[[], RecData],
        split: dict | SplitConfig,
        label_threshold: float = 4,
        history_len: int = 20,
        history_positive_only: bool = False,
        batch_size: int = 1024,
        eval_batch_size: int = 4096,
        domain: dict | None = None,
        seed: int = 0,
        templates: dict | None = None,
        path: str | None = None,
        max_users: int | None = None,
        **loader_kwargs,
    ):
        super().__init__()
        if not callable(loader):
            raise DataError(f"dataset.loader must be a callable (a `_partial_: true` target), got {type(loader)}")
        if loader_kwargs:
            raise DataError(f"dataset {name!r}: unknown option(s) {sorted(loader_kwargs)}")
        self.name = name
        self.loader = loader
        split = _plain(split)
        self.split_cfg = split if isinstance(split, SplitConfig) else SplitConfig(**split)
        self.label_threshold = label_threshold
        self.history_len = history_len
        self.history_positive_only = history_positive_only
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.domain = _plain(domain) or None
        self.seed = seed
        self.templates = _plain(templates) or {}
        self.path = path  # informational: the loader received it through interpolation
        self.max_users = max_users  # keep a seeded random subset of users (CPU-scale runs)
        self.prep: PreparedData | None = None
        self._tensors: dict = {}
        self._fingerprint: str | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.prep is not None:
            return
        t0 = time.perf_counter()
        data = self.loader().subsample_users(self.max_users, self.seed)
        label = data.extra.get("label_column")
        if label is not None and self.label_threshold != 1:
            raise DataError(
                f"{self.name}: labels come from the 0/1 column '{label}', so dataset.label_threshold must be 1 "
                f"(got {self.label_threshold}); add `label_threshold: 1` to the dataset's YAML"
            )
        self.prep = prepare(data, self.label_threshold, self.split_cfg, self.history_len, self.history_positive_only)
        self.setup_seconds = time.perf_counter() - t0

    @property
    def fingerprint(self) -> str:
        """Identity of the prepared data by content (the loaded frames, hashed) and by how it was
        prepared and served (labels, split, history, batch sizes): editing a data file changes it,
        moving it does not."""
        self.setup()
        if self._fingerprint is None:
            raw = self.prep.raw
            content = [
                hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()
                for df in (raw.interactions, raw.users, raw.items)
            ]
            self._fingerprint = fingerprint(
                self.name,
                content,
                self.label_threshold,
                self.split_cfg.__dict__,
                self.history_len,
                self.history_positive_only,
                self.max_users,
                self.seed,
                self.batch_size,
                self.eval_batch_size,
            )
        return self._fingerprint

    @property
    def feature_spec(self) -> FeatureSpec:
        self.setup()
        return self.prep.spec

    def prompts(self, history_max_len: int | None = None) -> PromptView:
        """Prompt view; `history_max_len` caps the prompt history (most recent items kept)."""
        self.setup()
        return PromptView(self.prep, self.domain, history_max_len)

    def tensors(self, split: str) -> dict:
        self.setup()
        if split not in self._tensors:
            self._tensors[split] = ctr_tensors(self.prep, split)
        return self._tensors[split]

    def train_dataloader(self):
        return TensorBatches(self.tensors("train"), self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self):
        return TensorBatches(self.tensors("valid"), self.eval_batch_size)

    def test_dataloader(self):
        return TensorBatches(self.tensors("test"), self.eval_batch_size)

    def describe(self) -> dict:
        self.setup()
        p = self.prep
        return {
            **p.raw.summary(),
            "source": p.raw.source,
            "label_rule": (
                f"label column '{p.raw.extra['label_column']}'"
                if p.raw.extra.get("label_column")
                else f"rating >= {self.label_threshold}"
            ),
            "positive_rate": round(float(p.frame["label"].mean()), 4),
            "split": {
                "protocol": self.split_cfg.protocol,
                "ratios": list(self.split_cfg.ratios),
                "leakage_guard": self.split_cfg.leakage_guard,
            },
            "split_sizes": p.split_sizes(),
            "fields": {f.name: f.vocab_size for f in p.spec.fields},
            "history_len": p.spec.history_len,
        }
