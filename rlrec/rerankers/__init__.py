"""Listwise re-rankers: pure nn.Modules, `forward(batch) -> scores (B, N)`; padded slots get
-inf so they rank last and never take probability mass. One file + one yaml each."""

import torch

NEG_INF = float("-inf")


def masked_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~mask, NEG_INF)
