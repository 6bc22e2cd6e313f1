"""RecLAIF's pure parts: the recommender-answer parser (validity), the judge's verdict parser and
order-swapped pair judging with a scripted judge, and the per-list ranking/diversity metrics."""

from __future__ import annotations

import doctest
import math
import random

import numpy as np
import pytest

from rlrec import metrics
from rlrec.downstream import parse
from rlrec.downstream.parse import parse_recommendation
from rlrec.feedback import verdict
from rlrec.feedback.verdict import JudgeStats, explainability_score, judge_pair, judge_pairs, parse_verdict
from rlrec.metrics import diversity, hit_at_k, ndcg_at_k_single, precision_at_k

MOVIES = [
    "Toy Story (1995)",
    "Heat (1995)",
    "Usual Suspects, The (1995)",
    "Star Wars (1977)",
    "Star Wars: Episode IV - A New Hope (1977)",
    "Shawshank Redemption, The (1994)",
    "Fargo (1996)",
]

WELL_FORMED = """Key Preferences:
- Preference 1: Crime thrillers with twists
- Preference 2: Character-driven drama

Recommended Movies (from most to least likely):
Usual Suspects, The (1995) - A twisty crime thriller.
Heat (1995) - A tense heist drama.
Fargo (1996) - Dark crime with memorable characters.
"""


@pytest.mark.parametrize("obj", [parse, verdict, hit_at_k, ndcg_at_k_single, precision_at_k, diversity])
def test_doctests(obj):
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(obj, globs=vars(metrics) if callable(obj) else None):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


def test_parse_well_formed():
    p = parse_recommendation(WELL_FORMED, MOVIES, k=3)
    assert p.preferences == ["Preference 1: Crime thrillers with twists", "Preference 2: Character-driven drama"]
    assert p.items == [2, 1, 6]
    assert p.reasons == ["A twisty crime thriller.", "A tense heist drama.", "Dark crime with memorable characters."]
    assert (p.invalid, p.duplicates, p.extra, p.valid) == (0, 0, 0, True)


def test_parse_keeps_the_answers_order():
    text = WELL_FORMED.replace("Heat (1995) - A tense heist drama.\n", "").replace(
        "Recommended Movies (from most to least likely):\n",
        "Recommended Movies (from most to least likely):\nHeat (1995) - A tense heist drama.\n",
    )
    assert parse_recommendation(text, MOVIES, k=3).items == [1, 2, 6]


def test_parse_one_non_candidate_is_invalid_but_keeps_the_rest():
    text = WELL_FORMED.replace("Heat (1995)", "Casino (1995)")
    p = parse_recommendation(text, MOVIES, k=3)
    assert p.items == [2, 6] and p.invalid == 1 and not p.valid


def test_parse_fuzzy_names():
    text = """Recommended Movies:
1. The Usual Suspects - twists
2. **Shawshnk Redemption** : hope
3. "Toy Storey" – fun
4) [Star Wars: Episode IV - A New Hope] - the longer title wins over "Star Wars"
"""
    p = parse_recommendation(text, MOVIES, k=4)
    assert p.items == [2, 5, 0, 4]
    assert p.reasons == ["twists", "hope", "fun", 'the longer title wins over "Star Wars"']
    assert p.valid
    # a stricter threshold rejects the typos: those lines now name no candidate
    strict = parse_recommendation(text, MOVIES, k=4, threshold=0.99)
    assert strict.items == [2, 4] and strict.invalid == 2 and not strict.valid


def test_parse_year_disambiguates_exact_matches():
    cands = ["Heat (1986)", "Heat (1995)"]
    assert parse_recommendation("Recommended:\n- Heat (1995) - Mann", cands, k=1).items == [1]
    assert parse_recommendation("Recommended:\n- Heat - either", cands, k=1).items == [0]


def test_parse_numbered_bulleted_bold_without_header():
    text = """Key Preferences:
* Crime
* Drama

**1. Fargo**: snowy crime
- *Heat* - heist
• 'Toy Story (1995)' - a change of pace
"""
    p = parse_recommendation(text, MOVIES, k=3)
    assert p.preferences == ["Crime", "Drama"]
    assert p.items == [6, 1, 0] and p.reasons == ["snowy crime", "heist", "a change of pace"]
    assert p.valid


