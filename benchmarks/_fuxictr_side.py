"""FuxiCTR side of `ctr_peer.py --peer fuxictr`: train one FuxiCTR model on the arrays rlrec prepared.

Runs with the FuxiCTR virtualenv's python (benchmarks/.venv-fuxictr, made by setup_fuxictr.sh:
torch==2.13.0 and fuxictr==2.3.10, not rlrec), e.g.

    benchmarks/.venv-fuxictr/bin/python benchmarks/_fuxictr_side.py --npz data.npz --model deepfm \
        --seed 1 --threads 1 --config '{"zoo": "DeepFM/DeepFM_torch", "class": "DeepFM", ...}'

and prints one JSON line {auc, logloss, samples_per_s, epochs, ...} on stdout; with `--serve` it
trains in turns (`_protocol.StepClock`), driven by `ctr_peer.py` over stdin / stdout, exactly as
`_peer_side.py` does for DeepCTR-Torch.

The models are FuxiCTR's own classes, imported from its repository's model_zoo/<Model>/src (the
PyPI wheel has the library but not the models; setup_fuxictr.sh fetches the zoo of the 2.3.10
commit into benchmarks/.fuxictr-src), built with its `BaseModel` initialisation. FuxiCTR's data
pipeline and `fit` read files, so neither is used: the `FeatureMap` is built here from the npz
arrays, and every batch is the dict of tensors the model's `get_inputs` reads (one (B,) index
tensor per field, one (B, L) per history sequence, and "label"), cut by the shared protocol
(`_protocol.py`), exactly as on rlrec's side. A training step is FuxiCTR's `BaseModel.train_step`
with the protocol's optimiser: loss = `model.compute_loss` (BCE on the sigmoid output, plus its
regularisation, 0 here), then clipping at the protocol's `max_grad_norm` (ctr_peer.py passes
FuxiCTR's default, 10).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL_ZOO = HERE / ".fuxictr-src" / "model_zoo"
SPLITS = ("train", "valid", "test")
SEQUENCE_MODELS = {"din", "dien"}  # read the history as (B, L, D) sequences; the others pool it


def import_model(zoo: Path, folder: str, cls: str):
    """The model class `cls` from `zoo/folder/src`. Every model's package is called `src`, so one
    process imports one model (the peer side trains one model per process)."""
    if not (zoo / folder / "src").is_dir():
        sys.exit(f"_fuxictr_side.py: no {zoo / folder / 'src'}; fetch it with benchmarks/setup_fuxictr.sh")
    sys.path.insert(0, str(zoo / folder))
    return getattr(importlib.import_module("src"), cls)


def feature_map(meta: dict, embed_dim: int, prefixes: tuple[str, ...], pooled: bool):
    """FuxiCTR's FeatureMap for the npz arrays, as its FeatureProcessor would write it for the same
    columns: every field categorical with padding index 0 (rlrec's PAD; FuxiCTR's __PAD__ is 0
    too), then per prefix ("hist_", and "neg_hist_" for DIEN) one sequence per item field sharing
    the table of that item field (`share_embedding`, as in FuxiCTR's sequence datasets). `pooled`:
    the sequences go through FuxiCTR's `MaskedAveragePooling` feature encoder (mean over the real
    items, the usual set-up of a history for non-sequential models, and rlrec's pooling)."""
    from fuxictr.features import FeatureMap

    fields = list(meta["field_names"])
    item_fields = list(meta["item_field_names"])
    vocab = dict(zip(fields, (int(v) for v in meta["vocab_sizes"])))
    fmap = FeatureMap("movielens100k_reference", data_dir="")
    fmap.default_emb_dim = embed_dim
    fmap.labels = ["label"]
    for f in fields:
        source = "item" if f in item_fields else "user"
        fmap.features[f] = {"source": source, "type": "categorical", "vocab_size": vocab[f], "padding_idx": 0}
    for prefix in prefixes:
        for f in item_fields:
            spec = {
                "source": "item",
                "type": "sequence",
                "vocab_size": vocab[f],
                "max_len": int(meta["history_len"]),
                "padding_idx": 0,
                "share_embedding": f,
            }
            if pooled:
                spec["feature_encoder"] = "layers.MaskedAveragePooling()"
            fmap.features[prefix + f] = spec
    fmap.num_fields = fmap.get_num_fields()
    fmap.total_features = sum(vocab.values())
    fmap.set_column_index()
    return fmap


def build(name: str, cfg: dict, meta: dict, zoo: Path, lr: float):
    """FuxiCTR model `name`: class `cfg["class"]` from `cfg["zoo"]`, its hyper-parameters
    `cfg["kwargs"]` (mapped from rlrec's yaml by ctr_peer.py), plus what depends on the data (the
    feature map, DIN's / DIEN's target and sequence fields) and BaseModel's own arguments."""
    kwargs = dict(cfg["kwargs"])
    item_fields = tuple(meta["item_field_names"])
    prefixes = ("hist_", "neg_hist_") if name == "dien" else ("hist_",)
    fmap = feature_map(meta, int(kwargs["embedding_dim"]), prefixes, pooled=name not in SEQUENCE_MODELS)
    target, history, negatives = (tuple(p + f for f in item_fields) for p in ("", "hist_", "neg_hist_"))
    if name == "din":
        kwargs.update(din_target_field=[target], din_sequence_field=[history])
    elif name == "dien":
        # FuxiCTR's DIEN sizes its MLP with the neg_hist_* sequences in the feature map (it
        # subtracts them), so they are declared even when its auxiliary loss is off
        kwargs.update(dien_target_field=[target], dien_sequence_field=[history], dien_neg_seq_field=[negatives])
    model_class = import_model(zoo, cfg["zoo"], cfg["class"])
    return model_class(
        fmap,
        model_id=cfg["class"],
        gpu=-1,
        task="binary_classification",
        optimizer="adam",
        loss="binary_crossentropy",
        learning_rate=lr,
        embedding_regularizer=0,  # no L2: rlrec trains with plain Adam, weight_decay 0
        net_regularizer=0,
        metrics=["logloss", "AUC"],
        verbose=0,
        model_root="",  # only names a checkpoint path; nothing is saved (no `fit`)
        **kwargs,
    )


def skipped_tables(model) -> list:
    """The tables FuxiCTR 2.3.10's init leaves at PyTorch's N(0, 1), with the initializer their layer
    declares: `FeatureEmbeddingDict.init_weights` skips every field marked `share_embedding`, also in
    a layer built with `use_sharing=False` (the LR layer's 1-d tables of DeepFM / FiBiNET), where
    such a field has a table of its own."""
    import torch
    from fuxictr.pytorch.layers import FeatureEmbeddingDict

    out = []
    for m in model.modules():
        if isinstance(m, FeatureEmbeddingDict):
            for field, table in m.embedding_layers.items():
                shared = m._feature_map.features[field].get("share_embedding")
                if (
                    shared
                    and type(table) is torch.nn.Embedding
                    and (shared not in m.embedding_layers or table is not m.embedding_layers[shared])
                ):
                    out.append((table, m.embedding_initializer))
    return out


def init_as_declared(tables: list) -> None:
    """Give each of `skipped_tables` its layer's declared initializer (N(0, 1e-4), padding row 0),
    as init_weights does for every other table."""
    import torch

    with torch.no_grad():
        for table, initializer in tables:
            if table.padding_idx is not None:
                initializer(table.weight[1:, :])
                table.weight[table.padding_idx].zero_()
            else:
                initializer(table.weight)


def model_inputs(arrays: dict, split: str, meta: dict) -> dict:
    """The split as the dict `get_inputs` reads: one (N,) int64 tensor per field, one (N, L) per
    history sequence ("hist_<item field>"), float labels. neg_hist_* are not inputs: with FuxiCTR's
    auxiliary loss off (see ctr_peer.py) DIEN never looks them up."""
    import torch

    out = {f: torch.from_numpy(arrays[f"{split}_fields"][:, k].copy()) for k, f in enumerate(meta["field_names"])}
    for k, f in enumerate(meta["item_field_names"]):
        out["hist_" + f] = torch.from_numpy(arrays[f"{split}_hist"][:, :, k].copy())
    out["label"] = torch.from_numpy(arrays[f"{split}_label"].astype(np.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--npz", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", required=True, help="JSON: model class, hyper-parameters + protocol")
    ap.add_argument("--model-zoo", default=str(MODEL_ZOO), help="FuxiCTR's model_zoo folder (setup_fuxictr.sh)")
    ap.add_argument(
        "--serve",
        action="store_true",
        help='interleaved throughput: read one JSON line {"steps": k} per turn from stdin, train k '
        "batches, answer with one JSON line {seconds, samples}; stop at end of input",
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import fuxictr
    import torch
    from fuxictr.pytorch.torch_utils import get_optimizer, seed_everything

    sys.path.insert(0, str(HERE))
    import _protocol

    _protocol.set_threads(args.threads)
    cfg = json.loads(args.config)
    protocol = cfg.pop("protocol")
    lr = protocol.get("lr", 1e-3)
    fused = bool(cfg.pop("fused_adam", False))  # ctr_peer.py --peer-fused-adam: not the library's default
    as_shipped = bool(cfg.pop("as_shipped", False))  # ctr_peer.py --peer-as-shipped: keep the N(0, 1) tables
    zoo = Path(args.model_zoo)

    with np.load(args.npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = {
        "field_names": [str(s) for s in arrays["field_names"]],
        "item_field_names": [str(s) for s in arrays["item_field_names"]],
        "vocab_sizes": arrays["vocab_sizes"].tolist(),
        "history_len": int(arrays["history_len"]),
    }

    seed_everything(args.seed)  # FuxiCTR's own seeding (random, numpy, torch), as its run_expid.py
    model = build(args.model, cfg, meta, zoo, lr)
    skipped = skipped_tables(model)
    if not as_shipped:
        init_as_declared(skipped)
    tensors = {split: model_inputs(arrays, split, meta) for split in SPLITS}

    def loss_fn(m, batch):  # BaseModel.train_step's loss
        return m.compute_loss(m(batch), m.get_labels(batch))

    def predict(m, batch):
        return m(batch)["y_pred"].squeeze(-1)

    def optimizer(params):  # as BaseModel.compile(optimizer="adam", lr) builds it
        if fused:
            return torch.optim.Adam(params, lr=lr, fused=True)
        return get_optimizer("adam", params, lr)

    if args.serve:
        clock = _protocol.StepClock(model, tensors["train"], loss_fn, seed=args.seed, lr=lr,
                                    optimizer=optimizer, max_grad_norm=protocol.get("max_grad_norm"))  # fmt: skip
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            print(json.dumps(clock.steps(int(json.loads(line)["steps"]))), flush=True)
        return
    result = _protocol.run(model, tensors["train"], tensors["valid"], tensors["test"], loss_fn, predict,
                           seed=args.seed, optimizer=optimizer, **protocol)  # fmt: skip
    commit = zoo.parent / "COMMIT"
    result.update(
        library="fuxictr",
        library_version=fuxictr.__version__,
        model_zoo_commit=commit.read_text().strip() if commit.exists() else "unknown",
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        notes=[
            f"peer: {len(skipped)} LR table(s) of share_embedding fields, which FuxiCTR 2.3.10's "
            "init_weights skips (PyTorch's N(0, 1) start), "
            + ("kept as shipped (--peer-as-shipped)" if as_shipped else "initialised N(0, 1e-4) as the layer declares")
        ]
        if skipped
        else [],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
