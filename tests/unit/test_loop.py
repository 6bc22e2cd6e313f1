"""The loop alone, in milliseconds: a fake policy (texts are strings that name the policy's
version), a scripted feedback (rewards read off the text) and a stub downstream (a probe records
which policy it saw). No LLM, no data, no encoder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rlrec import loop
from rlrec.feedback.base import Feedback
from rlrec.outputs.results import Probe
from rlrec.runtime.cache import fingerprint
from rlrec.runtime.store import Store

N = 3


class FakePolicy:
    """Sample j of a prompt is "<prompt>|v<version>|<j>"; training returns version + 1."""

    adapter = None  # no weight files

    def __init__(self, version: int = 0, log: list | None = None):
        self.version, self.log = version, log if log is not None else []
        self.key = f"v{version}"
        self.training = {"align/loss": 1.0 / (version + 1)} if version else {}
        self.curve = [{"step": 0, "train/loss": 1.0}] if version else []

    def sample(self, prompts, seed=None):
        self.log.append(("sample", self.version, len(prompts)))
        return [[f"{p}|v{self.version}|{j}" for j in range(N)] for p in prompts]

    def train_on(self, groups, heldout=None):
        self.log.append(("train", self.version, [(g["chosen"], list(g["rejected"])) for g in groups]))
        self.heldout = heldout
        return FakePolicy(self.version + 1, self.log)


class ScriptedFeedback(Feedback):
    """Reward of a text = its sample index j (so the last sample is always best), except users in
    `flat`, whose texts all score 0.5 (no informative pair)."""

    key = "scripted"

    def __init__(self, flat=(), continues=False):
        self.flat, self.refits, self.scored, self.continues = set(flat), [], 0, continues

    def refit(self, probe):
        self.refits.append(probe.name)
        return {"scripted/refits": len(self.refits)}

    def score(self, users, texts, vectors):
        self.scored += 1
        r = np.array([[float(t.rsplit("|", 1)[1]) for t in row] for row in texts])
        r[[i for i, u in enumerate(users) if int(u) in self.flat]] = 0.5
        return r


class StubDownstream:
    def __init__(self, users=(1, 2, 3, 4, 5)):
        self.train_users = np.array(users)
        self.questions = {u: f"q{u}" for u in users}
        self.probed: list[str] = []

    def probe(self, policy, name):
        self.probed.append(f"{name}:{policy.key}")
        return Probe(name, fingerprint(name, policy.key), {1: policy.key}, metrics={"probe/version": policy.version})


def encode(texts):
    """Distinct unit vectors per distinct text (no near-duplicates)."""
    return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts])


def run(tmp_path, rounds, feedback=None, downstream=None, users=3, pairs="best_vs_all", heldout=0, policy=None):
    log: list = []
    feedback = feedback or ScriptedFeedback()
    downstream = downstream or StubDownstream()
    cfg = loop.AlignConfig(
        rounds, users, heldout, dedup_threshold=0.98, min_gap=0.0, min_z=0.0, pairs=pairs, seed=7, length_control="none"
    )
    out = loop.align(policy or FakePolicy(0, log), feedback, downstream, Store(tmp_path), encode, cfg)
    return out, log, feedback, downstream


def test_rounds_run_in_order_and_the_policy_is_replaced_after_each(tmp_path):
    rounds, log, fb, ds = run(tmp_path, rounds=3)
    assert [r.t for r in rounds] == [0, 1, 2, 3] and [r.name for r in rounds] == [
        "round0",
        "round1",
        "round2",
        "round3",
    ]
    assert [r.policy_key for r in rounds] == ["v0", "v1", "v2", "v3"]
    # each round samples from the policy the previous round produced, then trains it
    assert [(e[0], e[1]) for e in log] == [("sample", 0), ("train", 0), ("sample", 1), ("train", 1),
                                          ("sample", 2), ("train", 2)]  # fmt: skip
    assert [r.curve for r in rounds] == [[]] + [[{"step": 0, "train/loss": 1.0}]] * 3
    assert ds.probed == ["round0:v0", "round1:v1", "round2:v2", "round3:v3"]
    # the feedback is refit on the last probe before each round's scoring (Rec-tuning)
    assert fb.refits == ["round0", "round1", "round2"]
    assert rounds[1].metrics["align/loss"] == 0.5 and rounds[3].metrics["probe/version"] == 3


def test_rewards_reach_the_pairs(tmp_path):
    rounds, log, _, _ = run(tmp_path, rounds=1, users=2)
    trained = log[1][2]
    assert len(trained) == 2
    for chosen, rejected in trained:  # best = the highest sample index, against all others
        assert chosen.endswith("|2") and sorted(r[-1] for r in rejected) == ["0", "1"]
    m = rounds[1].metrics
    assert m["reward/mean"] == pytest.approx(1.0) and m["reward/best_mean"] == 2.0 and m["reward/spread"] == 2.0
    assert m["pairs/groups"] == 2


def test_best_vs_worst_keeps_one_rejected(tmp_path):
    _, log, _, _ = run(tmp_path, rounds=1, users=2, pairs="best_vs_worst")
    assert all(r == [c.rsplit("|", 1)[0] + "|0"] for c, r in log[1][2])


def test_zero_rounds_give_the_round0_probe_only(tmp_path):
    rounds, log, fb, ds = run(tmp_path, rounds=0)
    assert [r.t for r in rounds] == [0] and log == [] and fb.refits == [] and ds.probed == ["round0:v0"]


def test_no_informative_group_stops_with_the_policy_unchanged(tmp_path):
    rounds, log, _, _ = run(tmp_path, rounds=2, feedback=ScriptedFeedback(flat=range(10)))
    assert [r.t for r in rounds] == [0, 1] and rounds[1].metrics["stopped"] == 1.0
    assert rounds[1].policy_key == "v0" and rounds[1].probe is rounds[0].probe
    assert [e[0] for e in log] == ["sample"]


def test_rewards_are_a_stage_keyed_by_the_texts(tmp_path):
    _, _, fb, _ = run(tmp_path, rounds=2)
    assert fb.scored == 2
    _, _, again, _ = run(tmp_path, rounds=2)  # same texts, same feedback: every reward comes from the store
    assert again.scored == 0 and again.refits == []
    other = StubDownstream()
    other.questions = {u: f"edited prompt {u}" for u in other.questions}  # other prompts → other texts
    _, _, edited, _ = run(tmp_path, rounds=1, downstream=other)
    assert edited.scored == 1


def test_a_continued_feedback_is_refit_on_every_probe_whatever_the_cache(tmp_path):
    """A validator trained on (not restarted) must have seen every earlier probe, in order, even when
    the earlier rounds' rewards come from the store."""
    _, _, first, _ = run(tmp_path, rounds=1, feedback=ScriptedFeedback(continues=True))
    assert first.refits == ["round0"]
    _, _, resumed, _ = run(tmp_path, rounds=2, feedback=ScriptedFeedback(continues=True))
    assert resumed.scored == 1  # round 1's rewards are cached; round 2's are new
    assert resumed.refits == ["round0", "round1"]  # so round 0's probe is fitted first, then round 1's
    _, _, restarted, _ = run(tmp_path / "other", rounds=2)
    assert restarted.refits == ["round0", "round1"]


