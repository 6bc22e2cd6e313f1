"""LightningModules: loss, metrics and optimisers only; models are plain nn.Modules."""


def inner_trainer(max_epochs: int, callbacks=(), progress: bool = False, **kwargs):
    """A Lightning Trainer for fits inside a stage (validators, re-rankers that score rewards,
    SASRec, SFT / preference rounds): no logger, no checkpoint files, no sanity check — the caller
    keeps what it needs in memory (`KeepBest`) or saves an adapter itself. `kwargs` go to Trainer."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu", max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=list(callbacks), **kwargs,
    )  # fmt: skip
