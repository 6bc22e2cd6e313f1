"""SFTTask: completion-only cross-entropy on {prompt, completion} batches (`rlrec.llm.data.SFTDataset`).

Used for distillation (TrackRec's generator on teacher CoTs) and for tuning an LLM validator on
Yes/No answers. The loss is the mean negative log-likelihood per completion token of the
batch; prompt tokens never enter it (the LM head does not even run on them).
"""

from __future__ import annotations

import torch

from rlrec.tasks.llm import LLMTask


class SFTTask(LLMTask):
    """Logs train/sft_loss and val/sft_loss (mean NLL per completion token)."""

    def loss(self, batch: dict) -> torch.Tensor:
        logps = self.completion_logps(batch)  # (B,) summed over completion tokens
        n_tokens = batch["completion_mask"][:, 1:].sum()  # the first token has no prediction
        return -logps.sum() / n_tokens.clamp(min=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/sft_loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/sft_loss", self.loss(batch), prog_bar=True, batch_size=len(batch["input_ids"]))
