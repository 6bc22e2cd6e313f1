"""LightningModules: loss, metrics and optimisers only; models are plain nn.Modules."""
