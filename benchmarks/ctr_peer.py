"""rlrec's CTR backbones against DeepCTR-Torch or FuxiCTR on identical MovieLens-100K splits.

    python benchmarks/ctr_peer.py                                   # all models, seeds 1,2,3
    python benchmarks/ctr_peer.py --models din,deepfm --seeds 1 --max-epochs 1 --limit-batches 10
    python benchmarks/ctr_peer.py --models fibinet --speed-seconds 600       # longer interleaved phase
    python benchmarks/ctr_peer.py --peer fuxictr --reference        # FuxiCTR, its reference setting
    python benchmarks/ctr_peer.py --peer fuxictr --set din.mlp_dims=[256,128,64] --set dcn.num_layers=2

Protocol (the CTR reference protocol): embedded MovieLens-100K, every rating one sample, label =
rating >= 4; rows sorted by (timestamp, user, item), first 80% train, next 10% valid, last 10% test
(`SplitConfig(protocol="temporal", leakage_guard=False)`). Fields: user id, item id, gender, age
bucket, occupation, first zip char, first genre, release decade; behaviour sequence = up to 20 most
recent strictly earlier items (each as item id, genre, decade). Vocabularies fitted on train,
unseen → OOV. Embedding dim 16, Adam lr 1e-3, batch 1024, <= 10 epochs, early stopping on
validation AUC (patience 2), test AUC / log-loss of the best-validation epoch. Each side builds Adam
as its library does (rlrec: conf/train.yaml's, fused; DeepCTR-Torch: `compile("adam")`'s
torch.optim.Adam; FuxiCTR: `compile("adam", lr)`'s torch.optim.Adam); gradients are clipped where
the peer's own training step clips them, on both sides (FuxiCTR: total norm 10, its default
`max_gradient_norm`; DeepCTR-Torch: no clipping). Where the peer fixes a hyper-parameter rlrec's
yaml sets differently, rlrec is run at the peer's value (`same_settings`), so both sides train the
same architecture.

rlrec prepares the data once (`rlrec.data.features.prepare`); the encoded arrays are written to an
.npz that the peer side reads (`_peer_side.py` with benchmarks/.venv-peer/bin/python for
DeepCTR-Torch, `_fuxictr_side.py` with benchmarks/.venv-fuxictr/bin/python for FuxiCTR), so both
sides see the same samples, vocabularies and histories. Both sides train with the same loop
(`_protocol.py`: same batches in the same seeded order, same early stopping, same metric code,
same throughput clock), one after the other, never concurrently, with the same thread count; which
side runs first alternates from seed to seed, because this kind of machine's speed drifts over
minutes.
After a model's seeds, both sides train once more in turns (`interleaved_speed`): the peer as a
server process that trains k batches per request, rlrec here, alternating every `--speed-steps`
steps, for at least `--speed-rounds` rounds and until the rounds have taken `--speed-seconds` (so a
fast model gets more rounds than a slow one, and each model's number spans minutes of machine
time). This throughput is not confounded with the machine's drift, which on a shared VM reaches
tens of percent over minutes; both numbers are reported.
rlrec's models are built from conf/backbone/<name>.yaml; the peer's hyper-parameters are mapped
from the same yaml (`peer_config`), and whatever the peer cannot match is listed in the output.
Settings other than the yaml's are given as overrides of it, applied to both sides before
`same_settings`: `--set model.key=value` (repeatable; the value is parsed as YAML, e.g.
`din.mlp_dims=[256,128,64]`, `din.attention_softmax=false`), and `--reference`, which applies the
fixed table `REFERENCE` first (the setting the FuxiCTR comparison was asked for: embedding 16, MLP
256-128-64, DIN Dice with a [64] attention unit and no softmax, DIEN relu without the auxiliary
loss, DCN v1 with 3 cross layers, AutoInt 3 layers x 2 heads x 16 with residual and no scaling
and no DNN, no dropout or batch norm; batch 1024, Adam 1e-3, clipping 10 and 1 thread come with
the protocol and `--peer fuxictr`). The overrides are listed in the report's run section.

The peer environments (kept out of git):

    python -m venv benchmarks/.venv-peer
    benchmarks/.venv-peer/bin/pip install torch==2.13.0 deepctr-torch==0.3.0 pandas pyarrow scikit-learn
    bash benchmarks/setup_fuxictr.sh     # .venv-fuxictr (fuxictr==2.3.10) + its model_zoo in .fuxictr-src
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("din", "dien", "deepfm", "dcn", "autoint", "fibinet", "fignn")


@dataclasses.dataclass(frozen=True)
class Peer:
    """A peer library: where its side runs and what the report says about it."""

    label: str  # as the report names it
    package: str  # its distribution on PyPI
    python: Path  # the virtualenv's python
    side: str  # the script that python runs (same CLI and JSON output for every peer)
    models: dict[str, str]  # rlrec backbone → the peer's model (the backbones it has)
    max_grad_norm: float | None  # its training step's gradient clipping, applied to both sides
    optimizer: str  # how it builds Adam, for the report
    replaced: str  # what its own fit does that the shared protocol replaces, for the report
    setup: str  # how to create its environment


PEERS = {
    "deepctr": Peer(
        label="DeepCTR-Torch",
        package="deepctr-torch",
        python=HERE / ".venv-peer" / "bin" / "python",
        side="_peer_side.py",
        models={
            "din": "DIN",
            "dien": "DIEN",
            "deepfm": "DeepFM",
            "dcn": "DCN",
            "autoint": "AutoInt",
            "fibinet": "FiBiNET",
        },
        max_grad_norm=None,
        optimizer="torch.optim.Adam, as its compile('adam')",
        replaced="its fit's summed BCE (both sides: mean BCE)",
        setup="python -m venv benchmarks/.venv-peer\n"
        "  benchmarks/.venv-peer/bin/pip install torch==2.13.0 deepctr-torch==0.3.0 pandas pyarrow scikit-learn",
    ),
    "fuxictr": Peer(
        label="FuxiCTR",
        package="fuxictr",
        python=HERE / ".venv-fuxictr" / "bin" / "python",
        side="_fuxictr_side.py",
        models={
            "din": "DIN",
            "dien": "DIEN",
            "deepfm": "DeepFM",
            "dcn": "DCN",
            "autoint": "AutoInt",
            "fibinet": "FiBiNET",
            "fignn": "FiGNN",
        },
        max_grad_norm=10.0,
        optimizer="torch.optim.Adam, as its compile('adam', lr)",
        replaced="its fit's file-reading data loaders and its lr decay x0.1 after every validation plateau "
        "(reduce_lr_on_plateau); both sides keep lr 1e-3",
        setup="bash benchmarks/setup_fuxictr.sh   (FUXICTR_GIT_DIR=<a FuxiCTR git dir> without network)",
    ),
}

# --reference: the setting the FuxiCTR comparison was asked for, as overrides of conf/backbone/*.yaml
MLP = [256, 128, 64]
PLAIN = {"embed_dim": 16, "dropout": 0.0, "batch_norm": False}
# a key `same_settings` adds to a model's config for rlrec_side (not a yaml key): BatchNorm settings
# for every Dice module, where the peer's are fixed
DICE_BN = "__dice_batch_norm__"

REFERENCE = {
    "din": {**PLAIN, "mlp_dims": MLP, "activation": "dice", "attention_dims": [64], "attention_softmax": False},
    "dien": {**PLAIN, "mlp_dims": MLP, "activation": "relu", "aux_weight": 0.0},
    "deepfm": {**PLAIN, "mlp_dims": MLP},
    "dcn": {**PLAIN, "mlp_dims": MLP, "version": "v1", "num_layers": 3},
    "autoint": {
        **PLAIN,
        "mlp_dims": [],
        "num_layers": 3,
        "num_heads": 2,
        "head_dim": 16,
        "residual": True,
        "scale": False,
    },
    "fibinet": {**PLAIN, "mlp_dims": MLP},
    "fignn": {"embed_dim": 16, "self_attention": False},  # the peer's FiGNN has no §3.3 layer
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", choices=sorted(PEERS), default="deepctr", help="the library rlrec is compared with")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (quick checks)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--speed-rounds",
        type=int,
        default=20,
        help="interleaved throughput: at least this many rounds of turns per model (0: whole-run throughput only)",
    )
    ap.add_argument(
        "--speed-seconds",
        type=float,
        default=120.0,
        help="interleaved throughput: keep adding pairs of rounds until the rounds took this long",
    )
    ap.add_argument("--speed-steps", type=int, default=10, help="training steps per side per round")
    ap.add_argument("--speed-warmup", type=int, default=10, help="untimed steps per side before the rounds")
    ap.add_argument(
        "--peer-fused-adam",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the peer torch's fused Adam, as rlrec's side has (the default: both sides at their best); "
        "--no-peer-fused-adam keeps the loop version its compile('adam') builds",
    )
    ap.add_argument(
        "--peer-as-shipped",
        action="store_true",
        help="FuxiCTR: keep the N(0, 1) start of the LR tables its init skips (share_embedding fields "
        "of DeepFM / FiBiNET); by default they are initialised N(0, 1e-4), as the peer declares",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="apply the reference setting (REFERENCE) to conf/backbone/*.yaml before any --set",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MODEL.KEY=VALUE",
        help="override one key of conf/backbone/MODEL.yaml on both sides (VALUE parsed as YAML); repeatable",
    )
    ap.add_argument("--out", default=None, help="report (default: results/ctr_peer.md, results/ctr_peer_fuxictr.md)")
    ap.add_argument("--peer-python", default=None, help="default: the peer's virtualenv")
    ap.add_argument("--data-path", default=None, help="folder with MovieLens100k_*.parquet.brotli")
    args = ap.parse_args(argv)
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.overrides = {m: dict(REFERENCE.get(m, {})) if args.reference else {} for m in MODELS}
    for item in args.set:
        target, sep, value = item.partition("=")
        model, dot, key = target.partition(".")
        if not (sep and dot and key) or model not in MODELS:
            ap.error(f"--set {item!r}: expected MODEL.KEY=VALUE with MODEL one of {', '.join(MODELS)}")
        args.overrides[model][key] = yaml.safe_load(value)
    if args.out is None:
        name = "ctr_peer.md" if args.peer == "deepctr" else f"ctr_peer_{args.peer}.md"
        args.out = str(HERE / "results" / name)
    if args.peer_python is None:
        args.peer_python = str(PEERS[args.peer].python)
    return args


# ---- data ------------------------------------------------------------------------------------
def prepare_data(path: str | None):
    from rlrec.data.features import prepare
    from rlrec.data.movielens import load_movielens100k
    from rlrec.data.splits import SplitConfig

    split = SplitConfig(protocol="temporal", ratios=(0.8, 0.1, 0.1), leakage_guard=False)
    return prepare(load_movielens100k(path), label_threshold=4, split=split, history_len=20)


def write_npz(prep, file: Path) -> dict:
    """Per split: field indices per sample (N, 8), history field indices (N, L, 3: item id, genre,
    decade), history lengths, labels; plus field names, vocab sizes and the item table."""
    import numpy as np

    spec = prep.spec
    f = prep.frame
    out = {
        "field_names": np.array([fl.name for fl in spec.fields]),
        "item_field_names": np.array([fl.name for fl in spec.item_fields]),
        "vocab_sizes": np.array([fl.vocab_size for fl in spec.fields], np.int64),
        "history_len": np.array(spec.history_len),
        "item_table": spec.item_table.astype(np.int64),
    }
    for split in ("train", "valid", "test"):
        rows = prep.rows(split)
        u, i = f["u"].to_numpy()[rows], f["i"].to_numpy()[rows]
        hist = prep.history[rows]  # (N, L) catalogue indices, right-padded with 0
        out[f"{split}_fields"] = np.concatenate([spec.user_table[u], spec.item_table[i]], 1).astype(np.int64)
        out[f"{split}_hist"] = spec.item_table[hist].astype(np.int64)  # PAD row 0 → field index 0
        out[f"{split}_hist_len"] = (hist > 0).sum(1).astype(np.int64)
        out[f"{split}_label"] = f["label"].to_numpy()[rows].astype(np.float32)
        assert (out[f"{split}_hist"][hist == 0] == 0).all()
        # right padding: the first hist_len positions are the real items
        n = out[f"{split}_hist_len"]
        assert ((hist > 0) == (np.arange(hist.shape[1])[None, :] < n[:, None])).all()
    np.savez(file, **out)
    return {s: int(len(out[f"{s}_label"])) for s in ("train", "valid", "test")}


# ---- configurations --------------------------------------------------------------------------
def backbone_config(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml"), resolve=True)


def settings(name: str, args) -> tuple[dict, list[str]]:
    """The configuration both sides of model `name` train: conf/backbone/<name>.yaml with the
    `--reference` / `--set` overrides, then `same_settings` for the peer; its notes."""
    c = backbone_config(name)
    unknown = sorted(set(args.overrides[name]) - set(c))
    if unknown:
        sys.exit(f"override(s) {unknown} not in conf/backbone/{name}.yaml (keys: {', '.join(c)})")
    return same_settings(args.peer, name, {**c, **args.overrides[name]})


def same_settings(peer: str, name: str, c: dict) -> tuple[dict, list[str]]:
    """rlrec's configuration `c` with the hyper-parameters the peer has fixed set to the peer's
    values, so both sides train the same architecture (same width, same work, same objective);
    the changes as notes."""
    c, notes = dict(c), []
    if peer == "deepctr" and name == "autoint" and c["num_heads"] * c["head_dim"] != c["embed_dim"]:
        # DeepCTR-Torch's interacting layers are always embed_dim wide (heads × embed_dim / heads)
        notes.append(
            f"rlrec run with head_dim={c['embed_dim'] // c['num_heads']} (yaml: {c['head_dim']}) to match "
            f"the peer's fixed width {c['num_heads']} heads x {c['embed_dim'] // c['num_heads']}"
        )
        c["head_dim"] = c["embed_dim"] // c["num_heads"]
    if peer == "fuxictr" and name == "dien" and c["aux_weight"]:
        # DIEN.add_loss (2.3.10) calls .view on the non-contiguous pad_mask[:, 1:], and past that
        # would multiply the (2N, 1) losses of positives and negatives by an (N, 1) mask
        notes.append(
            f"rlrec run with aux_weight=0 (yaml: {c['aux_weight']}): FuxiCTR's DIEN auxiliary loss "
            "crashes (DIEN.add_loss: a view of a non-contiguous mask), so neither side trains it"
        )
        c["aux_weight"] = 0.0
    if peer == "fuxictr" and c.get("activation") == "dice":
        # FuxiCTR's Dice fixes its BatchNorm at momentum 0.01, eps 1e-9 (rlrec's Dice: PyTorch's 0.1, 1e-8):
        # the running statistics that evaluation uses differ; rlrec_side sets the peer's on its modules
        notes.append(
            "rlrec's Dice BatchNorm run at the peer's fixed momentum 0.01 and eps 1e-9 (rlrec's default: 0.1, "
            "1e-8), so both evaluate with the same kind of running statistics"
        )
        c[DICE_BN] = {"momentum": 0.01, "eps": 1e-9}
    if peer == "fuxictr" and name == "fignn" and c["leaky_slope"] != 0.01:
        notes.append(
            f"rlrec run with leaky_slope=0.01 (yaml: {c['leaky_slope']}): the peer's edge-attention "
            "LeakyReLU slope is fixed"
        )
        c["leaky_slope"] = 0.01
    return c, notes


def rlrec_optimizer():
    """The optimiser partial rlrec trains backbones with (conf/train.yaml)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(ROOT / "conf" / "train.yaml").optimizer)


