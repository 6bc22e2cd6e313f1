"""docs/architecture.md's "Adding a feedback" snippet, as a user would copy it: the module and the
yaml build a Feedback through `build_feedback`, and the loop aligns a policy with it."""

from __future__ import annotations

import re

import numpy as np
from omegaconf import OmegaConf

from rlrec import loop
from rlrec.feedback.base import Feedback
from rlrec.feedback.ensemble import build_feedback
from rlrec.runtime.store import Store
from tests.conftest import ROOT
from tests.unit.test_loop import StubDownstream, encode

DOC = ROOT / "docs" / "architecture.md"


def snippet(section: str, lang: str) -> str:
    text = DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, f"{DOC.name}: one {lang} block expected under '## {section}', found {len(blocks)}"
    return blocks[0]


class WordsPolicy:
    """Sample j of a prompt has j + 1 words; training returns the next version and records the groups."""

    adapter = None

    def __init__(self, version: int = 0, trained: list | None = None):
        self.version, self.key, self.trained = version, f"v{version}", trained if trained is not None else []
        self.training, self.curve = {}, []

    def sample(self, prompts, seed=None):
        return [[" ".join([p] * (j + 1)) + f" v{self.version}" for j in range(3)] for p in prompts]

    def train_on(self, groups, heldout=None):
        self.trained.extend(groups)
        return WordsPolicy(self.version + 1, self.trained)


def test_the_documented_feedback_builds_from_its_yaml_and_aligns_a_policy(tmp_path, monkeypatch):
    (tmp_path / "myfeedback.py").write_text(snippet("Adding a feedback", "python"))
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = OmegaConf.create(snippet("Adding a feedback", "yaml"))
    feedback = build_feedback(conf, ctx=None, downstream=None)
    assert isinstance(feedback, Feedback) and not feedback.pairwise and feedback.halves() is None
    np.testing.assert_array_equal(feedback.score([1], [["a b c", "a"]], None), [[-3.0, -1.0]])
    policy = WordsPolicy()
    cfg = loop.AlignConfig(
        2, 3, 2, dedup_threshold=0.98, min_gap=0.0, min_z=0.0, pairs="best_vs_all", seed=1, length_control="none"
    )
    rounds = loop.align(policy, feedback, StubDownstream(), Store(tmp_path / "cache"), encode, cfg)
    assert [r.name for r in rounds] == ["round0", "round1", "round2"] and len(policy.trained) == 6
    for g in policy.trained:  # best vs all: the one-word sample beats the longer ones
        assert len(g["chosen"].split()) == 2 and all(len(r.split()) > 2 for r in g["rejected"])
    # held-out users: the same texts before and after (the toy policy does not change them), no gain
    assert rounds[1].metrics["heldout/users"] == 2 and rounds[1].metrics["heldout/reward_gain"] == 0.0