def test_parse_skips_prose_but_counts_repeats_and_overflow():
    text = """Recommended Movies (from most to least likely):
Heat (1995) - heist
Fargo - crime
Heat - again
Toy Story - past k

These picks balance tension and humour - the top one, Heat, fits every preference you showed.
"""
    p = parse_recommendation(text, MOVIES, k=2)
    assert (p.items, p.invalid, p.duplicates, p.extra, p.valid) == ([1, 6], 0, 1, 1, False)


LASTFM = ["Bassnectar", "Julian Casablancas", "Earth Crisis", "Angus & Julia Stone", "Buju Banton",
          "Head Automatica", "Snow Patrol", "10 Years", "Tarja", "Gentle Giant", "Astor Piazzolla",
          "Black Sun Empire", "Holly Brook", "The Horrors", "Catherine Wheel", "45 Grave", "Impending Doom",
          "Band of Skulls", "Hannah Montana", "Crossfade"]  # fmt: skip


def test_parse_the_papers_example_answer():
    """RecLAIF §4.1's example output, markdown and trailing summary paragraph included."""
    text = """#### **Key Preferences:**

- Preference 1: Alternative/Indie Rock and Electronic/Synthpop genres

- Preference 2: Dark, moody, and atmospheric vibes
- Preference 3: Female vocals

# Recommended Artists/Bands (from most to least likely):

 The Horrors - Their music blends alternative rock with electronic and synth-pop elements.
Band of Skulls - This alternative rock band has a moody and atmospheric sound.
Catherine Wheel - With their blend of alternative rock and electronic influences.

The recommendations focus on aligning with the user's identified preferences while ensuring diversity \
in the suggested bands. The top recommendation, *The Horrors*, strongly aligns with all three preferences.
"""
    p = parse_recommendation(text, LASTFM, k=3)
    assert len(p.preferences) == 3 and p.preferences[2] == "Preference 3: Female vocals"
    assert p.items == [13, 17, 14] and p.reasons[1] == "This alternative rock band has a moody and atmospheric sound."
    assert p.valid
    # "and" for "&", and a lower-case non-candidate line without a list marker still counts
    p = parse_recommendation("Recommended:\nAngus and Julia Stone - folk\nradiohead - not listed", LASTFM, k=3)
    assert (p.items, p.invalid) == ([3], 1)


def test_parse_notes_are_skipped_unless_they_are_candidates():
    cands = ["Notes on a Scandal (2006)", "Heat (1995)"]
    text = "Recommended:\n1. Notes on a Scandal - tense\n2. Heat - heist\nNote: both are dramas."
    p = parse_recommendation(text, cands, k=2)
    assert (p.items, p.invalid, p.valid) == ([0, 1], 0, True)


@pytest.mark.parametrize(
    "text", ["", "   \n\n", "lorem ipsum dolor sit amet", "}{][\x00\x07 ---\n:::", "Key Preferences:", None]
)
def test_parse_garbage_is_empty_and_invalid(text):
    p = parse_recommendation(text, MOVIES, k=3)
    assert (p.items, p.reasons, p.preferences, p.valid) == ([], [], [], False)


def test_parse_never_raises_on_random_text():
    rng = random.Random(0)
    alphabet = "abcXYZ019 -:*#()[]\"'\n\t•–—.,&_`"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        p = parse_recommendation(text, MOVIES, k=3)
        assert len(p.items) <= 3 and len(p.items) == len(p.reasons)


def test_parse_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be >= 1"):
        parse_recommendation(WELL_FORMED, MOVIES, k=0)


# ------------------------------------------------------------------------------------ judge


def verdict_text(a=(4, 3, 5), b=(2, 4, 1), choice="A", bold=False) -> str:
    b_, lines = ("**" if bold else ""), []
    for name, s in (("A", a), ("B", b)):
        lines += [f"{b_}Option {name} Evaluation:{b_}"]
        lines += [f"- {c} Score: {v} Explanation." for c, v in zip(("Relevance", "Diversity", "Explainability"), s)]
        lines += [""]
    if choice is not None:
        lines += [f"{b_}Decision:{b_}", f"- Chosen Option: {choice}", "- Reasoning: Option B is weaker."]
    return "\n".join(lines)


