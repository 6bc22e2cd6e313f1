"""Reward ensembles and their split-half reliability: known cases."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlrec.feedback import ensemble
from rlrec.feedback.base import Feedback
from rlrec.feedback.ensemble import Ensemble, build_feedback, split_half


def test_doctests():
    assert doctest.testmod(ensemble).failed == 0


class Member(Feedback):
    """Reward = the text's true quality plus this member's own noise (seeded)."""

    def __init__(self, ctx=None, downstream=None, seed=0, noise=0.0):
        self.seed, self.noise, self.key, self.continues = seed, noise, f"m{seed}", False
        self.refits: list = []

    def refit(self, probe):
        self.refits.append(probe)
        return {"member/val": float(self.seed)}

    def score(self, users, texts, vectors):
        quality = np.array([[float(t) for t in row] for row in texts])
        return quality + self.noise * np.random.default_rng(self.seed).normal(size=quality.shape)


def test_ensemble_averages_members_and_splits_even_from_odd():
    members = [Member(seed=s, noise=1.0) for s in range(4)]
    e = Ensemble(members)
    texts = [["0", "1", "2"], ["2", "0", "1"]]
    r = e.score([1, 2], texts, None)
    each = np.stack([m.score([1, 2], texts, None) for m in members])
    np.testing.assert_allclose(r, each.mean(0))
    a, b = e.halves()
    np.testing.assert_allclose(a, each[[0, 2]].mean(0))
    np.testing.assert_allclose(b, each[[1, 3]].mean(0))
    assert e.refit("probe") == {"member/val": 1.5} and all(m.refits == ["probe"] for m in members)
    assert e.key != Ensemble(members[:2]).key
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(members[:1])


def test_more_members_give_a_more_reliable_reward():
    """Noise 3× the spread between a user's texts: one member per half is unreliable; 16 per half is not."""
    rng = np.random.default_rng(0)
    texts = [[str(x) for x in rng.permutation(4)] for _ in range(200)]
    rel = {}
    for k in (2, 32):
        e = Ensemble([Member(seed=s, noise=3.0) for s in range(k)])
        e.score(np.arange(200), texts, None)
        rel[k] = split_half(*e.halves())
    assert rel[2]["reliability/spearman"] < 0.4 < 0.7 < rel[32]["reliability/spearman"]
    assert rel[2]["reliability/same_best"] < rel[32]["reliability/same_best"]
    r = rel[32]["reliability/spearman"]
    assert rel[32]["reliability/full"] == pytest.approx(2 * r / (1 + r))


def test_split_half_of_unrelated_halves_is_near_zero_and_same_best_near_chance():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    out = split_half(a, b)
    assert abs(out["reliability/spearman"]) < 0.05 and abs(out["reliability/same_best"] - 0.25) < 0.03


def test_split_half_skips_tied_and_missing_users():
    a = np.array([[1.0, 1.0], [0.0, 1.0], [np.nan, 1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert split_half(a, b)["reliability/users"] == 1.0


def node(**kw):
    return OmegaConf.create({"_target_": f"{__name__}.Member", "_partial_": True, "noise": 0.5, **kw})


def test_build_feedback_gives_one_member_or_an_ensemble_of_seeds():
    one = build_feedback(node(seed=5, ensemble=1), None, None)
    assert isinstance(one, Member) and one.seed == 5
    many = build_feedback(node(seed=5, ensemble=3), None, None)
    assert isinstance(many, Ensemble) and [m.seed for m in many.members] == [5, 6, 7]
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        build_feedback(node(seed=5, ensemble=0), None, None)
    judge_like = OmegaConf.create({"_target_": f"{__name__}.Member", "_partial_": True, "ensemble": 2})
    with pytest.raises(ValueError, match="has no `seed`"):
        build_feedback(judge_like, None, None)


def test_a_user_no_member_can_score_stays_nan_without_a_warning():
    """A user with no samples is NaN in every member: NaN in the reward and both halves, silently;
    a text one member could not score takes the others' mean."""

    class Gaps(Member):
        def score(self, users, texts, vectors):
            r = super().score(users, texts, vectors)
            r[1] = np.nan  # user 2 has nothing to score on
            if self.seed == 0:
                r[0, 0] = np.nan
            return r

    e = Ensemble([Gaps(seed=s) for s in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = e.score([1, 2], [["0", "1"], ["1", "0"]], None)
        a, b = e.halves()
    np.testing.assert_array_equal(r[0], [0.0, 1.0])
    assert np.isnan(r[1]).all() and np.isnan(a[1]).all() and np.isnan(b[1]).all()
    np.testing.assert_array_equal(a[0], [0.0, 1.0])
