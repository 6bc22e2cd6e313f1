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
    period = rr.get("ranker_period")
    if rr.list_style not in ("kar", "librerank"):
        raise ValueError(f"rerank.list_style must be 'kar' or 'librerank', got {rr.list_style!r}")
    if rr.list_style == "kar" and rr.get("initial_ranker") is None:
        out = {s: kar_lists(prep, s, rr.chunk, rr.list_len, rr.seed, rr.exclude_user_items) for s in SPLITS}
    elif rr.list_style == "kar":
        # KAR's lists (own items + catalogue negatives) ordered by an initial ranker that fitted the
        # train period's earlier part; the re-ranker learns on lists of the later part
        if period is None:
            raise ValueError(
                "rerank.list_style=kar with an initial_ranker needs rerank.ranker_period: the ranker would "
                "otherwise score the very train interactions it fitted (see rerank=kar_ranked)"
            )
        scorer = partial(score_pairs, ctx)
        keep = {"train": ~ranker_rows(ctx), "valid": None, "test": None}
        out = {
            s: kar_lists(prep, s, rr.chunk, rr.list_len, rr.seed, rr.exclude_user_items, keep[s], scorer)
            for s in SPLITS
        }
    elif period is not None:
        # the ranker fits the train period's earlier part; the re-ranker learns on lists of its later
        # part (interactions the ranker never trained on), validates on the validation period's
        # lists and is tested on the test period's
        scores, _ = initial_scores(ctx)
        pv = optional_vectors(ctx)
        later = ~ranker_rows(ctx)
        out = {
            "train": ranked_lists(prep, "train", scores["train"], rr.list_len, keep=later, vectors=pv["train"]),
            "valid": ranked_lists(prep, "valid", scores["valid"], rr.list_len, vectors=pv["valid"]),
            "test": ranked_lists(prep, "test", scores["test"], rr.list_len, vectors=pv["test"]),
        }
    else:
        scores, _ = initial_scores(ctx)
        pv = optional_vectors(ctx)
        pool = ranked_lists(prep, "valid", scores["valid"], rr.list_len, vectors=pv["valid"])
        test = ranked_lists(prep, "test", scores["test"], rr.list_len, vectors=pv["test"])
        # the re-ranker learns on lists built from the validation period; 10% of those users validate
        held = (pool.user * 2654435761 % 100) < 10
        out = {"train": pool.subset(~held), "valid": pool.subset(held), "test": test}
    ctx.memo["rerank_lists"] = out
    return out


def optional_vectors(ctx) -> dict:
    """The initial ranker's personalised vectors per split, or None per split when it has none."""
    art = initial_ranker(ctx)
    return {s: np.load(art.path(f"{s}_pv.npy")) if art.path(f"{s}_pv.npy").exists() else None for s in SPLITS}


def score_pairs(ctx, user: np.ndarray, items: np.ndarray, anchor: np.ndarray):
    """The initial ranker's scores (M, N) and personalised vectors (M, N, H) (or None) of the pairs
    (user[m], items[m, n]), each seen with the history of its list's anchor row of `prep.frame`."""
    prep = ctx.prep
    M, N = items.shape
    tensors = {
        "user": torch.from_numpy(np.repeat(user, N).astype(np.int64)),
        "item": torch.from_numpy(items.reshape(-1).astype(np.int64)),
        "history": torch.from_numpy(np.repeat(prep.history[anchor], N, axis=0)),
        "label": torch.zeros(M * N),
    }
    scores, pv = score_rows(initial_model(ctx), TensorBatches(tensors, 8192))
    return scores.reshape(M, N), None if pv is None else pv.reshape(M, N, -1)


def initial_model(ctx) -> torch.nn.Module:
    """The fitted initial ranker (its best weights), in eval mode (loaded once per context)."""
    if "initial_model" not in ctx.memo:
        art = initial_ranker(ctx)
        model = build_model(instantiate(ctx.cfg.rerank.initial_ranker), ctx.datamodule.feature_spec)
        model.load_state_dict(torch.load(art.path("model.pt"), map_location="cpu"))
        ctx.memo["initial_model"] = model.eval()
    return ctx.memo["initial_model"]


def ranker_rows(ctx) -> np.ndarray:
    """A bool per train row: the rows the initial ranker fits. All of them, or with
    `rerank.ranker_period = f` the earliest fraction f of the train period (a global time cut at
    the f-quantile of the train rows' timestamps; rows at the cut belong to the ranker)."""
    prep, f = ctx.prep, ctx.cfg.rerank.get("ranker_period")
    stamps = prep.frame["timestamp"].to_numpy()[prep.rows("train")]
    if f is None:
        return np.ones(len(stamps), bool)
    if not 0.0 < float(f) < 1.0:
        raise ValueError(f"rerank.ranker_period must be in (0, 1) (the ranker's share of the train period), got {f}")
    return stamps <= np.quantile(stamps, float(f))


