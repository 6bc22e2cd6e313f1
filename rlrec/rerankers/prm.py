"""PRM — Personalized Re-ranking Model (Pei et al., RecSys 2019)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlrec.data.features import FeatureSpec
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.rerankers import InitialRanking, candidate_inputs, masked_scores, num_inputs


class PRM(nn.Module):
    """Input layer (eq. 2–3): E' = [x_i ; pv_i] + PE_i, with x_i the candidate's item fields, pv_i the
    personalised vector (the user's fields and knowledge — shared by the list) and PE a learned
    position embedding of the initial rank. Encoding layer: Transformer encoder blocks (eq. 4–7)
    with padded slots masked out of attention. Output layer (eq. 8): a linear score per item
    (the softmax over the list is the listwise loss's job).

    With `initial_input`, pv_i is also the initial ranker's personalised vector of the candidate
    (§4.2: the last hidden layer of the pre-trained ranker; batch["initial_pv"] (B, N, personal_dim),
    `personal_dim` set from the lists by `rlrec.downstream.lists.reranker_factory`) next to its
    score and rank."""

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        model_dim: int = 64,
        num_layers: int = 1,
        num_heads: int = 2,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        max_len: int = 64,
        adapter: Callable[..., nn.Module] | None = None,
        initial_input: bool = False,
        personal_vector: bool = False,
        personal_dim: int = 0,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        self.initial = InitialRanking(embed_dim) if initial_input else None
        self.personal_dim = personal_dim if initial_input and personal_vector else 0
        self.proj = nn.Linear(num_inputs(self.embedding, initial_input, self.personal_dim), model_dim)
        self.position = nn.Embedding(max_len, model_dim)
        layer = nn.TransformerEncoderLayer(model_dim, num_heads, ffn_dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out = nn.Linear(model_dim, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["mask"]  # (B, N)
        B, N = mask.shape
        assert self.position.num_embeddings >= N, f"list length {N} > PRM max_len {self.position.num_embeddings}"
        x = self.proj(candidate_inputs(self.embedding, self.initial, batch, self.personal_dim))  # (B, N, M)
        x = x + self.position.weight[:N].unsqueeze(0)
        h = self.encoder(x, src_key_padding_mask=~mask)  # (B, N, M)
        return masked_scores(self.out(h).squeeze(-1), mask)