def peer_config(peer: str, name: str, c: dict) -> tuple[dict, list[str]]:
    """The peer's configuration of model `name` equivalent to rlrec's `c` (as `settings` gives
    it), and the differences that remain."""
    return {"deepctr": deepctr_config, "fuxictr": fuxictr_config}[peer](name, c)


def deepctr_config(name: str, c: dict) -> tuple[dict, list[str]]:
    """DeepCTR-Torch hyper-parameters equivalent to rlrec's yaml `c`, and the differences that
    remain (what DeepCTR-Torch cannot express, or does differently by construction)."""
    common = {
        "embed_dim": c["embed_dim"],
        "mlp_dims": list(c.get("mlp_dims", [])),
        "dropout": c.get("dropout", 0.0),
        "activation": c.get("activation", "relu"),
        "batch_norm": c.get("batch_norm", False),
    }
    notes = [
        "peer inits every MLP weight N(0, 1e-4) (DeepCTR-Torch's init_std); rlrec keeps PyTorch's default init",
        "peer outputs sigmoid probabilities and trains on BCE of them; rlrec trains on BCE-with-logits",
    ]
    if name == "din":
        cfg = {**common, "attention_dims": list(c["attention_dims"]), "attention_softmax": c["attention_softmax"]}
        notes.append("Dice: the peer's BatchNorm is affine (learned scale/shift), rlrec's is not")
    elif name == "dien":
        if c.get("hidden_dim") is not None:
            notes.append(f"hidden_dim={c['hidden_dim']} not expressible: the peer's GRU width is the item width")
        if list(c.get("aux_dims", [100, 50])) != [100, 50] or c.get("aux_activation", "sigmoid") != "sigmoid":
            notes.append("peer's auxiliary net is fixed at [100, 50] sigmoid")
        cfg = {
            **common,
            "aux_weight": c["aux_weight"],
            # rlrec: L_aux = mean BCE(pos) + mean BCE(neg) (eq. 6); DeepCTR-Torch: mean BCE over
            # pos and neg together = half of that, so alpha_peer = 2 alpha gives the same objective
            "aux_alpha": 2.0 * float(c["aux_weight"]),
            "att_hidden_units": [64, 16],  # the peer's defaults: it has no bilinear attention
            "att_activation": "relu",
        }
        notes += [
            "attention: rlrec uses the paper's bilinear score h_t W e_a (eq. 8); the peer an MLP "
            "activation unit [64, 16] relu over [q, k, q-k, q*k] (its default), softmax on both",
            "peer packs variable-length sequences; rlrec runs right-padded sequences (same states)",
        ]
    elif name == "deepfm":
        cfg = dict(common)
    elif name == "dcn":
        cfg = {**common, "num_layers": c["num_layers"], "version": c["version"]}
    elif name == "autoint":
        cfg = {**common, "num_layers": c["num_layers"], "num_heads": c["num_heads"], "residual": c["residual"]}
        if c.get("scale"):
            notes.append("peer's AutoInt never scales attention scores (rlrec: scale=true)")
    elif name == "fibinet":
        cfg = {
            **common,
            "bilinear_type": {"field_all": "all", "field_each": "each", "field_interaction": "interaction"}[
                c["bilinear_type"]
            ],
            "reduction_ratio": c["reduction_ratio"],
            "first_order": c["first_order"],
        }
        notes.append("peer shares ONE bilinear layer between E and the SENET output V; rlrec has two")
        if c.get("excitation_activation", "relu") != "relu":
            notes.append("peer's SENET excitation is fixed at relu")
        if c.get("batch_norm"):
            notes.append("peer's FiBiNET has no batch-norm option")
    else:
        raise ValueError(name)
    return cfg, notes


