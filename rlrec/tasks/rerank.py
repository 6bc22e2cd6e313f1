"""RerankTask: listwise or pointwise training of DLCM / PRM / SetRank; NDCG / MAP / CLICK @k."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from rlrec.metrics import list_metrics, mean_list_metrics
from rlrec.runtime.launch import gather
from rlrec.runtime.precision import full_precision


def pointwise_bce(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over real candidates."""
    s = scores.masked_fill(~mask, 0.0)
    loss = F.binary_cross_entropy_with_logits(s, (labels > 0).to(s.dtype), reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def listwise_softmax(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the label distribution (labels normalised over the list) and
    softmax(scores) over real candidates (SetRank / LibRerank's attention loss). Lists without a
    positive carry no signal and are skipped."""
    target = labels.clamp(min=0) * mask
    total = target.sum(1, keepdim=True)
    has_pos = total.squeeze(1) > 0
    logp = scores.log_softmax(-1).masked_fill(~mask, 0.0)  # -inf on pads → 0 after masking
    ce = -(target / total.clamp(min=1e-12) * logp).sum(1)
    return ce[has_pos].mean() if has_pos.any() else scores.sum() * 0.0


LOSSES: dict[str, Callable] = {"bce": pointwise_bce, "listwise": listwise_softmax}


class RerankTask(pl.LightningModule):
    """Metric keys: val/ndcg@5, val/map@5, val/click@5, test/… (means over lists; lists with no
    positive count as 0, as KAR does, unless `empty_lists="skip"`)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: str = "listwise",
        ks: tuple[int, ...] = (1, 3, 5),
        map_definition: str = "kar",
        empty_lists: str = "zero",
        config: dict | None = None,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"rerank loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.model, self.optimizer_factory, self.loss_fn = model, optimizer, LOSSES[loss]
        self.ks, self.map_definition, self.empty_lists = tuple(ks), map_definition, empty_lists
        self.config = config
        self._outputs: dict[str, list] = {"val": [], "test": []}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self.model(batch), batch["labels"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, batch, stage):
        with full_precision(batch["labels"].device):  # a list's close bf16 scores tie (→ given order)
            scores = self.model(batch).float()
        self._outputs[stage].append((scores.detach().cpu(), batch["labels"].cpu(), batch["mask"].cpu()))

    def _eval_end(self, stage):
        parts = gather(tuple(torch.cat(x) for x in zip(*self._outputs[stage])))  # every rank's shard
        scores, labels, mask = (x.float().numpy() if x.is_floating_point() else x.numpy() for x in parts)
        self._outputs[stage].clear()
        per_list = list_metrics(scores, labels, mask, self.ks, self.map_definition)
        has_pos = (np.where(mask, labels, 0) > 0).any(1)
        for k, v in mean_list_metrics(per_list, has_pos, self.empty_lists).items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "ndcg@5")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        if self._outputs["val"]:
            self._eval_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        if self._outputs["test"]:
            self._eval_end("test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rlrec_config"] = self.config