class VersionFeedback(ScriptedFeedback):
    """Reward = (1 + u/10)·version + j/10: a later policy writes better texts for every user. Its two
    halves are the reward and the reward with a planted noise (`noise` = scale)."""

    def __init__(self, noise=0.0):
        super().__init__()
        self.noise = noise

    def score(self, users, texts, vectors):
        self.scored += 1
        r = np.array([[(1 + int(u) / 10) * float(t.split("|v")[1].split("|")[0]) + float(t.rsplit("|", 1)[1]) / 10
                       for t in row] for u, row in zip(users, texts)])  # fmt: skip
        rng = np.random.default_rng(self.scored)
        self.last = (r, r + self.noise * rng.normal(size=r.shape))
        return r

    def halves(self):
        return self.last


def test_heldout_users_never_train_and_measure_the_round(tmp_path):
    log: list = []
    policy = FakePolicy(0, log)
    ds = StubDownstream(users=tuple(range(1, 11)))
    rounds, _, fb, _ = run(tmp_path, rounds=2, feedback=VersionFeedback(), downstream=ds, users=4, heldout=3,
                           policy=policy)  # fmt: skip
    held = loop.pick_users(ds.train_users, 3, 7, 0)
    trained_prompts = {c.split("|")[0] for e in log if e[0] == "train" for c, _ in e[2]}
    assert trained_prompts and not trained_prompts & {f"q{u}" for u in held}
    # the held-out pairs handed to the fit come from the held-out users only, from the policy before the round
    assert {g["prompt"] for g in policy.heldout} == {f"q{u}" for u in held}
    assert all("|v0|" in g["chosen"] for g in policy.heldout)
    for r in rounds[1:]:  # each round lifts every user's reward by (1 + u/10): a known gain
        m = r.metrics
        assert m["heldout/users"] == 3 and m["heldout/pairs"] == 3
        assert m["heldout/reward_gain"] == pytest.approx(np.mean([1 + u / 10 for u in held]))
        assert m["heldout/reward_after"] - m["heldout/reward_before"] == pytest.approx(m["heldout/reward_gain"])
        assert m["heldout/p"] < 0.01


