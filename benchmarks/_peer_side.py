"""Peer side of `ctr_peer.py`: train one DeepCTR-Torch model on the arrays rlrec prepared.

Runs with the peer virtualenv's python (benchmarks/.venv-peer, which has torch==2.13.0 and
deepctr-torch but not rlrec), e.g.

    benchmarks/.venv-peer/bin/python benchmarks/_peer_side.py --npz data.npz --model deepfm \
        --seed 1 --threads 1 --config '{"dnn_hidden_units": [400, 400, 400], ...}'

and prints one JSON line {auc, logloss, samples_per_s, epochs, ...} on stdout. With `--serve` it
trains in turns instead (`_protocol.StepClock`), driven by `ctr_peer.py` over stdin / stdout. The input of every
DeepCTR-Torch model is one float tensor whose columns are the features in `model.feature_index`
order (its own `fit` builds the same tensor); it is built once here and cut into batches by the
shared protocol (`_protocol.py`), exactly as on rlrec's side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

import numpy as np

SPLITS = ("train", "valid", "test")


def import_deepctr():
    """Import deepctr_torch without its import-time update check: `deepctr_torch/__init__.py`
    starts a thread that asks PyPI for the newest release through `requests` (which the package
    does not even declare as a dependency). A stub `requests` whose `get` answers "not OK" without
    any I/O turns that check into a silent no-op (no network traffic, nothing printed, and the
    thread ends at once instead of competing with the timed training)."""
    stub = types.ModuleType("requests")
    stub.codes = types.SimpleNamespace(ok=200)
    stub.get = lambda *args, **kwargs: types.SimpleNamespace(status_code=0, text="{}")
    saved = sys.modules.get("requests")
    sys.modules["requests"] = stub
    try:
        import deepctr_torch
        import deepctr_torch.models
    finally:
        if saved is None:
            sys.modules.pop("requests", None)
        else:
            sys.modules["requests"] = saved
    return deepctr_torch


def activation(name: str):
    """rlrec activation name → DeepCTR-Torch `dnn_activation` (a string or an nn.Module class)."""
    from torch import nn

    name = name.lower()
    if name in ("relu", "sigmoid", "dice", "prelu", "linear"):
        return name
    return {"tanh": nn.Tanh, "gelu": nn.GELU}[name]


def fix_dnn_dice(dnn) -> int:
    """DeepCTR-Torch's `DNN` builds Dice with `dice_dim=3` (the 3-D form its attention unit needs)
    even for the 2-D input of the final MLP, where Dice then fails its `x.dim() == 3` assertion, so
    `dnn_activation='dice'` crashes DIN and DIEN. Swap in the library's own 2-D Dice (same width,
    same epsilon); returns how many layers were replaced."""
    from deepctr_torch.layers.activation import Dice

    n = 0
    for i, act in enumerate(dnn.activation_layers):
        if isinstance(act, Dice) and act.dim == 3:
            dnn.activation_layers[i] = Dice(act.bn.num_features, dim=2, epsilon=act.bn.eps)
            n += 1
    return n


def build(name: str, cfg: dict, meta: dict, seed: int):
    """DeepCTR-Torch model `name` with the hyper-parameters in `cfg` (from rlrec's yaml, mapped by
    ctr_peer.py) and no L2 regularisation (rlrec trains with plain Adam, weight_decay 0)."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.layers import BilinearInteraction, SENETLayer
    from deepctr_torch.models import DCN, DIEN, DIN, AutoInt, DeepFM, FiBiNET
    from torch import nn

    D = int(cfg["embed_dim"])
    L = int(meta["history_len"])
    fields = list(meta["field_names"])
    item_fields = list(meta["item_field_names"])
    vocab = dict(zip(fields, (int(v) for v in meta["vocab_sizes"])))
    sparse = [SparseFeat(f, vocab[f], embedding_dim=D) for f in fields]

    def history(prefix: str):
        # shares the target item field's table (embedding_name), like rlrec's FeatureEmbedding
        return [
            VarLenSparseFeat(
                SparseFeat(prefix + f, vocab[f], embedding_dim=D, embedding_name=f),
                maxlen=L,
                combiner="mean",
                length_name="hist_len",
            )
            for f in item_fields
        ]

    common = dict(l2_reg_embedding=0.0, init_std=1e-4, seed=seed, task="binary", device="cpu")
    mlp = dict(dnn_hidden_units=tuple(cfg["mlp_dims"]), dnn_dropout=float(cfg.get("dropout", 0.0)))
    act = activation(cfg.get("activation", "relu"))
    notes: list[str] = []

    if name == "din":
        cols = sparse + history("hist_")
        model = DIN(
            cols,
            item_fields,
            dnn_use_bn=bool(cfg["batch_norm"]),
            dnn_activation=act,
            att_hidden_size=tuple(cfg["attention_dims"]),
            att_activation="Dice" if cfg["activation"].lower() == "dice" else act,
            att_weight_normalization=bool(cfg["attention_softmax"]),
            l2_reg_dnn=0.0,
            **mlp,
            **common,
        )
        if fix_dnn_dice(model.dnn):
            notes.append("final-MLP Dice switched to its 2-D form (library bug)")
    elif name == "dien":
        cols = sparse + history("hist_") + history("neg_hist_")
        model = DIEN(
            cols,
            item_fields,
            gru_type="AUGRU",
            use_negsampling=float(cfg["aux_weight"]) > 0,
            alpha=float(cfg["aux_alpha"]),
            use_bn=bool(cfg["batch_norm"]),
            dnn_activation=act,
            att_hidden_units=tuple(cfg["att_hidden_units"]),
            att_activation=cfg["att_activation"],
            att_weight_normalization=True,
            l2_reg_dnn=0.0,
            **mlp,
            **common,
        )
        if fix_dnn_dice(model.dnn):
            notes.append("final-MLP Dice switched to its 2-D form (library bug)")
    elif name == "deepfm":
        cols = sparse + history("hist_")
        model = DeepFM(
            cols,
            cols,
            dnn_activation=act,
            dnn_use_bn=bool(cfg["batch_norm"]),
            l2_reg_linear=0.0,
            l2_reg_dnn=0.0,
            **mlp,
            **common,
        )
    elif name == "dcn":
        cols = sparse + history("hist_")
        model = DCN(
            [],  # rlrec's DCN has no wide/linear part: cross ⊕ deep → one linear layer
            cols,
            cross_num=int(cfg["num_layers"]),
            cross_parameterization={"v1": "vector", "v2": "matrix"}[cfg["version"]],
            dnn_activation=act,
            dnn_use_bn=bool(cfg["batch_norm"]),
            l2_reg_linear=0.0,
            l2_reg_cross=0.0,
            l2_reg_dnn=0.0,
            **mlp,
            **common,
        )
    elif name == "autoint":
        cols = sparse + history("hist_")
        model = AutoInt(
            [],  # rlrec's AutoInt has no linear part
            cols,
            att_layer_num=int(cfg["num_layers"]),
            att_head_num=int(cfg["num_heads"]),
            att_res=bool(cfg["residual"]),
            dnn_activation=act,
            dnn_use_bn=bool(cfg["batch_norm"]),
            l2_reg_dnn=0.0,
            **mlp,
            **common,
        )
        # AutoInt sizes its output layer with len(embedding_dict) (= embedding *tables*), which
        # undercounts the fields when history features share the item tables; resize it to the
        # real field count (the forward pass is unchanged).
        n_fields = len(cols)
        if len(model.embedding_dict) != n_fields:
            in_dim = n_fields * D + (mlp["dnn_hidden_units"][-1] if mlp["dnn_hidden_units"] else 0)
            model.dnn_linear = nn.Linear(in_dim, 1, bias=False)
            notes.append(f"output layer resized to {n_fields} fields (library bug with shared tables)")
    elif name == "fibinet":
        cols = sparse + history("hist_")
        model = FiBiNET(
            cols if cfg["first_order"] else [],
            cols,
            bilinear_type=cfg["bilinear_type"],
            reduction_ratio=cfg["reduction_ratio"],
            dnn_activation=act,
            l2_reg_linear=0.0,
            l2_reg_dnn=0.0,
            **mlp,
            **common,
        )
        # same undercount as AutoInt: SENET and the bilinear layer get len(embedding_dict) fields
        n_fields = len(cols)
        if model.field_size != n_fields:
            model.field_size = n_fields
            model.SE = SENETLayer(n_fields, cfg["reduction_ratio"], seed)
            model.Bilinear = BilinearInteraction(n_fields, D, cfg["bilinear_type"], seed)
            notes.append(f"SENET/bilinear layers rebuilt for {n_fields} fields (library bug with shared tables)")
    else:
        raise SystemExit(f"_peer_side.py: no DeepCTR-Torch model for {name!r}")
    return model, notes


