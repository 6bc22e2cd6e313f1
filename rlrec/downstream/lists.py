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
    elif rr.list_style == "librerank" and rr.get("ranker_period") is not None:
        # the ranker fits the train period's earlier part; the re-ranker learns on lists of its later
        # part (interactions the ranker never trained on), validates on the validation period's
        # lists and is tested on the test period's
        scores, _ = initial_scores(ctx)
        later = ~ranker_rows(ctx)
        out = {
            "train": ranked_lists(prep, "train", scores["train"], rr.list_len, keep=later),
            "valid": ranked_lists(prep, "valid", scores["valid"], rr.list_len),
            "test": ranked_lists(prep, "test", scores["test"], rr.list_len),
        }
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


def ranker_rows(ctx) -> np.ndarray:
    """A bool per train row: the rows the initial ranker fits. All of them, or with
    `rerank.ranker_period = f` the earliest fraction f of the train period (a global time cut at
    the f-quantile of the train rows' timestamps; rows at the cut belong to the ranker)."""
    prep, f = ctx.prep, ctx.cfg.rerank.get("ranker_period")
    stamps = prep.frame["timestamp"].to_numpy()[prep.rows("train")]
    if f is None:
        return np.ones(len(stamps), bool)
    if not 0.0 < float(f) < 1.0:
        raise ValueError(
            f"rerank.ranker_period must be in (0, 1) (the ranker's share of the train period), got {f}"
        )
    return stamps <= np.quantile(stamps, float(f))


def initial_scores(ctx) -> tuple[dict[str, np.ndarray], dict]:
    """LibRerank's initial ranker (`rerank.initial_ranker`, a CTR backbone trained on the train
    split, or on its earlier part with `rerank.ranker_period`): its scores of the valid and test
    rows (and of the train rows with `ranker_period`), and its own metrics (a stage)."""
    rr = ctx.cfg.rerank
    node, period = rr.initial_ranker, rr.get("ranker_period")
    dm = ctx.datamodule
    deps = {"data": ctx.data_key, "ranker": node, "optimizer": ctx.cfg.optimizer, "seed": ctx.seed,
            "trainer": ctx.trainer_key, "patience": ctx.cfg.early_stopping_patience,
            **({"ranker_period": period} if period is not None else {})}  # fmt: skip
    splits = ("train", "valid", "test") if period is not None else ("valid", "test")

    def build(work) -> dict:
        pl.seed_everything(ctx.seed, workers=True)
        task = CTRTask(build_model(instantiate(node), dm.feature_spec), instantiate(ctx.cfg.optimizer))
        train = dm.train_dataloader()
        if period is not None:
            keep = torch.from_numpy(ranker_rows(ctx))
            train = TensorBatches(
                {k: v[keep] for k, v in dm.tensors("train").items()},
                dm.batch_size,
                shuffle=True,
                seed=ctx.seed,
            )
        fitted = fit(
            partial(ctx.trainer, inner=False), task, train, dm.val_dataloader(),
            dm.test_dataloader(), monitor="val/auc", patience=ctx.cfg.early_stopping_patience,
        )  # fmt: skip
        with torch.no_grad():
            for split in splits:
                chunks = [fitted.model(b) for b in TensorBatches(dm.tensors(split), 8192)]
                np.save(
                    work / f"{split}.npy", torch.cat(chunks).numpy() if chunks else np.zeros(0, np.float32)
                )
        return {"metrics": fitted.metrics}

    art = ctx.store.stage("initial_ranker", deps, build)
    return {s: np.load(art.path(f"{s}.npy")) for s in splits}, art.data["metrics"]