def fuxictr_config(name: str, c: dict) -> tuple[dict, list[str]]:
    """FuxiCTR model equivalent to rlrec's `c`: {"zoo": its folder in FuxiCTR's model_zoo, "class",
    "kwargs": its keyword arguments}, and the differences that remain. `_fuxictr_side.py` adds what
    depends on the data (the feature map, DIN's / DIEN's target and sequence fields) and BaseModel's
    own arguments."""
    # FuxiCTR's get_activation knows relu, sigmoid, tanh, prelu and dice by name, others as torch.nn classes
    act = {"gelu": "GELU"}.get(c.get("activation", "relu"), c.get("activation", "relu"))
    mlp = list(c.get("mlp_dims", []))
    net = {
        "embedding_dim": c["embed_dim"],
        "net_dropout": c.get("dropout", 0.0),
        "batch_norm": c.get("batch_norm", False),
    }
    notes = [
        "peer inits every Linear weight xavier-normal with zero bias (BaseModel.reset_parameters); "
        "rlrec keeps PyTorch's default Linear init (embeddings N(0, 1e-4) on both sides)",
        "peer outputs sigmoid probabilities and trains on BCE of them (compute_loss); rlrec trains on BCE-with-logits",
    ]
    first_order = (
        "first-order term: the peer's LR layer gives each history field its own 1-d table (not the item's), "
        "sum-pooled; rlrec: the item's first-order weights, mean-pooled"
    )
    if name == "din":
        zoo, cls = "DIN", "DIN"
        kwargs = {
            **net,
            "dnn_hidden_units": mlp,
            "dnn_activations": act,
            "attention_hidden_units": list(c["attention_dims"]),
            "attention_hidden_activations": act,
            "attention_output_activation": None,
            "attention_dropout": 0.0,
            "din_use_softmax": c["attention_softmax"],
        }
    elif name == "dien":
        zoo, cls = "DIEN", "DIEN"
        kwargs = {
            **net,
            "dnn_hidden_units": mlp,
            "dnn_activations": act,
            "gru_type": "AUGRU",
            "attention_type": "bilinear_attention",  # h_t W e_a, as rlrec (eq. 8)
            "use_attention_softmax": True,
            "enable_sum_pooling": False,  # MLP input [field embeddings, h'_T], as rlrec
            "aux_loss_alpha": c["aux_weight"],  # 0: `same_settings`
        }
        if c.get("hidden_dim") is not None:
            notes.append(f"hidden_dim={c['hidden_dim']} not expressible: the peer's GRU width is the item width")
        notes += [
            "attention: the peer initialises the bilinear W to the identity (rlrec: PyTorch's default Linear init)",
            "peer packs variable-length sequences (nn.GRU extractor, AUGRU cell stepped over the packed "
            "batch); rlrec runs right-padded sequences (same states); the peer's AUGRU has a bias on both "
            "projections (rlrec: the input one)",
        ]
    elif name == "deepfm":
        zoo, cls = "DeepFM/DeepFM_torch", "DeepFM"
        kwargs = {**net, "hidden_units": mlp, "hidden_activations": act}
        notes.append(first_order)
    elif name == "dcn":
        if c["version"] == "v1":
            zoo, cls = "DCN/DCN_torch", "DCN"
            kwargs = {**net, "dnn_hidden_units": mlp, "dnn_activations": act, "num_cross_layers": c["num_layers"]}
        else:  # DCN-V2's parallel structure with full-rank cross layers, as rlrec's v2
            zoo, cls = "DCNv2", "DCNv2"
            kwargs = {
                **net,
                "model_structure": "parallel" if mlp else "crossnet_only",
                "use_low_rank_mixture": False,
                "parallel_dnn_hidden_units": mlp,
                "dnn_activations": act,
                "num_cross_layers": c["num_layers"],
            }
    elif name == "autoint":
        zoo, cls = "AutoInt", "AutoInt"
        width = c["num_heads"] * c["head_dim"]
        kwargs = {
            **net,
            "dnn_hidden_units": mlp,  # [] = plain AutoInt, as rlrec
            "dnn_activations": act,
            "attention_layers": c["num_layers"],
            "num_heads": c["num_heads"],
            "attention_dim": width,  # all heads together: head_dim = attention_dim / num_heads
            "use_residual": c["residual"],
            "use_scale": c["scale"],
            "layer_norm": False,
            "use_wide": False,
        }
        if c["residual"]:
            projected = 1 if c["embed_dim"] != width else 0
            notes.append(
                f"residual: the peer projects (W_Res) only where a layer changes width ({projected} of "
                f"{c['num_layers']} layers here) and adds the identity elsewhere; rlrec projects in every "
                "layer"
            )
        if c.get("dropout"):
            notes.append("peer's net_dropout also drops attention weights (rlrec: the DNN's only)")
    elif name == "fibinet":
        zoo, cls = "FiBiNET", "FiBiNET"
        kwargs = {
            **net,
            "hidden_units": mlp,
            "hidden_activations": act,
            "bilinear_type": c["bilinear_type"],
            "reduction_ratio": c["reduction_ratio"],
            "excitation_activation": c["excitation_activation"],
        }
        notes.append(first_order if c["first_order"] else "peer always has its first-order (LR) term")
        if c["excitation_activation"] != "relu":
            notes.append("peer's first SENET excitation activation is fixed at relu")
    elif name == "fignn":
        zoo, cls = "FiGNN", "FiGNN"
        kwargs = {
            "embedding_dim": c["embed_dim"],
            "gnn_layers": c["num_layers"],
            "use_residual": c["residual"],
            "use_gru": True,
            "reuse_graph_layer": True,  # one W_in / W_out set for every step, as rlrec
        }
        if c.get("self_attention", True):
            notes.append(
                f"peer has no multi-head self-attention layer before the graph (§3.3): its node states are "
                f"the {c['embed_dim']}-wide field embeddings (rlrec: {c['num_heads']} heads x {c['head_dim']}; "
                "self_attention=false removes it)"
            )
        notes += [
            "scoring: the peer weighs the nodes by sigmoid(W [h_1 ... h_F]) from all states at once and "
            "scores each by a linear map; rlrec: a_i = MLP_2(h_i), y_i = MLP_1(h_i) per node"
        ]
    else:
        raise ValueError(name)
    return {"zoo": zoo, "class": cls, "kwargs": kwargs}, notes


