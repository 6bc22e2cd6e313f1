"""DIEN — Deep Interest Evolution Network (Zhou et al., AAAI 2019)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.functional import softplus

from rlrec.data.features import FeatureSpec
from rlrec.layers.embedding import FeatureEmbedding
from rlrec.layers.mlp import MLP


class AUGRU(nn.Module):
    """GRU with attentional update gate (§4.3, eqs. 11–12), run over a whole sequence:
        u_t = σ(W^u i_t + U^u h_{t−1} + b^u),   r_t = σ(W^r i_t + U^r h_{t−1} + b^r),
        h̃_t = tanh(W^h i_t + r_t ∘ U^h h_{t−1} + b^h)                   (GRU, eqs. 2–4)
        ũ_t = a_t · u_t                                                     (eq. 11)
        h_t = (1 − ũ_t) ∘ h_{t−1} + ũ_t ∘ h̃_t                              (eq. 12)
    A step with a_t = 0 leaves the state unchanged exactly, so padded steps (attention 0) are no-ops
    and the last state is the state at the last valid step."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.x2h = nn.Linear(input_dim, 3 * hidden_dim)  # [W^u; W^r; W^h], biases b^u, b^r, b^h
        self.h2h = nn.Linear(hidden_dim, 3 * hidden_dim, bias=False)  # [U^u; U^r; U^h]

    def forward(self, inputs: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """inputs (B, L, In), att (B, L) attention scores (0 on padding) → (B, H) final state."""
        B = inputs.shape[0]
        gx = self.x2h(inputs)  # (B, L, 3H): every step's input projection in one matmul
        h = inputs.new_zeros(B, self.hidden_dim)  # (B, H) initial state
        # unbind once: per-step slicing inside the loop would cost O(L²) in the backward pass
        for x_t, a_t in zip(gx.unbind(1), att.unsqueeze(-1).unbind(1)):  # (B, 3H), (B, 1)
            xu, xr, xh = x_t.chunk(3, dim=-1)  # each (B, H)
            hu, hr, hh = self.h2h(h).chunk(3, dim=-1)  # each (B, H)
            u = torch.sigmoid(xu + hu)
            r = torch.sigmoid(xr + hr)
            cand = torch.tanh(xh + r * hh)
            u = a_t * u  # (B, H) attentional update gate, eq. 11
            h = h + u * (cand - h)  # = (1 − ũ_t) ∘ h_{t−1} + ũ_t ∘ h̃_t, eq. 12
        return h


class DIEN(nn.Module):
    """Interest extractor GRU over the behaviour sequence (§4.2, eqs. 2–5) → interest states h_t;
    interest evolving layer (§4.3): attention a_t = softmax_t(h_t W e_a) over the valid steps w.r.t.
    the target item e_a (eq. 8), AUGRU (eqs. 11–12) whose final state is the evolved interest h'_T;
    [all field embeddings, h'_T] → MLP (200, 80) → logit. Knowledge fields (if any) are among the
    field embeddings.

    Auxiliary loss (eq. 6, weighted by α = `aux_weight` as in eq. 7), only in `forward_with_aux`:
    h_t must tell the next clicked behaviour e_b[t+1] from a negative ê_b[t+1], scored by σ(aux_net
    ([h_t, e])) with aux_net an MLP as in the authors' code. Negatives are uniform random catalogue
    items (embedded through the item table, as the authors sample non-clicked items), drawn fresh per
    step; a negative may coincide with the positive with probability 1/num_items. Only steps t whose
    t+1 is a real behaviour count; the loss is averaged over those steps.

    Histories are right-padded: lengths = mask.sum(1); the sequence is cut to the longest valid
    length in the batch, padded extractor states are zeroed and masked out, and AUGRU steps with
    a_t = 0 are no-ops, so extra padding never changes the output. An empty history gives the zero
    initial state.
    """

    def __init__(
        self,
        features: FeatureSpec,
        embed_dim: int = 16,
        hidden_dim: int | None = None,
        mlp_dims: tuple[int, ...] = (200, 80),
        activation: str = "dice",
        dropout: float = 0.0,
        batch_norm: bool = False,
        aux_weight: float = 1.0,
        aux_dims: tuple[int, ...] = (100, 50),
        aux_activation: str = "sigmoid",
        adapter: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embed_dim, adapter)
        self.item_dim = embed_dim * self.embedding.num_item_fields
        self.hidden_dim = hidden_dim or self.item_dim
        self.num_items = features.num_items
        self.aux_weight = aux_weight
        # interest extractor, eqs. 2–5
        self.extractor = nn.GRU(self.item_dim, self.hidden_dim, batch_first=True)
        self.attention = nn.Linear(self.item_dim, self.hidden_dim, bias=False)  # W in h_t W e_a, eq. 8
        self.evolving = AUGRU(self.hidden_dim, self.hidden_dim)  # interest evolving, eqs. 11–12
        self.aux_net = MLP(self.hidden_dim + self.item_dim, aux_dims, 1, activation_fn=aux_activation)
        in_dim = self.embedding.num_fields() * embed_dim + self.hidden_dim
        self.mlp = MLP(in_dim, mlp_dims, 1, dropout, activation, batch_norm)

    def forward(self, batch: dict) -> torch.Tensor:
        return self._forward(batch, with_aux=False)[0]

    def forward_with_aux(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (B,), α · L_aux) — the CTR task adds the second term to its loss (eq. 7); with
        α = 0 the auxiliary network is not run at all (None: nothing to add)."""
        if not self.aux_weight:
            return self._forward(batch, with_aux=False)[0], None
        logits, aux = self._forward(batch, with_aux=True)
        return logits, self.aux_weight * aux

    def _forward(self, batch: dict, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        fields = self.embedding(batch)  # (B, F, D)
        hist, mask = self.embedding.history(batch)  # (B, L, Fi, D), (B, L)
        B = mask.shape[0]
        lengths = mask.sum(1)  # (B,) right padding: the valid steps are 0 .. length − 1
        L = max(int(lengths.max()), 1)
        behaviours = hist[:, :L].reshape(B, L, -1)  # (B, L, Fi·D) e_b[t], cut to the longest history
        mask = mask[:, :L]  # (B, L)
        e = self.embedding
        item_fields = slice(e.num_user_fields, e.num_user_fields + e.num_item_fields)
        target = fields[:, item_fields].reshape(B, -1)  # (B, Fi·D) e_a

        # interest extractor (eqs. 2–5). Right padding + a causal GRU: the states at valid steps equal
        # those of a packed sequence exactly, and the padded run is ~2x faster than packing on CPU.
        interests = self.extractor(behaviours)[0] * mask.unsqueeze(-1)  # (B, L, H) h_t, 0 on padding

        # attention a_t = softmax over valid steps of h_t W e_a (eq. 8); 0 on padding, all-0 if empty
        # h_t · W e_a as a broadcast product and sum: einsum's batched matvec is ~3x slower on CPU
        scores = (interests * self.attention(target).unsqueeze(1)).sum(-1)  # (B, L)
        att = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1) * mask  # (B, L)
        evolved = self.evolving(interests, att)  # (B, H) h'_T, the state after the last valid step

        logits = self.mlp(torch.cat([fields.reshape(B, -1), evolved], dim=1)).squeeze(-1)  # (B,)
        aux = self.auxiliary_loss(interests, behaviours, mask) if with_aux else None
        return logits, aux

    def auxiliary_loss(self, interests: torch.Tensor, behaviours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_aux (eq. 6): −mean over valid t of [log σ(h_t, e_b[t+1]) + log(1 − σ(h_t, ê_b[t+1]))].
        interests (B, L, H), behaviours (B, L, Fi·D), mask (B, L) → scalar (unweighted)."""
        valid = mask[:, 1:]  # (B, L−1): behaviour t+1 exists
        n = int(valid.sum())
        if n == 0:
            return interests.new_zeros(())
        h = interests[:, :-1][valid]  # (N, H)
        pos = behaviours[:, 1:][valid]  # (N, Fi·D) e_b[t+1]
        # negatives: uniform random catalogue items, embedded through the item table
        neg_items = torch.randint(1, self.num_items + 1, (n,), device=h.device)  # (N,)
        neg = self.embedding.rows(self.embedding.item_table[neg_items])  # (N, Fi, D)
        neg = neg.reshape(n, -1)  # (N, Fi·D) ê_b[t+1]
        pair = torch.cat([h.repeat(2, 1), torch.cat([pos, neg])], dim=1)  # (2N, H + Fi·D)
        logit_pos, logit_neg = self.aux_net(pair).squeeze(-1).split(n)  # (N,), (N,)
        return softplus(-logit_pos).mean() + softplus(logit_neg).mean()  # −log σ(s+) − log(1 − σ(s−))
