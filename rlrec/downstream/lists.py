"""Re-rank lists of a run (`cfg.rerank`): KAR-style (own items + random negatives) or LibRerank-style
(held-out interactions ordered by an initial CTR ranker, itself a stage fitted on the train split).
Shared by the re-rank downstream and the recommender feedback."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from rlrec.data.ctr import TensorBatches
from rlrec.data.rerank import RerankLists, kar_lists, ranked_lists
from rlrec.downstream.fit import build_model, fit
from rlrec.tasks.ctr import CTRTask

SPLITS = ("train", "valid", "test")


def rerank_lists(ctx) -> dict[str, RerankLists]:
    """train / valid / test lists in the style `rerank.list_style` (built once per context)."""
    if "rerank_lists" in ctx.memo:
        return ctx.memo["rerank_lists"]
    rr, prep = ctx.cfg.rerank, ctx.prep
    if rr.list_style == "kar":
        out = {s: kar_lists(prep, s, rr.chunk, rr.list_len, rr.seed, rr.exclude_user_items) for s in SPLITS}
    elif rr.list_style == "librerank":
        scores, _ = initial_scores(ctx)
        pool = ranked_lists(prep, "valid", scores["valid"], rr.list_len)
        test = ranked_lists(prep, "test", scores["test"], rr.list_len)
        # the re-ranker learns on lists built from the validation period; 10% of those users validate
        held = (pool.user * 2654435761 % 100) < 10
        out = {"train": pool.subset(~held), "valid": pool.subset(held), "test": test}
    else:
        raise ValueError(f"rerank.list_style must be 'kar' or 'librerank', got {rr.list_style!r}")
    ctx.memo["rerank_lists"] = out
    return out


def initial_scores(ctx) -> tuple[dict[str, np.ndarray], dict]:
    """LibRerank's initial ranker (`rerank.initial_ranker`, a CTR backbone trained on the train
    split): its scores of the valid and test rows, and its own metrics (a stage)."""
    node = ctx.cfg.rerank.initial_ranker
    dm = ctx.datamodule
    deps = {"data": ctx.data_key, "ranker": node, "optimizer": ctx.cfg.optimizer, "seed": ctx.seed,
            "trainer": ctx.trainer_key,
            "patience": ctx.cfg.early_stopping_patience}  # fmt: skip

    def build(work) -> dict:
        pl.seed_everything(ctx.seed, workers=True)
        task = CTRTask(build_model(instantiate(node), dm.feature_spec), instantiate(ctx.cfg.optimizer))
        fitted = fit(
            partial(ctx.trainer, inner=False), task, dm.train_dataloader(), dm.val_dataloader(),
            dm.test_dataloader(), monitor="val/auc", patience=ctx.cfg.early_stopping_patience,
        )  # fmt: skip
        with torch.no_grad():
            for split in ("valid", "test"):
                chunks = [fitted.model(b) for b in TensorBatches(dm.tensors(split), 8192)]
                np.save(
                    work / f"{split}.npy", torch.cat(chunks).numpy() if chunks else np.zeros(0, np.float32)
                )
        return {"metrics": fitted.metrics}

    art = ctx.store.stage("initial_ranker", deps, build)
    return {s: np.load(art.path(f"{s}.npy")) for s in ("valid", "test")}, art.data["metrics"]
