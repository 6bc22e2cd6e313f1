"""DLCM — Deep Listwise Context Model (Ai et al., SIGIR 2018)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.rerankers import InitialRanking, candidate_inputs, masked_scores, num_inputs


class DLCM(nn.Module):
    """A GRU reads the list in its given (initial-ranking) order (eq. 3); its final state s_n is the
    list context. The local ranking function (eq. 4) scores candidate i from its GRU output o_i:
        φ(o_i, s_n) = V · (o_i ⊙ tanh(W · s_n + b)).
    Right padding: outputs at real positions never see later pads, and s_n is taken at the last
    real position, so padded slots change nothing. `reverse=True` reads the real candidates
    bottom-up (last-ranked first), so the top of the initial ranking is read last, closest to s_n."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        hidden_dim: int = 64,
        adapter: Callable[..., nn.Module] | None = None,
        initial_input: bool = False,
        personal_vector: bool = False,
        personal_dim: int = 0,
        reverse: bool = False,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        self.initial = InitialRanking(embed_dim) if initial_input else None
        self.personal_dim = personal_dim if initial_input and personal_vector else 0
        in_dim = num_inputs(self.embedding, initial_input, self.personal_dim)
        self.input = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ELU())  # eq. 2's input projection
        self.gru = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        self.context = nn.Linear(hidden_dim, hidden_dim)
        self.score = nn.Linear(hidden_dim, 1, bias=False)
        self.reverse = reverse

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["mask"]  # (B, N)
        B, N = mask.shape
        x = self.input(candidate_inputs(self.embedding, self.initial, batch, self.personal_dim))  # (B, N, H)
        last = (mask.sum(1) - 1).clamp(min=0)  # (B,) index of the last real candidate
        if self.reverse:  # slot j ↔ last − j among the real candidates, pads stay put (an involution)
            j = torch.arange(N, device=mask.device).expand(B, N)
            flip = torch.where(mask, last.unsqueeze(1) - j, j).unsqueeze(-1)
            x = x.gather(1, flip.expand_as(x))
        out, _ = self.gru(x)  # (B, N, H)
        s_n = out[torch.arange(B), last]  # (B, H)
        if self.reverse:
            out = out.gather(1, flip.expand_as(out))  # back to the list's slots
        scores = self.score(out * torch.tanh(self.context(s_n)).unsqueeze(1)).squeeze(-1)  # (B, N)
        return masked_scores(scores, mask)
