"""Preference losses as small pure functions, one per name in `LOSSES`.

Every loss takes summed (or length-averaged) completion log-probs

    policy_chosen (B,), policy_rejected (B, K), ref_chosen (B,), ref_rejected (B, K), beta,
    rejected_mask (B, K) bool = which negatives are real (None: all)

and returns (loss (B,), metrics). The loss is per example — nothing couples examples across
the batch (TrackRec's S-DPO trainer sums its exp terms over the whole micro-batch; we do not).
Metrics are detached batch means: `reward_acc` (the chosen reward beats every real rejected
one), `margin` (chosen reward minus the best real rejected reward, so reward_acc =
mean(margin > 0) per example), `chosen_reward`, `rejected_reward` (mean over real negatives);
rewards are the implicit DPO rewards β(π − π_ref).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


def _mask(rejected: torch.Tensor, rejected_mask: torch.Tensor | None) -> torch.Tensor:
    mask = torch.ones_like(rejected, dtype=torch.bool) if rejected_mask is None else rejected_mask.bool()
    assert mask.shape == rejected.shape, f"rejected_mask {tuple(mask.shape)} vs rejected {tuple(rejected.shape)}"
    assert bool(mask.any(-1).all()), "every example needs at least one real rejected completion"
    return mask


def _rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)  # (B,), (B, K)


def reward_metrics(chosen_reward: torch.Tensor, rejected_reward: torch.Tensor, mask: torch.Tensor) -> Metrics:
    """Batch means of the implicit-reward diagnostics; padded negatives are ignored.

    >>> m = reward_metrics(torch.tensor([1.0, 0.0]), torch.tensor([[0.5, 2.0], [-1.0, 9.0]]),
    ...                    torch.tensor([[True, True], [True, False]]))
    >>> {k: round(v.item(), 3) for k, v in m.items()}
    {'reward_acc': 0.5, 'margin': 0.0, 'chosen_reward': 0.5, 'rejected_reward': 0.125}
    """
    with torch.no_grad():
        best_rejected = rejected_reward.masked_fill(~mask, float("-inf")).amax(-1)  # (B,)
        margin = chosen_reward - best_rejected
        mean_rejected = (rejected_reward * mask).sum(-1) / mask.sum(-1)
        return {
            "reward_acc": (margin > 0).float().mean(),
            "margin": margin.mean(),
            "chosen_reward": chosen_reward.mean(),
            "rejected_reward": mean_rejected.mean(),
        }


def dpo_loss(
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, rejected_mask=None
) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, eq. 7): −log σ(β[(π_c − ref_c) − (π_r − ref_r)]), one negative.

    >>> z = torch.zeros(2)
    >>> loss, _ = dpo_loss(z, z[:, None], z, z[:, None], beta=0.1)
    >>> torch.allclose(loss, torch.log(torch.tensor(2.0)))
    True
    """
    if policy_rejected.shape[-1] != 1:
        raise ValueError(
            f"dpo takes exactly one rejected completion per example, got K={policy_rejected.shape[-1]}: "
            "build pairs with one negative, or use preference=sdpo (softmax over K negatives)"
        )
    mask = _mask(policy_rejected, rejected_mask)
    chosen_r, rejected_r = _rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    loss = -F.logsigmoid(chosen_r - rejected_r[:, 0])
    return loss, reward_metrics(chosen_r, rejected_r, mask)


def sdpo_loss(
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, rejected_mask=None
) -> tuple[torch.Tensor, Metrics]:
    """S-DPO (Chen et al. 2024, eq. 9; TrackRec eq. 4), per example:

        −log σ(−log Σ_k exp(β[(π_k − ref_k) − (π_c − ref_c)])) = softplus(logsumexp_k(r_k − r_c)),

    with r the implicit rewards; logsumexp instead of S-DPO's raw exp (which overflows), and
    padded negatives dropped from the sum. With K = 1 it is exactly DPO.

    >>> pc, pr = torch.tensor([0.0]), torch.tensor([[1.0, 5.0]])
    >>> a, _ = sdpo_loss(pc, pr, pc, pr * 0, 1.0, torch.tensor([[True, False]]))
    >>> b, _ = dpo_loss(pc, pr[:, :1], pc, pr[:, :1] * 0, 1.0)
    >>> torch.allclose(a, b)
    True
    """
    mask = _mask(policy_rejected, rejected_mask)
    chosen_r, rejected_r = _rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    gaps = (rejected_r - chosen_r[:, None]).masked_fill(~mask, float("-inf"))  # (B, K)
    loss = F.softplus(torch.logsumexp(gaps, dim=-1))  # −logσ(−x) = softplus(x)
    return loss, reward_metrics(chosen_r, rejected_r, mask)


def ipo_loss(
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, rejected_mask=None
) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2024, eq. 17): (h − 1/(2β))² with h = (π_c − ref_c) − (π_k − ref_k), averaged
    over the real negatives. A squared loss with a finite target: unlike DPO it does not keep
    pushing the margin to infinity once the preference is fit — the over-fitting iterative
    DPO shows after round 2. trl feeds it length-averaged log-probs
    (`PreferenceTask(average_logps=True)`); then the target 1/(2β) is per token, so raise β.

    >>> b = 0.5  # target h = 1/(2β) = 1
    >>> loss, _ = ipo_loss(torch.tensor([1.0]), torch.tensor([[0.0]]), torch.tensor([0.0]), torch.tensor([[0.0]]), b)
    >>> loss
    tensor([0.])
    """
    mask = _mask(policy_rejected, rejected_mask)
    h = (policy_chosen - ref_chosen)[:, None] - (policy_rejected - ref_rejected)  # (B, K)
    per_negative = (h - 1 / (2 * beta)) ** 2
    loss = (per_negative * mask).sum(-1) / mask.sum(-1)
    chosen_r, rejected_r = _rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return loss, reward_metrics(chosen_r, rejected_r, mask)


LOSSES = {"dpo": dpo_loss, "sdpo": sdpo_loss, "ipo": ipo_loss}