def model_input(model, arrays: dict, split: str, meta: dict) -> np.ndarray:
    """(N, columns) float32 in `model.feature_index` order, as DeepCTR-Torch's own fit builds it."""
    fields = list(meta["field_names"])
    item_fields = list(meta["item_field_names"])
    n = len(arrays[f"{split}_label"])
    columns = {f: arrays[f"{split}_fields"][:, k] for k, f in enumerate(fields)}
    for k, f in enumerate(item_fields):
        columns["hist_" + f] = arrays[f"{split}_hist"][:, :, k]
        columns["neg_hist_" + f] = np.zeros((n, int(meta["history_len"])), np.int64)  # filled per batch
    columns["hist_len"] = arrays[f"{split}_hist_len"]
    parts = []
    for name, (start, stop) in model.feature_index.items():
        col = np.asarray(columns[name]).reshape(n, -1)
        assert col.shape[1] == stop - start, (name, col.shape, (start, stop))
        parts.append(col)
    return np.concatenate(parts, axis=1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--npz", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", required=True, help="JSON: hyper-parameters + protocol")
    ap.add_argument(
        "--serve",
        action="store_true",
        help='interleaved throughput: read one JSON line {"steps": k} per turn from stdin, train k '
        "batches, answer with one JSON line {seconds, samples}; stop at end of input",
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _protocol

    _protocol.set_threads(args.threads)
    deepctr_torch = import_deepctr()
    cfg = json.loads(args.config)
    protocol = cfg.pop("protocol")
    fused = bool(cfg.pop("fused_adam", False))  # ctr_peer.py --peer-fused-adam: not the library's default

    with np.load(args.npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = {
        "field_names": [str(s) for s in arrays["field_names"]],
        "item_field_names": [str(s) for s in arrays["item_field_names"]],
        "vocab_sizes": arrays["vocab_sizes"].tolist(),
        "history_len": int(arrays["history_len"]),
    }

    torch.manual_seed(args.seed)
    model, notes = build(args.model, cfg, meta, args.seed)
    tensors = {}
    for split in SPLITS:
        x = torch.from_numpy(model_input(model, arrays, split, meta))
        tensors[split] = {"x": x, "label": torch.from_numpy(arrays[f"{split}_label"].astype(np.float32))}

    neg_cols = None
    if args.model == "dien" and model.use_negsampling:
        # uniform random catalogue items, drawn fresh for every batch (as rlrec's DIEN does),
        # written through the item table into the neg_hist_* columns
        item_table = torch.from_numpy(arrays["item_table"])  # (num_items + 1, F_item)
        num_items = item_table.shape[0] - 1
        neg_cols = [model.feature_index["neg_hist_" + f] for f in meta["item_field_names"]]
        L = meta["history_len"]

    def loss_fn(m, batch):
        x = batch["x"]
        if neg_cols is not None:
            x = x.clone()
            neg = item_table[torch.randint(1, num_items + 1, (len(x), L))]  # (B, L, F_item)
            for k, (start, stop) in enumerate(neg_cols):
                x[:, start:stop] = neg[:, :, k].float()
        y_pred = m(x).squeeze(-1)
        # DeepCTR-Torch's fit: BCE on the sigmoid output + its regularisation loss (0 here: every
        # l2 is 0) + the model's auxiliary loss (DIEN); mean BCE as in rlrec, not fit's sum
        loss = F.binary_cross_entropy(y_pred, batch["label"])
        return (loss + m.get_regularization_loss() + m.aux_loss).sum()

    def predict(m, batch):
        return m(batch["x"]).squeeze(-1)

    optimizer = (lambda params: torch.optim.Adam(params, lr=protocol.get("lr", 1e-3), fused=True)) if fused else None
    if args.serve:
        clock = _protocol.StepClock(model, tensors["train"], loss_fn, seed=args.seed,
                                    lr=protocol.get("lr", 1e-3), optimizer=optimizer,
                                    max_grad_norm=protocol.get("max_grad_norm"))  # fmt: skip
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            print(json.dumps(clock.steps(int(json.loads(line)["steps"]))), flush=True)
        return
    result = _protocol.run(model, tensors["train"], tensors["valid"], tensors["test"], loss_fn, predict,
                           seed=args.seed, optimizer=optimizer, **protocol)  # fmt: skip
    result.update(
        library="deepctr-torch",
        library_version=deepctr_torch.__version__,
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        notes=notes,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