# ---- the two sides ---------------------------------------------------------------------------
def rlrec_side(cfg: dict, prep, seed: int):
    """rlrec's model built from `cfg` (`settings`; seeded), its train/valid/test tensors and the
    protocol's loss / predict."""
    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate

    from rlrec.data.ctr import ctr_tensors
    from rlrec.layers.mlp import Dice

    cfg = dict(cfg)
    dice_bn = cfg.pop(DICE_BN, None)
    torch.manual_seed(seed)
    model = instantiate(cfg)(features=prep.spec)
    for m in model.modules() if dice_bn else ():
        if isinstance(m, Dice):
            m.bn.momentum, m.bn.eps = dice_bn["momentum"], dice_bn["eps"]
    tensors = {s: ctr_tensors(prep, s) for s in ("train", "valid", "test")}

    def loss_fn(m, batch):  # as rlrec.tasks.ctr.CTRTask.training_step
        if hasattr(m, "forward_with_aux"):
            logits, aux = m.forward_with_aux(batch)
        else:
            logits, aux = m(batch), None
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
        return loss + aux if aux is not None else loss

    def predict(m, batch):
        return torch.sigmoid(m(batch))

    return model, tensors, loss_fn, predict


def warm_up(cfg: dict, prep, protocol: dict) -> float:
    """Build rlrec's compiled kernels (rlrec.layers.compiled) outside the clock: train a throwaway
    model built from `cfg` one step on a full batch and one on the epoch's last, smaller batch (the
    two shapes a run compiles for). Returns the seconds it took (0 with RLREC_COMPILE=0); the report
    gives them, as a once-per-process cost."""
    import _protocol

    from rlrec.layers import compiled

    if not compiled.enabled():
        return 0.0
    t0 = time.perf_counter()
    model, tensors, loss_fn, _ = rlrec_side(cfg, prep, seed=0)
    optimizer = _protocol.build_optimizer(model, rlrec_optimizer(), 1e-3)
    n, b = len(tensors["train"]["label"]), 1024
    for rows in (slice(0, b), slice(0, n % b or b)):
        batch = {k: v[rows] for k, v in tensors["train"].items()}
        _protocol.train_step(model, optimizer, loss_fn, batch, protocol["max_grad_norm"])
    return time.perf_counter() - t0


