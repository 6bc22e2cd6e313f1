"""The knowledge downstream's probe: user texts from the policy, item texts from an item field."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.conftest import make_context


class Encoder:
    key = "fake-encoder"

    def encode(self, texts):
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=4) for t in texts]).astype(np.float32)


class Policy:
    key = "fake"

    def greedy(self, prompts, max_new_tokens=None):
        return [f"summary {i}" for i, _ in enumerate(prompts)]


def downstream(tmp_path, *overrides):
    ctx = make_context(tmp_path, overrides=["+experiment=trackrec_synthetic", *overrides], encoder=Encoder())
    return ctx, instantiate(ctx.cfg.downstream)(ctx=ctx)


def test_item_text_encodes_each_items_own_title_without_the_llm(tmp_path):
    ctx, ds = downstream(tmp_path)
    probe = ds.probe(Policy(), "round0")
    items = ds.knowledge_items()
    titles = [ds.view.item(i)["title"] for i in items]
    assert probe.item_vectors.shape == (ctx.prep.spec.num_items + 1, 4)
    np.testing.assert_allclose(probe.item_vectors[items], Encoder().encode(titles))
    assert not probe.item_vectors[0].any()  # row 0 = padding
    assert len(probe.texts) == len(ds.users)  # the users' texts still come from the policy


def test_item_text_names_a_missing_field_and_excludes_item_prompt(tmp_path):
    _, ds = downstream(tmp_path, "downstream.item_text=plot")
    with pytest.raises(ValueError, match="item_text='plot' is not an item field"):
        ds.probe(Policy(), "round0")
    with pytest.raises(ValueError, match="not both"):
        downstream(tmp_path, "downstream.item_prompt=item")


def test_items_only_keeps_the_item_side_and_gives_every_user_one_vector():
    from rlrec.downstream.knowledge import items_only
    from rlrec.outputs.results import Probe

    users = np.zeros((4, 3), np.float32)
    users[1:] = [[1, 0, 0], [0, 1, 0], [0, 0, 4]]
    items = np.arange(9, dtype=np.float32).reshape(3, 3)
    probe = items_only(Probe("round0", "k", {1: "a"}, users, items))
    np.testing.assert_allclose(probe.vectors[1:], np.tile([[1 / 3, 1 / 3, 4 / 3]], (3, 1)))
    assert not probe.vectors[0].any() and probe.item_vectors is items and probe.key != "k"