def test_parse_verdict_well_formed():
    v = parse_verdict(verdict_text())
    assert v.scores_a == {"relevance": 4, "diversity": 3, "explainability": 5}
    assert v.scores_b == {"relevance": 2, "diversity": 4, "explainability": 1}
    assert (v.choice, v.tie) == ("A", False)


def test_parse_verdict_lowercase_bold_and_score_styles():
    text = verdict_text(choice="**option b**", bold=True).lower()
    text = text.replace("relevance score: 4", "relevance score: 4/5").replace(
        "diversity score: 4", "diversity score: [4]"
    )
    v = parse_verdict(text)
    assert v.scores_a["relevance"] == 4 and v.scores_b["diversity"] == 4 and v.scores_b["explainability"] == 1
    assert v.choice == "B"
    assert parse_verdict(verdict_text(choice="[B]")).choice == "B"


def test_parse_verdict_reads_criterion_lines_only():
    text = """Option A Evaluation:
- Relevance Score: 4 Good, though diversity suffers in 2 cases.
- Diversity Score (0-5): 3
- Explainability: 5/5
Option B Evaluation:
- Relevance Score: 2
Decision: Option B"""
    v = parse_verdict(text)
    assert v.scores_a == {"relevance": 4, "diversity": 3, "explainability": 5}
    assert v.scores_b == {"relevance": 2, "diversity": None, "explainability": None}
    assert v.choice == "B"  # "Decision: …" is the fallback when there is no "Chosen Option:" line
    v = parse_verdict(text.replace("Decision: Option B", "Decision: a close call."))
    assert v.choice is None and not v.tie  # the article "a" is no choice


def test_parse_verdict_missing_or_unreadable_decision():
    v = parse_verdict(verdict_text(choice=None))
    assert v is not None and v.choice is None and not v.tie and v.scores_a["relevance"] == 4
    echoed = parse_verdict(verdict_text(choice="[A or B]"))  # the template echoed back
    assert echoed.choice is None and not echoed.tie
    assert parse_verdict(verdict_text(choice="Tie")).tie
    # a missing or out-of-range score is None, the rest still parse
    v = parse_verdict(verdict_text().replace("Diversity Score: 3", "Diversity Score: 9"))
    assert v.scores_a["diversity"] is None and v.scores_a["explainability"] == 5


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "Option A is nice.", None])
def test_parse_verdict_garbage(text):
    v = parse_verdict(text)
    assert v is None or (v.choice is None and not v.tie)


def test_explainability_mapping():
    v = parse_verdict(verdict_text(a=(0, 0, 3), b=(0, 0, 0)))
    assert explainability_score(v, "A") == pytest.approx(1 + 99 * 3 / 5)
    assert explainability_score(v, "B") == 1.0
    assert explainability_score(None) is None


def render(option_a: str, option_b: str) -> str:
    return f"Option A: {option_a}\nOption B: {option_b}"


def scripted(prefer: str | None = None, always: str | None = None, answer: str | None = None):
    """A judge that prefers the option containing `prefer`, or always answers `always` (position
    bias), or returns `answer` verbatim. Explainability: 5 for "good", 2 otherwise."""
    calls = []

    def judge_fn(prompts: list[str]) -> list[str]:
        calls.append(list(prompts))
        out = []
        for p in prompts:
            a, b = (line.split(": ", 1)[1] for line in p.splitlines())
            if answer is not None:
                out.append(answer)
                continue
            choice = always or ("A" if prefer in a else "B")
            out.append(
                verdict_text(a=(3, 3, 5 if "good" in a else 2), b=(3, 3, 5 if "good" in b else 2), choice=choice)
            )
        return out

    judge_fn.calls = calls
    return judge_fn


def test_judge_pair_consistent_win_for_option_1():
    fn = scripted(prefer="good")
    r = judge_pair(fn, render, "good list", "bad list")
    assert (r.winner, r.reason) == (0, "consistent")
    # one batched call: in order, then swapped
    assert fn.calls == [[render("good list", "bad list"), render("bad list", "good list")]]
    assert r.explainability == (100.0, pytest.approx(1 + 99 * 2 / 5))


def test_judge_pair_consistent_win_for_option_2():
    r = judge_pair(scripted(prefer="good"), render, "bad list", "good list")
    assert (r.winner, r.reason) == (1, "consistent")
    assert r.explainability == (pytest.approx(40.6), 100.0)


