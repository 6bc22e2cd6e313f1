"""SFTTask: completion-only cross-entropy on {prompt, completion} batches (`rlrec.llm.data.SFTDataset`).

Used for distillation (TrackRec's generator on teacher CoTs) and for tuning an LLM validator on
Yes/No answers. The loss is the mean negative log-likelihood per completion token of the
batch; prompt tokens never enter it (the LM head does not even run on them).
"""

from __future__ import annotations

import torch

from rlrec.runtime import launch
from rlrec.tasks.llm import LLMTask, frozen_weights_cast


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


def fit_sft(task: SFTTask, loader, make_trainer, max_epochs: int, prefix: str = "sft/", out=None, accumulate: int = 1):
    """Fit `task` on `loader` for `max_epochs` with the Trainer `make_trainer` builds — in this process,
    or on every rank of a multi-process Trainer (`rlrec.runtime.launch`; only rank 0 saves the adapter to
    `out`); an update averages `accumulate` batches. Returns (the trained task, the per-step
    metrics' means under `prefix` (`MetricLog`), the Trainer's last logged metrics)."""
    return launch.run(_fit_sft, task, loader, make_trainer, max_epochs, prefix, out, accumulate, factory=make_trainer)


def _fit_sft(task: SFTTask, loader, make_trainer, max_epochs: int, prefix: str, out, accumulate: int = 1):
    from rlrec.tasks.callbacks import MetricLog

    log = MetricLog(prefix=prefix)
    task.train()
    extra = {"accumulate_grad_batches": int(accumulate)} if int(accumulate) > 1 else {}
    trainer = make_trainer(max_epochs=max_epochs, callbacks=[log], progress=True, **extra)
    with frozen_weights_cast(task, trainer):
        trainer.fit(task, loader)
    task.eval()
    if out is not None and launch.is_global_zero():
        task.save_adapter(out)
    return task, log.means(), {k: float(v) for k, v in trainer.callback_metrics.items()}