def initial_scores(ctx) -> tuple[dict[str, np.ndarray], dict]:
    """The initial ranker's scores of the valid and test rows (and of the train rows with
    `rerank.ranker_period`), and its own metrics."""
    art = initial_ranker(ctx)
    return {s: np.load(art.path(f"{s}.npy")) for s in art.data["splits"]}, art.data["metrics"]


def initial_ranker(ctx):
    """LibRerank's initial ranker (`rerank.initial_ranker`, a CTR backbone trained on the train
    split, or on its earlier part with `rerank.ranker_period`) as a stage: its score and
    personalised vector of every row of the valid and test splits (and of the train split with
    `ranker_period`), and its own metrics."""
    rr = ctx.cfg.rerank
    node, period = rr.initial_ranker, rr.get("ranker_period")
    dm = ctx.datamodule
    deps = {
        "data": ctx.data_key,
        "ranker": node,
        "optimizer": rr.ranker_fit.optimizer,
        "seed": ctx.seed,
        "trainer": ctx.trainer_key,
        "patience": rr.ranker_fit.patience,
        "outputs": ["score", "pv", "model"],
        **({"ranker_period": period} if period is not None else {}),
    }
    splits = ("train", "valid", "test") if period is not None else ("valid", "test")

    def build(work) -> dict:
        pl.seed_everything(ctx.seed, workers=True)
        task = CTRTask(build_model(instantiate(node), dm.feature_spec), instantiate(rr.ranker_fit.optimizer))
        train = dm.train_dataloader()
        if period is not None:
            keep = torch.from_numpy(ranker_rows(ctx))
            train = TensorBatches(
                {k: v[keep] for k, v in dm.tensors("train").items()}, dm.batch_size, shuffle=True, seed=ctx.seed
            )
        fitted = fit(
            partial(ctx.trainer, inner=False),
            task,
            train,
            dm.val_dataloader(),
            dm.test_dataloader(),
            monitor="val/auc",
            patience=int(rr.ranker_fit.patience),
        )
        for split in splits:
            scores, vectors = score_rows(fitted.model, TensorBatches(dm.tensors(split), 8192))
            np.save(work / f"{split}.npy", scores)
            if vectors is not None:
                np.save(work / f"{split}_pv.npy", vectors)
        torch.save(fitted.model.state_dict(), work / "model.pt")
        return {"metrics": fitted.metrics, "splits": list(splits)}

    return ctx.store.stage("initial_ranker", deps, build)


def scoring_mlp(model: torch.nn.Module):
    """The MLP a CTR backbone scores with (`model.mlp`, or `model.dnn`) when it has hidden layers:
    its last hidden layer is PRM's personalised vector. None without one."""
    for name in ("mlp", "dnn"):
        mlp = getattr(model, name, None)
        if mlp is not None and hasattr(mlp, "hidden") and len(mlp) > int(mlp.has_output):
            return mlp
    return None


@torch.no_grad()
def score_rows(model: torch.nn.Module, batches) -> tuple[np.ndarray, np.ndarray | None]:
    """A fitted CTR ranker's score of every row of `batches`, and its personalised vector (PRM,
    Pei et al. 2019 §4.2: the last hidden layer of a pre-trained ranker, here its scoring MLP's) —
    (rows,) and (rows, H) float32; no vectors (None) for a ranker without a scoring MLP."""
    model.eval()
    mlp, seen = scoring_mlp(model), []
    hook = None if mlp is None else mlp.register_forward_hook(lambda m, a, out: seen.append(m.hidden(a[0])))
    try:
        scores = [model(b).float() for b in batches]
    finally:
        if hook is not None:
            hook.remove()
    if mlp is None:
        return (torch.cat(scores).numpy() if scores else np.zeros(0, np.float32)), None
    width = [m for m in mlp if isinstance(m, torch.nn.Linear)][-1 - int(mlp.has_output)].out_features
    if not scores:
        return np.zeros(0, np.float32), np.zeros((0, width), np.float32)
    return torch.cat(scores).numpy(), torch.cat(seen).float().numpy()


def reranker_factory(ctx, node):
    """The re-ranker `node`'s `_partial_` factory; one that takes the initial ranking
    (`initial_input`) with its personalised vectors (`personal_vector`) gets their width."""
    factory = instantiate(node)
    if node.get("initial_input") and node.get("personal_vector"):
        pv = rerank_lists(ctx)["train"].pv
        if pv is None and ctx.cfg.rerank.get("initial_ranker") is not None:
            raise ValueError(
                f"reranker.personal_vector=true, but rerank.initial_ranker ({ctx.cfg.rerank.initial_ranker._target_}) "
                "has no scoring MLP (`mlp` or `dnn` with hidden layers) whose last hidden layer could be the "
                "personalised vector: pick a ranker with mlp_dims (din, dien, deepfm, fibinet, dcn, autoint) or set "
                "reranker.personal_vector=false"
            )
        factory = partial(factory, personal_dim=0 if pv is None else int(pv.shape[-1]))  # no ranker: no vector
    return factory
