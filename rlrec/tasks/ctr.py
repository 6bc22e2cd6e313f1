"""CTRTask: BCE-with-logits training of any backbone, AUC / log-loss / accuracy / user-AUC."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from rlrec.metrics import user_auc
from rlrec.runtime.launch import gather
from rlrec.runtime.precision import full_precision


class CTRTask(pl.LightningModule):
    """Metric keys `{stage}/{metric}`: val/auc, val/logloss, val/acc, val/uauc, test/…, train/loss.
    A backbone with `forward_with_aux` (DIEN) adds its auxiliary loss during training."""

    def __init__(self, model: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], config: dict | None = None):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.config = config  # the resolved run config, stored in every checkpoint
        self.auc = nn.ModuleDict({s: BinaryAUROC() for s in ("val", "test")})
        self.acc = nn.ModuleDict({s: BinaryAccuracy() for s in ("val", "test")})
        self._outputs: dict[str, list] = {"val": [], "test": []}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if hasattr(self.model, "forward_with_aux"):
            logits, aux = self.model.forward_with_aux(batch)
        else:
            logits, aux = self.model(batch), None
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
        self.log("train/bce", loss, prog_bar=False, batch_size=len(logits))
        if aux is not None:
            self.log("train/aux_loss", aux, batch_size=len(logits))
            loss = loss + aux
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        with full_precision(batch["label"].device):  # bf16 logits near 0 round onto a coarse grid: ties
            logits = self.model(batch).float()
        prob = torch.sigmoid(logits)
        y = batch["label"]
        self.auc[stage].update(prob, y.long())
        self.acc[stage].update(prob, y.long())
        self._outputs[stage].append((batch["user"].cpu(), logits.detach().cpu(), y.cpu()))

    def _eval_end(self, stage: str) -> None:
        users, logits, y = gather(tuple(torch.cat(x) for x in zip(*self._outputs[stage])))  # every rank's shard
        logits, y = logits.float(), y.float()  # bf16-mixed precision gives bf16 logits
        self._outputs[stage].clear()
        self.log(f"{stage}/auc", self.auc[stage].compute(), prog_bar=True)
        self.log(f"{stage}/acc", self.acc[stage].compute())
        self.log(f"{stage}/logloss", F.binary_cross_entropy_with_logits(logits, y))
        self.log(f"{stage}/uauc", user_auc(users.numpy(), logits.numpy(), y.numpy()))
        self.auc[stage].reset()
        self.acc[stage].reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self._outputs["val"]:
            self._eval_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        if self._outputs["test"]:
            self._eval_end("test")

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rlrec_config"] = self.config
