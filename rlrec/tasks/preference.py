"""PreferenceTask: DPO / S-DPO / IPO on [chosen; rejected_1..K] batches (`rlrec.llm.data`).

The reference is never a second model: its log-probs are precomputed once per round with
`precompute_reference(loader)` and looked up by example index in `training_step`.
`reference="current"` (default) scores with the model as it stands before the round — the
adapter from earlier rounds active — which is TrackRec's iterative recipe (the reference is
the current generator, refreshed each iteration). `reference="base"` scores with the LoRA
adapter disabled (LLaMA-Factory's and trl's default: the base model throughout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from rlrec.llm.loading import LLMConfig
from rlrec.llm.logps import shared_prompt_logps
from rlrec.llm.losses import LOSSES
from rlrec.runtime import launch
from rlrec.tasks.llm import LLMTask, frozen_weights_cast


class PreferenceTask(LLMTask):
    """Logs train/{loss}_loss, train/reward_acc, train/margin, train/chosen_reward,
    train/rejected_reward, train/chosen_logp, train/rejected_logp (the last two are the
    policy's summed completion log-probs; rejected averaged over real negatives)."""

    def __init__(
        self,
        llm: LLMConfig | nn.Module,
        loss: str = "sdpo",
        beta: float = 0.1,
        lora: Mapping | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        reference: str = "current",
        average_logps: bool = False,
        share_prompt: bool = True,
        checkpoint_prompt: bool = False,
        adapter_path: str | None = None,
        tokenizer=None,
        config: dict | None = None,
    ):
        if loss not in LOSSES:
            raise ValueError(f"unknown preference loss '{loss}'; choose one of {sorted(LOSSES)}")
        if reference not in ("current", "base"):
            raise ValueError(f"reference must be 'current' or 'base', got '{reference}'")
        if reference == "base" and lora is None:
            raise ValueError("reference='base' needs LoRA (adapters off = base); full fine-tuning has no copy")
        super().__init__(llm, lora, optimizer, adapter_path, tokenizer, config)
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.beta = beta
        self.reference = reference
        self.average_logps = average_logps  # per-token mean log-probs (IPO's convention) instead of sums
        # run each prompt once for its 1+K completions (same values, less work)
        self.share_prompt = share_prompt
        # with share_prompt: recompute the prompt's activations in the backward instead of keeping them
        self.checkpoint_prompt = checkpoint_prompt
        # split → (chosen (N,), rejected (N, K)) reference log-probs, indexed by example index
        self.refs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over the concatenated batch → policy log-probs chosen (B,), rejected (B, K)."""
        if self.share_prompt:
            logps = shared_prompt_logps(
                self.model,
                batch["prompt_input_ids"],
                batch["prompt_attention_mask"],
                batch["completion_input_ids"],
                batch["completion_attention_mask"],
                checkpoint_prompt=self.checkpoint_prompt,
            )
        else:
            logps = self.completion_logps(batch)  # ((1+K)·B,)
        if self.average_logps:
            logps = logps / batch["completion_mask"].sum(-1).clamp(min=1)
        B, K = batch["rejected_mask"].shape
        logps = logps.view(1 + K, B)  # rows were laid out [chosen; rejected_1; …; rejected_K]
        return logps[0], logps[1:].T

    @torch.no_grad()
    def precompute_reference(self, dataloader: Iterable[dict], split: str = "train") -> None:
        """Score every example of `dataloader` (a PreferenceDataset loader) with the reference
        and keep the log-probs by example index. Call it once per round and split ("train", and
        "val" for held-out pairs), before `fit`. On launched ranks each rank scores its shard of the
        examples and every rank gathers all of them."""
        from rlrec.runtime.launch import world

        self.configure_model()
        rank, size = world()
        if size > 1:  # rank r scores examples r, r + size, …
            from torch.utils.data import DataLoader, Subset

            ds = dataloader.dataset
            dataloader = DataLoader(
                Subset(ds, range(rank, len(ds), size)),
                batch_size=dataloader.batch_size,
                collate_fn=dataloader.collate_fn,
            )
        was_training = self.model.training
        self.model.eval()  # no dropout in the reference
        off = self.model.disable_adapter() if self.reference == "base" else nullcontext()
        chosen, rejected, index = [], [], []
        with off:
            for batch in dataloader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                c, r = self.logps(batch)
                chosen.append(c.cpu())
                rejected.append(r.cpu())
                index.append(batch["index"].cpu())
        self.model.train(was_training)
        if size > 1:
            import torch.distributed as dist

            mine = (torch.cat(index), torch.cat(chosen), torch.cat(rejected)) if index else None
            parts: list = [None] * size
            dist.all_gather_object(parts, mine)
            parts = [p for p in parts if p is not None]
            index, chosen, rejected = ([p[i] for p in parts] for i in range(3))
        index = torch.cat(index)
        n = int(index.max()) + 1
        ref_chosen = torch.full((n,), float("nan"))
        ref_rejected = torch.full((n, rejected[0].shape[1]), float("nan"))
        ref_chosen[index] = torch.cat(chosen)
        ref_rejected[index] = torch.cat(rejected)
        self.refs[split] = (ref_chosen, ref_rejected)

    def _reference(self, index: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.refs:
            raise RuntimeError(
                f"no reference log-probs for {split!r}: call task.precompute_reference(loader, {split!r}) before fit"
            )
        ref_chosen, ref_rejected = self.refs[split]
        index = index.cpu()
        if int(index.max()) >= len(ref_chosen) or ref_chosen[index].isnan().any():
            raise RuntimeError("reference log-probs missing for some examples: precompute on this very dataset")
        return ref_chosen[index].to(self.device), ref_rejected[index].to(self.device)

    def step(self, batch: dict, split: str = "train") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss per example (B,), metrics) — training_step / validation_step log what this returns."""
        chosen, rejected = self.logps(batch)
        ref_chosen, ref_rejected = self._reference(batch["index"], split)
        mask = batch["rejected_mask"]
        loss, metrics = self.loss_fn(chosen, rejected, ref_chosen, ref_rejected, self.beta, rejected_mask=mask)
        metrics["chosen_logp"] = chosen.detach().mean()
        metrics["rejected_logp"] = ((rejected.detach() * mask).sum(-1) / mask.sum(-1)).mean()
        return loss, metrics

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, metrics = self.step(batch)
        loss = loss.mean()
        B = len(batch["index"])
        sync = self.trainer.world_size > 1  # the ranks' mean on launched ranks; no reduction in one process
        self.log(f"train/{self.loss_name}_loss", loss, prog_bar=True, batch_size=B, sync_dist=sync)
        for k, v in metrics.items():
            self.log(f"train/{k}", v, batch_size=B, sync_dist=sync)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Held-out pairs (users not trained on): the same loss and metrics as `val/*`, per epoch."""
        loss, metrics = self.step(batch, "val")
        B = len(batch["index"])
        self.log(f"val/{self.loss_name}_loss", loss.mean(), batch_size=B)
        for k in ("reward_acc", "margin"):
            self.log(f"val/{k}", metrics[k], batch_size=B)


def fit_preference(
    task: PreferenceTask,
    groups: list[dict],
    preference,
    make_trainer,
    seed: int,
    heldout: list[dict] | None = None,
    out: str | Path | None = None,
) -> tuple[dict, list[dict]]:
    """One preference-optimisation round of `task` on `groups` ({prompt, chosen, rejected: [..]}):
    the reference log-probs first (the model before the round), then `preference.max_epochs` over
    the groups in a seeded order. `heldout` groups (from users not trained on; at most
    `preference.val_pairs`) are evaluated `preference.val_checks` times per epoch. `make_trainer(max_epochs=, callbacks=, progress=, **kw)`
    builds the Trainer from the run's config; a multi-process one runs this very function on every
    launched rank (`train_preference`). With `out`, the trained adapter is saved there. Returns (the mean of each logged training metric plus
    the last held-out ones, the per-step curve: one dict of metrics per optimiser step)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from rlrec.llm.data import PreferenceDataset
    from rlrec.runtime.launch import is_global_zero, rank_device, world
    from rlrec.tasks.callbacks import MetricLog

    P = preference

    def dataset(g):
        return PreferenceDataset(
            g,
            task.tokenizer,
            int(P.max_prompt_len),
            int(P.max_completion_len),
            bool(P.chat_template),
            num_negatives=None if P.get("num_negatives") is None else int(P.num_negatives),
        )

    ds = dataset(groups)
    rank, size = world()
    if size > 1:  # a launched rank: its weights go to its own device before the reference pass
        task.to(rank_device(getattr(launch.factory_of(make_trainer), "accelerator", "cpu")))
    # one seeded order for any number of ranks: rank r takes every size-th group of it, so 2 ranks ×
    # batch b step through the same groups as 1 process × batch 2b (DDP averages the gradients)
    order = DistributedSampler(ds, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(ds, batch_size=int(P.batch_size), sampler=order, collate_fn=ds.collate)
    val, extra = None, {}
    if heldout:
        cap = P.get("val_pairs")
        vds = dataset(heldout if cap is None else heldout[: int(cap)])
        # as many groups per forward as training: a no-grad pass over g groups of 1+K completions holds
        # their prompts' KV repeated 1+K times for every layer (4 TrackRec groups: ~0.8 GB in fp32)
        val = DataLoader(vds, batch_size=int(P.batch_size), collate_fn=vds.collate)
        checks = max(1, int(P.get("val_checks", 1) or 1))
        steps = len(loader)
        if checks > 1 and steps >= checks:
            extra["val_check_interval"] = max(1, steps // checks)
    metrics = MetricLog()
    trainer = make_trainer(
        max_epochs=int(P.max_epochs),
        callbacks=[metrics],
        progress=True,
        accumulate_grad_batches=int(P.accumulate_grad_batches),
        gradient_clip_val=P.get("gradient_clip_val"),
        limit_val_batches=1.0,
        use_distributed_sampler=False,
        **extra,
    )
    # the reference is scored at the Trainer's precision (bf16 autocast under bf16-mixed), so the
    # policy's log-probs at step 0 equal it and the loss starts at its zero-margin value
    with frozen_weights_cast(task, trainer):
        with trainer.precision_plugin.forward_context():
            task.precompute_reference(DataLoader(ds, batch_size=int(P.batch_size), collate_fn=ds.collate))
            if val is not None:
                task.precompute_reference(val, "val")
        task.train()
        trainer.fit(task, loader, val)
        task.eval()
    if out is not None and is_global_zero():  # only rank 0 publishes the adapter
        task.save_adapter(out)
    return metrics.means(), metrics.curve


def train_preference(task: PreferenceTask, groups, preference, make_trainer, seed: int, heldout=None, out=None):
    """`fit_preference` in this process, or on the ranks of a multi-process Trainer (the task is sent
    without its frozen weights; rank 0 saves the adapter to `out`)."""
    return launch.run(fit_preference, task, groups, preference, make_trainer, seed, heldout, out, factory=make_trainer)