def test_heldout_gain_is_zero_and_untested_when_nothing_changes():
    r = np.array([[0.1, 0.2], [0.3, 0.4]])
    g = loop.heldout_gain(r, r.copy())
    assert g["heldout/reward_gain"] == 0.0 and "heldout/p" not in g


def test_a_user_nothing_could_score_is_left_out_silently():
    """A row of NaN (a user with no samples) leaves the gain and the round's reward stats to the
    others, without numpy's empty-slice warnings."""
    before = np.array([[0.1, 0.3], [np.nan, np.nan], [0.2, np.nan]])
    after = np.array([[0.3, 0.5], [np.nan, np.nan], [0.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = loop.heldout_gain(before, after)
        s = loop.reward_stats(before)
    assert g["heldout/users"] == 2.0 and g["heldout/reward_gain"] == pytest.approx(0.25)
    assert s["reward/mean"] == pytest.approx(0.2) and s["reward/spread"] == pytest.approx(0.1)
    assert s["reward/best_mean"] == pytest.approx(0.25)


def test_each_round_reports_its_rewards_split_half_reliability(tmp_path):
    rounds, *_ = run(tmp_path, rounds=1, feedback=VersionFeedback(noise=0.0), users=4)
    m = rounds[1].metrics
    assert m["reliability/spearman"] == 1.0 and m["reliability/same_best"] == 1.0 and m["reliability/users"] == 4
    rounds, *_ = run(tmp_path / "noisy", rounds=1, feedback=VersionFeedback(noise=10.0), users=5)
    assert rounds[1].metrics["reliability/spearman"] < 0.9


class PairwiseFeedback(ScriptedFeedback):
    """A judge: each text's reward is its share of wins against the user's other texts, and the
    text from the newer policy wins (ties split)."""

    pairwise = True

    def __init__(self):
        super().__init__()
        self.widths: list[int] = []

    def score(self, users, texts, vectors):
        self.scored += 1
        self.widths.append(len(texts[0]))
        v = np.array([[int(t.split("|")[1][1:]) + 0.1 * int(t.rsplit("|", 1)[1]) for t in row] for row in texts])
        wins = (v[:, :, None] > v[:, None, :]).sum(-1) + 0.5 * ((v[:, :, None] == v[:, None, :]).sum(-1) - 1)
        return wins / (v.shape[1] - 1)


def test_a_pairwise_feedback_judges_heldout_answers_head_to_head(tmp_path):
    """A user's mean reward under a pairwise judge is fixed (0.5), so before/after scored apart would
    show no gain; judged together, the newer policy's answers win."""
    fb = PairwiseFeedback()
    hist, _, _, _ = run(tmp_path, 1, feedback=fb, downstream=StubDownstream(tuple(range(1, 9))), heldout=4)
    m = hist[1].metrics
    assert m["heldout/head_to_head"] == 1.0 and m["heldout/users"] == 4
    assert m["heldout/reward_after"] > m["heldout/reward_before"] and m["heldout/reward_gain"] > 0.4
    assert 2 * N in fb.widths  # the before and after answers of a user in one judged set


class WordyPolicy(FakePolicy):
    """Sample j has j + 1 + version filler words: later samples and later versions write longer."""

    def sample(self, prompts, seed=None):
        self.log.append(("sample", self.version, len(prompts)))
        return [[" ".join([p] + ["w"] * (j + 1 + self.version)) for j in range(N)] for p in prompts]

    def train_on(self, groups, heldout=None):
        self.log.append(("train", self.version, [(g["chosen"], list(g["rejected"])) for g in groups]))
        return WordyPolicy(self.version + 1, self.log)


class LengthFeedback(Feedback):
    """Reward = words / 100 + a content bonus of 0.5 for texts whose user id is even: only length
    varies within a user, so every within-user preference is a length preference."""

    key = "length"

    def score(self, users, texts, vectors):
        return np.array([[len(t.split()) / 100 + 0.5 * (int(u) % 2 == 0) for t in row] for u, row in zip(users, texts)])


def test_rounds_report_length_and_a_gain_that_is_only_length_adjusts_to_zero(tmp_path):
    cfg = loop.AlignConfig(1, 3, 2, 0.98, 0.0, 0.0, pairs="best_vs_all", seed=7, length_control="none")
    rounds = loop.align(WordyPolicy(0), LengthFeedback(), StubDownstream(), Store(tmp_path), encode, cfg)
    m = rounds[1].metrics
    # sampled texts have 2, 3, 4 words; the longest is chosen against the other two
    assert m["length/sampled"] == 3.0 and m["length/chosen"] == 4.0 and m["length/rejected"] == 2.5
    assert m["length/reward_corr"] == pytest.approx(1.0) and m["length/reward_slope"] == pytest.approx(0.01)
    # the trained policy writes one word more: the raw held-out gain is 0.01, all of it length
    assert m["heldout/reward_gain"] == pytest.approx(0.01)
    assert (m["heldout/length_before"], m["heldout/length_after"]) == (3.0, 4.0)
    assert m["heldout/reward_gain_length_adjusted"] == pytest.approx(0.0, abs=1e-12)


def test_length_control_removes_a_preference_that_is_only_length(tmp_path):
    cfg = loop.AlignConfig(1, 3, 0, 0.98, 0.0, 0.0, pairs="best_vs_all", seed=7, length_control="residual")
    log: list = []
    rounds = loop.align(WordyPolicy(0, log), LengthFeedback(), StubDownstream(), Store(tmp_path), encode, cfg)
    assert rounds[1].metrics["stopped"] == 1.0 and not any(e[0] == "train" for e in log)  # nothing left to learn
    assert rounds[1].metrics["reward/spread"] == pytest.approx(0.02)  # the reported rewards stay the feedback's
    with pytest.raises(ValueError, match="align.length_control='tokens'"):
        loop.AlignConfig(1, 3, 0, 0.98, 0.0, 0.0, pairs="best_vs_all", seed=7, length_control="tokens")


class ShortFeedback(LengthFeedback):
    """A gold judge that disagrees with the proxy: shorter is better."""

    key = "short"

    def __init__(self):
        self.refits = 0

    def refit(self, probe):
        self.refits += 1
        return {}

    def score(self, users, texts, vectors):
        return -super().score(users, texts, vectors)


def test_the_gold_judge_scores_the_same_held_out_texts_and_can_disagree(tmp_path):
    cfg = loop.AlignConfig(2, 3, 2, 0.98, 0.0, 0.0, pairs="best_vs_all", seed=7, length_control="none")
    gold, log = ShortFeedback(), []
    rounds = loop.align(
        WordyPolicy(0, log), LengthFeedback(), StubDownstream(), Store(tmp_path), encode, cfg, gold=gold
    )
    for r in rounds[1:]:  # the proxy sees a gain, the gold judge the same texts' loss
        m = r.metrics
        assert m["heldout/reward_gain"] == pytest.approx(0.01) and m["heldout/gold_reward_gain"] == pytest.approx(-0.01)
        assert m["heldout/gold_users"] == 2 and m["heldout/gold_reward_gain_length_adjusted"] == pytest.approx(0.0)
    assert gold.refits == 2  # refit on each round's latest probe, never on a training pair
    trained = [g for e in log if e[0] == "train" for g in e[2]]
    assert trained and all(len(c.split()) > max(len(x.split()) for x in rej) for c, rej in trained)  # the proxy's pairs
    with pytest.raises(ValueError, match="pairwise judge cannot be the gold"):
        judge = ShortFeedback()
        judge.pairwise = True
        loop.align(WordyPolicy(0), LengthFeedback(), StubDownstream(), Store(tmp_path / "j"), encode, cfg, gold=judge)
