"""Layers the CTR backbones and re-rankers share: embeddings, MLPs, attention, feature interactions,
and the compiled kernels behind them (`compiled`)."""
