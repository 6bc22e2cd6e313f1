"""Listwise re-rankers: pure nn.Modules, `forward(batch) -> scores (B, N)`; padded slots get
-inf so they rank last and never take probability mass. One file + one yaml each.

With `initial_input=True` a re-ranker also sees the initial ranker's output (`InitialRanking`:
its score and the rank it gives, as one more field of every candidate), as LibRerank's models are
fed the initial ranker's score; `False` (the default) is the papers' input."""

import torch
from torch import nn

NEG_INF = float("-inf")


def masked_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~mask, NEG_INF)


class InitialRanking(nn.Module):
    """The initial ranker's output as one more D-dim field per candidate: Linear([score, rank / n])
    with batch["initial"] (B, N) the initial ranker's score of each candidate, rank the number of
    the list's real candidates it scores higher (0 = its top) and n the list's length. The rank is
    computed from the scores, not from the slot, so a permuted list gets permuted inputs (SetRank
    stays permutation-equivariant); lists without an initial ranker (KAR's: all scores 0) get the
    same field for every candidate. A re-ranker's `personal_dim` (> 0 only with `initial_input`
    and `personal_vector`) adds the initial ranker's personalised vector of each candidate
    (`candidate_inputs`; PRM §4.2; set from the lists by `rlrec.downstream.lists.reranker_factory`)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(2, embed_dim)

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["mask"]  # (B, N)
        score = batch["initial"].masked_fill(~mask, 0.0)  # (B, N)
        ranked = score.masked_fill(~mask, NEG_INF)
        rank = (ranked.unsqueeze(1) > ranked.unsqueeze(2)).sum(-1)  # (B, N): real candidates above
        n = mask.sum(1, keepdim=True).clamp_min(1)
        feats = torch.stack([score, rank.to(score.dtype) / n], dim=-1)  # (B, N, 2)
        return self.proj(feats).unsqueeze(2)  # (B, N, 1, D)


def candidate_inputs(embedding, initial: InitialRanking | None, batch: dict, personal_dim: int = 0) -> torch.Tensor:
    """(B, N, F·D [+ D + P]): every candidate's field embeddings (`FeatureEmbedding.list_fields`), then
    the initial ranking's field when the re-ranker takes it, then the initial ranker's personalised
    vector batch["initial_pv"] (B, N, P) when `personal_dim` P > 0 (PRM's pv_i: [x_i ; pv_i])."""
    x = embedding.list_fields(batch)  # (B, N, F, D)
    if initial is not None:
        x = torch.cat([x, initial(batch)], dim=2)
    x = x.flatten(2)
    if personal_dim:
        x = torch.cat([x, batch["initial_pv"].to(x.dtype)], dim=-1)
    return x


def num_inputs(embedding, initial_input: bool, personal_dim: int = 0) -> int:
    """Width of `candidate_inputs`."""
    return (embedding.num_fields() + int(initial_input)) * embedding.embed_dim + personal_dim