def test_judge_pair_position_bias_is_inconsistent():
    r = judge_pair(scripted(always="A"), render, "good list", "bad list")
    assert (r.winner, r.reason) == (None, "inconsistent")
    assert [v.choice for v in r.verdicts] == ["A", "A"]


@pytest.mark.parametrize("decision", ["Tie", "Neither", "Both are equally good"])
def test_judge_pair_tie(decision):
    r = judge_pair(scripted(answer=verdict_text(choice=decision)), render, "x", "y")
    assert (r.winner, r.reason) == (None, "tie")


@pytest.mark.parametrize("answer", ["Sorry, I can't compare these.", verdict_text(choice=None)])
def test_judge_pair_malformed(answer):
    r = judge_pair(scripted(answer=answer), render, "x", "y")
    assert (r.winner, r.reason) == (None, "malformed")


def test_judge_pairs_batches_and_stats():
    fn = scripted(prefer="good")
    pairs = [("good 1", "bad 1"), ("bad 2", "good 2"), ("bad 3", "bad 4")]  # last: no "good" → always B
    results = judge_pairs(fn, render, pairs)
    assert len(fn.calls) == 1 and len(fn.calls[0]) == 6
    assert [(r.winner, r.reason) for r in results] == [(0, "consistent"), (1, "consistent"), (None, "inconsistent")]
    stats = JudgeStats().update(results).update([judge_pair(scripted(answer="??"), render, "x", "y")])
    d = stats.as_dict()
    assert {
        k: d[k] for k in ("judge/pairs", "judge/consistent", "judge/inconsistent", "judge/malformed", "judge/ties")
    } == {"judge/pairs": 4, "judge/consistent": 2, "judge/inconsistent": 1, "judge/malformed": 1, "judge/ties": 0}
    assert d["judge/consistency"] == 0.5
    assert math.isnan(JudgeStats().as_dict()["judge/consistency"])


def test_judge_pairs_checks_lengths():
    with pytest.raises(ValueError, match="prompt functions"):
        judge_pairs(scripted(prefer="good"), [render], [("a", "b"), ("c", "d")])
    with pytest.raises(ValueError, match="1 answers for 2 prompts"):
        judge_pairs(lambda prompts: ["A"], render, [("a", "b")])


# ---------------------------------------------------------------------------------- metrics


def test_ranking_metrics_hand_computed():
    ranked = [3, 1, 2]
    assert hit_at_k(ranked, 1, k=1) == 0.0 and hit_at_k(ranked, 1, k=3) == 1.0
    assert ndcg_at_k_single(ranked, 1, k=3) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k_single(ranked, 3, k=3) == 1.0
    assert ndcg_at_k_single(ranked, 2, k=2) == 0.0
    assert precision_at_k(ranked, {1, 2, 9}, k=3) == pytest.approx(2 / 3)
    assert precision_at_k([1], {1}, k=5) == pytest.approx(0.2)
    for empty in ([], None):  # an invalid answer is scored as an empty list
        assert hit_at_k(empty, 1, 3) == ndcg_at_k_single(empty, 1, 3) == precision_at_k(empty, {1}, 3) == 0.0


def test_metrics_on_a_parsed_answer():
    p = parse_recommendation(WELL_FORMED, MOVIES, k=3)  # items [2, 1, 6]
    assert hit_at_k(p.items, 1, k=1) == 0.0
    assert ndcg_at_k_single(p.items, 1, k=3) == pytest.approx(1 / math.log2(3))


def test_diversity():
    assert diversity(np.eye(4)) == pytest.approx(1.0)
    assert diversity(np.tile([[0.3, -1.2, 2.0]], (3, 1))) == pytest.approx(0.0, abs=1e-12)
    # pairs: (x, y) orthogonal → 1, (x, -x) → 2, (y, -x) → 1
    assert diversity(np.array([[1.0, 0], [0, 2.0], [-3.0, 0]])) == pytest.approx(4 / 3)
    assert diversity(np.ones((1, 5))) == 0.0 and diversity(np.zeros((0, 5))) == 0.0
    with pytest.raises(AssertionError, match=r"\(N, D\)"):
        diversity(np.ones(3))
