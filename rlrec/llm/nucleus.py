"""Drawing tokens: counter-based uniforms (a sample's t-th draw is a hash of its seed and t, so its
text depends on its own seed only, not on the batch) and sort-free top-p sampling by inverse CDF
(redrawn while outside the nucleus: exact; a (B, V) sort per step costs more than the attention)."""

from __future__ import annotations

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def counter_uniforms(seeds: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) from (seed, step) pairs with splitmix64: stateless, so a sample's t-th
    draw is the same whatever else is in the batch.

    >>> u = counter_uniforms(np.array([1, 1, 2], dtype=np.uint64), np.array([0, 1, 0]))
    >>> bool(((0 <= u) & (u < 1)).all()) and len(set(u.tolist())) == 3
    True
    """
    with np.errstate(over="ignore"):
        z = seeds.astype(np.uint64) + (steps.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def top_p_keep(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask of the nucleus over probabilities sorted in descending order: keep a token while the
    mass strictly before it is < top_p (HF's TopPLogitsWarper; the top token is always kept).
    Reference implementation for tests; sampling uses the sort-free `in_nucleus`.

    >>> top_p_keep(torch.tensor([[0.5, 0.3, 0.15, 0.05]]), 0.8).tolist()
    [[True, True, False, False]]
    """
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep = before < top_p
    keep[..., 0] = True
    return keep


def in_nucleus(probs: torch.Tensor, tokens: torch.Tensor, top_p: float) -> torch.Tensor:
    """Whether each row's token is in its top-p nucleus, without sorting: a token is in iff the
    mass of strictly more likely tokens is < top_p. probs (B, V), tokens (B,) → (B,) bool.

    >>> p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    >>> [bool(in_nucleus(p, torch.tensor([t]), 0.8)) for t in range(4)]
    [True, True, False, False]
    """
    p_tok = probs.gather(-1, tokens[:, None])  # (B, 1)
    ok = (1.0 - p_tok[:, 0]) < top_p  # all other mass < top_p: in, no pass over V needed
    rows = (~ok).nonzero().squeeze(-1)
    if len(rows):
        p = probs[rows]
        ok[rows] = torch.where(p > p_tok[rows], p, 0.0).sum(-1) < top_p
    return ok


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The token whose CDF interval holds u: probs (B, V) (need not sum to 1), u (B,) float64 in
    [0, 1) → (B,). Two levels (block sums, then one block) instead of a (B, V) float64 cumsum."""
    B, V = probs.shape
    nb = -(-V // block)
    p = probs if nb * block == V else torch.nn.functional.pad(probs, (0, nb * block - V))
    p = p.view(B, nb, block)  # (B, nb, blk)
    csum = p.sum(-1).double().cumsum(-1)  # (B, nb); float32 sums of 256 terms are exact enough
    target = u * csum[:, -1]  # (B,)
    j = torch.searchsorted(csum, target[:, None], right=True).squeeze(-1)  # first block past target
    last_block = (csum < csum[:, -1:]).sum(-1)  # the last block with mass (guards float rounding)
    j = torch.minimum(j, last_block)
    before = torch.where(j > 0, csum.gather(-1, (j - 1).clamp(min=0)[:, None]).squeeze(-1), 0.0)
    inner = p[torch.arange(B), j]  # (B, blk)
    icdf = inner.double().cumsum(-1)
    k = torch.searchsorted(icdf, (target - before)[:, None], right=True).squeeze(-1)
    k = torch.minimum(k, (icdf < icdf[:, -1:]).sum(-1))  # never past the block's last nonzero token
    return j * block + k


def sample_from_logits(
    logits: torch.Tensor, temperature: float, top_p: float, seeds: np.ndarray, steps: np.ndarray, max_tries: int = 64
) -> torch.Tensor:
    """Draw one token per row of logits (B, V) from softmax(logits / temperature) restricted to
    the top-p nucleus; temperature 0 means argmax. Draws come from `counter_uniforms(seeds,
    steps)`. The nucleus is enforced by rejection (redraw while the token falls outside it): exact
    for p restricted to the nucleus, needs no (B, V) sort, and rejects with probability < 1 - top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    seeds = np.asarray(seeds, dtype=np.uint64)
    steps = np.asarray(steps, dtype=np.uint64)
    tokens = inverse_cdf(probs, torch.from_numpy(counter_uniforms(seeds, steps)))
    if top_p >= 1.0:
        return tokens
    rows = torch.arange(probs.shape[0])
    for attempt in range(1, max_tries + 1):
        bad = ~in_nucleus(probs[rows], tokens[rows], top_p)
        if not bad.any():
            return tokens
        rows = rows[bad]
        r = rows.numpy()
        u = counter_uniforms(seeds[r], steps[r] + np.uint64(attempt << 32))  # a fresh draw per attempt
        tokens[rows] = inverse_cdf(probs[rows], torch.from_numpy(u))
    # practically unreachable (needs 64 straight rejections): sort the stragglers
    vals, ids = probs[rows].sort(-1, descending=True)
    kept = vals * top_p_keep(vals, top_p)
    tokens[rows] = ids.gather(
        -1, inverse_cdf(kept, torch.from_numpy(counter_uniforms(seeds[r], steps[r])))[:, None]
    ).squeeze(-1)
    return tokens


# ----------------------------------------------------------------------------- fast path