def cpu_model() -> str:
    """lscpu's model name and whether the CPU has avx512_bf16 / AMX (what bf16 speed depends on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
    has = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(has) if has else 'no avx512_bf16, no AMX'})"


def _relative(path) -> str:
    """A path inside the repository as a relative one (result files name no machine's folders)."""
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return Path(str(path)).name


def git_commit() -> str:
    """The checkout's short commit hash, or "?" outside a git checkout."""
    out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() or "?"


def run_line(threads: int) -> str:
    """The first line of a benchmark's output: UTC date and time, commit, CPU with its bf16 flags,
    threads, torch."""
    import torch

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"run: {now} · commit {git_commit()} · {cpu_model()} · {threads} threads · torch {torch.__version__}"


def run_rlrec(cfg: dict, prep, seed: int, protocol: dict) -> dict:
    import _protocol

    model, tensors, loss_fn, predict = rlrec_side(cfg, prep, seed)
    return _protocol.run(
        model,
        tensors["train"],
        tensors["valid"],
        tensors["test"],
        loss_fn,
        predict,
        seed=seed,
        optimizer=rlrec_optimizer(),
        **protocol,
    )


def peer_command(name: str, npz: Path, seed: int, cfg: dict, protocol: dict, args) -> tuple[list[str], dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [
        args.peer_python,
        str(HERE / PEERS[args.peer].side),
        "--npz",
        str(npz),
        "--model",
        name,
        "--seed",
        str(seed),
        "--threads",
        str(args.threads),
        "--config",
        json.dumps(
            {
                **cfg,
                "protocol": protocol,
                "fused_adam": args.peer_fused_adam,
                **({"as_shipped": True} if args.peer_as_shipped else {}),
            }
        ),
    ]
    return cmd, env


def run_peer(name: str, npz: Path, seed: int, cfg: dict, protocol: dict, args) -> dict:
    cmd, env = peer_command(name, npz, seed, cfg, protocol, args)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peer side failed for {name} seed {seed}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved_speed(name: str, rlrec_cfg: dict, prep, npz: Path, seed: int, cfg: dict, protocol: dict, args) -> dict:
    """Training throughput of both sides measured in turns: the peer trains in a server process
    (its side script with `--serve`) and waits, blocked on its stdin, while rlrec trains here (from
    `rlrec_cfg`). After `--speed-warmup` steps each, rounds of `--speed-steps` steps per side, which
    side goes first alternating from round to round: at least `--speed-rounds` rounds, then pairs of
    rounds (each side first once) until the rounds have taken `--speed-seconds`. Returns per-round
    samples/s and ratios."""
    import _protocol

    cmd, env = peer_command(name, npz, seed, cfg, protocol, args)
    peer = subprocess.Popen(cmd + ["--serve"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def peer_steps(k: int) -> dict:
        peer.stdin.write(json.dumps({"steps": k}) + "\n")
        peer.stdin.flush()
        line = peer.stdout.readline()
        if not line:
            raise RuntimeError(f"peer side of {name} stopped during the interleaved speed phase (see stderr)")
        return json.loads(line)

    try:
        if not peer.stdout.readline():  # {"ready": true} once the peer's model and data are built
            raise RuntimeError(f"peer side of {name} failed to start its speed server (see stderr)")
        model, tensors, loss_fn, _ = rlrec_side(rlrec_cfg, prep, seed)
        clock = _protocol.StepClock(model, tensors["train"], loss_fn, seed=seed, optimizer=rlrec_optimizer(),
                                    max_grad_norm=protocol["max_grad_norm"])  # fmt: skip
        sides = {"rlrec": clock.steps, "peer": peer_steps}
        for step in sides.values():  # warm-up: allocator, caches, first-call dispatch
            step(args.speed_warmup)
        rounds: dict = {"rlrec": [], "peer": []}  # per round: {seconds, samples}
        start, r = time.perf_counter(), 0
        while r < args.speed_rounds or r % 2 or time.perf_counter() - start < args.speed_seconds:
            for side in ["rlrec", "peer"] if r % 2 == 0 else ["peer", "rlrec"]:
                rounds[side].append(sides[side](args.speed_steps))
            r += 1
        return speed_summary(rounds)
    finally:
        peer.stdin.close()
        peer.wait(timeout=60)


def speed_summary(rounds: dict) -> dict:
    """Pooled samples/s per side (all rounds' samples / all rounds' seconds), their ratio, and the
    per-round ratios (the spread)."""
    pooled = {side: sum(t["samples"] for t in ts) / sum(t["seconds"] for t in ts) for side, ts in rounds.items()}
    per_round = [
        (a["samples"] / a["seconds"]) / (b["samples"] / b["seconds"]) for a, b in zip(rounds["rlrec"], rounds["peer"])
    ]
    return {
        "rlrec_samples_per_s": pooled["rlrec"],
        "peer_samples_per_s": pooled["peer"],
        "ratio": pooled["rlrec"] / pooled["peer"],
        "round_ratios": per_round,
        "rounds": rounds,
    }


# ---- report ----------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _fmt(values: list[float] | None, digits: int, signed: bool = False) -> str:
    if not values:
        return "n/a"
    mean, std = _stats(values)
    sign = "+" if signed else ""
    text = f"{mean:{sign}.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def report(results: dict, args, sizes: dict, meta: dict) -> str:
    peer = PEERS[args.peer]
    lines = [
        f"# CTR backbones: rlrec vs {peer.label}",
        "",
        f"MovieLens-100K, reference protocol (temporal 80/10/10, label = rating ≥ 4; "
        f"train {sizes['train']:,} / valid {sizes['valid']:,} / test {sizes['test']:,} samples). "
        f"Test metrics of the best-validation epoch; mean ± std over seeds {','.join(map(str, args.seeds))}.",
        "",
        "| model | rlrec AUC | peer AUC | ΔAUC | rlrec logloss | peer logloss "
        "| rlrec samples/s | peer samples/s | whole-run ratio | cold-start ratio | interleaved ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        r, p = results[name]["rlrec"], results[name]["peer"]
        col = lambda rs, key: [x[key] for x in rs] if rs else None  # noqa: E731
        paired = list(zip(r, p)) if p else []
        d_auc = [a["auc"] - b["auc"] for a, b in paired] or None
        ratio = [a["samples_per_s"] / b["samples_per_s"] for a, b in paired] or None
        # cold start: the first seed's training time with rlrec's one-time kernel compilation added
        cold = (
            [p[0]["train_seconds"] / (r[0]["train_seconds"] + results[name].get("compile_seconds", 0.0))]
            if paired
            else None
        )
        label = name if p else f"{name} (rlrec only)"
        lines.append(
            f"| {label} | {_fmt(col(r, 'auc'), 4)} | {_fmt(col(p, 'auc'), 4)} | {_fmt(d_auc, 4, True)} "
            f"| {_fmt(col(r, 'logloss'), 4)} | {_fmt(col(p, 'logloss'), 4)} "
            f"| {_fmt(col(r, 'samples_per_s'), 0)} | {_fmt(col(p, 'samples_per_s'), 0)} | {_fmt(ratio, 2)} "
            f"| {_fmt(cold, 2)} | {_fmt([results[name]['speed']['ratio']] if 'speed' in results[name] else None, 2)} |"
        )
    lines += [
        "",
        "ΔAUC = rlrec − peer and whole-run ratio = rlrec / peer samples/s, both per seed, then averaged. "
        "samples/s: training only (data loading included, validation excluded), same loop on both sides. "
        "Whole-run ratio: the runs above, the two sides one after the other (steady state: rlrec's compiled "
        "kernels are built before the clock). Cold-start ratio: the first seed's peer training seconds over "
        "rlrec's with that one-time compilation added. Interleaved ratio: rlrec / peer samples/s of the "
        "turn-taking measurement below.",
        "",
    ]
    speed = [name for name in args.models if "speed" in results[name]]
    if speed:
        lines += [
            "## Interleaved training throughput",
            "",
            f"Each side trains from a fresh model (seed {args.seeds[0]}) in turns: {args.speed_warmup} untimed "
            f"steps each, then rounds of {args.speed_steps} steps per side (at least {args.speed_rounds}, and "
            f"until the rounds took {args.speed_seconds:.0f} s; counts below), the first side "
            "alternating from round to round. The peer waits in its own process, blocked on a pipe, while rlrec "
            "trains, so both sides sample the same stretch of machine time; whole runs done one after the "
            "other also measure the machine's drift. samples/s pooled over all rounds (all samples / all "
            "seconds); ratio = rlrec / peer of those; the per-round ratios show the spread.",
            "",
            "| model | rounds | rlrec samples/s | peer samples/s | ratio | per-round ratio: median | quartiles "
            "| lowest |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in speed:
            import numpy as np

            sp = results[name]["speed"]
            q1, median, q3 = np.quantile(sp["round_ratios"], [0.25, 0.5, 0.75])
            lines.append(
                f"| {name} | {len(sp['round_ratios'])} | {sp['rlrec_samples_per_s']:.0f} | {sp['peer_samples_per_s']:.0f} | {sp['ratio']:.2f} "
                f"| {median:.2f} | {q1:.2f}–{q3:.2f} | {min(sp['round_ratios']):.2f} |"
            )
    lines += [
        "",
        "| model | epochs (rlrec / peer) | best epoch | valid AUC (rlrec / peer) | parameters (rlrec / peer) |",
        "|---|---|---|---|---|",
    ]
    for name in args.models:
        r, p = results[name]["rlrec"], results[name]["peer"]

        def pair(key, digits=0, r=r, p=p):
            digits = digits if len(r) > 1 else 0 if key != "val_auc" else digits
            a = _fmt([x[key] for x in r], digits)
            return f"{a} / {_fmt([x[key] for x in p], digits) if p else 'n/a'}"

        params = f"{r[0]['params']:,} / {p[0]['params']:,}" if p else f"{r[0]['params']:,} / n/a"
        lines.append(f"| {name} | {pair('epochs', 1)} | {pair('best_epoch', 1)} | {pair('val_auc', 4)} | {params} |")
    lines += ["", "## Configuration differences the peer cannot remove", ""]
    for name in args.models:
        notes = results[name]["notes"]
        if notes:
            lines.append(f"- **{name}** ({peer.models.get(name, 'no peer model')}): " + "; ".join(notes))
        elif name not in peer.models:
            lines.append(f"- **{name}**: {peer.label} has no such model; rlrec only")
    overrides = "; ".join(
        f"{name}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in args.overrides[name].items())
        for name in args.models
        if args.overrides[name]
    )
    flags = " and ".join(flag for flag, given in (("--reference", args.reference), ("--set", args.set)) if given)
    source = f", model_zoo at commit {meta['peer_source']}" if meta.get("peer_source") else ""
    lines += [
        "",
        "## Run",
        "",
        f"- date: {meta['date']}; wall time {meta['wall']:.0f} s; commit {git_commit()}",
        f"- threads: {args.threads} per side (torch.set_num_threads, OMP_NUM_THREADS); sides run one after the other, "
        "rlrec first for the 1st, 3rd, … seed and the peer first for the others",
        f"- max epochs {args.max_epochs}, patience {args.patience}, "
        f"limit-batches {args.limit_batches if args.limit_batches is not None else 'none (full epochs)'}",
        f"- rlrec {meta['rlrec']} (torch {meta['torch']}, Python {meta['python']})",
        f"- peer: {peer.package} {meta.get('peer_version', 'n/a')} "
        f"(torch {meta.get('peer_torch', 'n/a')}){source}, virtualenv {_relative(args.peer_python)}",
        "- settings: conf/backbone/<model>.yaml"
        + (f", overridden on both sides ({flags}): {overrides}" if overrides else ""),
        "- optimiser: rlrec fused Adam (conf/train.yaml); peer "
        + ("fused Adam (--peer-fused-adam)" if args.peer_fused_adam else peer.optimizer),
        "- gradient clipping: "
        + (
            f"total 2-norm {peer.max_grad_norm:g} on both sides ({peer.label}'s training step clips there)"
            if peer.max_grad_norm is not None
            else f"none ({peer.label}'s fit does not clip)"
        ),
        f"- the shared protocol replaces {peer.label}'s own training loop: {peer.replaced}",
        "- rlrec's compiled kernels (rlrec.layers.compiled; RLREC_COMPILE=0 switches them off) were built "
        "before each model's timed runs, once per process, not counted in samples/s: "
        + ", ".join(f"{m} {r.get('compile_seconds', 0.0):.1f} s" for m, r in results.items()),
        f"- machine: {meta['machine']}",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(meta['argv'])}`",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    # threads before torch is imported (rlrec imports it): the same count as the peer subprocess
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(HERE))
    import importlib.metadata

    import _protocol
    import torch

    _protocol.set_threads(args.threads)
    peer = PEERS[args.peer]
    need_peer = any(m in peer.models for m in args.models)
    if need_peer and not Path(args.peer_python).exists():
        sys.exit(f"peer virtualenv not found ({args.peer_python}); create it with\n  {peer.setup}")

    t_start = time.perf_counter()
    prep = prepare_data(args.data_path)
    protocol = {
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "limit_batches": args.limit_batches,
        "max_grad_norm": peer.max_grad_norm,
    }
    results: dict = {}
    meta = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "rlrec": importlib.metadata.version("rlrec"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {cpu_model()}",
        "argv": list(sys.argv[1:] if argv is None else argv),
    }
    with tempfile.TemporaryDirectory(prefix="ctr_peer_") as tmp:
        npz = Path(tmp) / "movielens100k_reference.npz"
        sizes = write_npz(prep, npz)
        print(f"data: {sizes}; arrays in {npz}", file=sys.stderr)
        for name in args.models:
            ycfg, notes = settings(name, args)
            cfg, peer_notes = peer_config(args.peer, name, ycfg) if name in peer.models else (None, [])
            notes = notes + peer_notes
            results[name] = {"rlrec": [], "peer": [], "notes": list(notes)}
            results[name]["compile_seconds"] = warm_up(ycfg, prep, protocol)
            for k, seed in enumerate(args.seeds):
                # the machine's speed drifts over minutes: alternate which side runs first
                sides = ["rlrec", "peer"] if cfg is not None else ["rlrec"]
                for side in sides if k % 2 == 0 else sides[::-1]:
                    if side == "rlrec":
                        r = run_rlrec(ycfg, prep, seed, protocol)
                        results[name]["rlrec"].append(r)
                        print(f"{name} seed {seed} rlrec: {json.dumps(r)}", file=sys.stderr)
                        continue
                    p = run_peer(name, npz, seed, cfg, protocol, args)
                    results[name]["peer"].append(p)
                    meta["peer_version"], meta["peer_torch"] = p["library_version"], p["torch_version"]
                    if "model_zoo_commit" in p:
                        meta["peer_source"] = p["model_zoo_commit"]
                    for note in p.get("notes", []):
                        if note not in results[name]["notes"]:
                            results[name]["notes"].append(note)
                    print(f"{name} seed {seed} peer:  {json.dumps(p)}", file=sys.stderr)
            if cfg is not None and args.speed_rounds > 0:
                speed = interleaved_speed(name, ycfg, prep, npz, args.seeds[0], cfg, protocol, args)
                results[name]["speed"] = speed
                print(f"{name} interleaved speed: {json.dumps(speed)}", file=sys.stderr)
    meta["wall"] = time.perf_counter() - t_start
    text = report(results, args, sizes, meta)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "meta": meta, "results": results}, indent=1))
    print(f"written: {out} (+ {out.with_suffix('.json').name})", file=sys.stderr)


if __name__ == "__main__":
    main()
