"""LightningModules: loss, metrics and optimisers only; models are plain nn.Modules. Their
Trainers come from the run's config (`rlrec.context.Context.trainer`)."""
