"""The judge's verdicts, pure: parsing a written verdict in the `reclaif_judge.j2` format
(`parse_verdict`), combining the two orders of a pair (`combine`: kept only when both name the same
underlying option), deciding a pair from next-token probabilities read in both orders
(`logit_winners`), and counting outcomes (`JudgeStats`). The LLM is injected as
`judge_fn(prompts) -> answers`, so the tests use a scripted judge.

Each pair is judged twice, in order (option 1 as A) and swapped (option 2 as A): LLM judges favour a
position, and a preference that flips with the order carries no signal (the paper judges once; the
swap is our guard against position bias).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

CRITERIA = ("relevance", "diversity", "explainability")

_MARKDOWN = re.compile(r"[*_`#]+")
_HEAD = {
    "A": re.compile(r"^[\s>\-]*option\s*a\b", re.I | re.M),
    "B": re.compile(r"^[\s>\-]*option\s*b\b", re.I | re.M),
    "decision": re.compile(r"^[\s>\-]*(?:final\s+)?decision\b", re.I | re.M),
}
# a criterion's line ("- Relevance Score: [4] …", "relevance: 4/5"): not a mention inside an explanation
_SCORE = re.compile(
    r"^[\s\-•>]*(relevance|diversity|explainability)\b(?:\s*score)?[^\n\d]{0,12}?(\d+(?:\.\d+)?)", re.I | re.M
)
_RANGE = re.compile(r"[\[(]\s*0\s*[-–]\s*5\s*[\])]")  # an echoed "(0-5)" is not a score
_CHOSEN = re.compile(r"(?:chosen|preferred|selected|winning|better)\s+option\s*(?:is)?\s*[:\-]?[ \t]*([^\n]*)", re.I)
_DECISION = re.compile(r"decision\s*[:\-][ \t]*([^\n]*)", re.I)  # fallback: "Decision: Option B"
# the template's own decision line: "- Chosen Option: B"; the last one is the verdict
_CHOSEN_LINE = re.compile(r"^[\s\-•>]*chosen\s+option\s*[:\-][ \t]*([^\n]*)", re.I | re.M)
# the explain template's score line: "Explainability Score: 4" (a digit anywhere else is not a score)
_EXPLAIN_LINE = re.compile(r"^[\s\-•>]*explainability\s*score\s*[:\-]?\s*\[?\s*(\d+(?:\.\d+)?)", re.I | re.M)
_PICK = re.compile(r"([ab])\b(?!\s*(?:or|/|and|&|,|vs\.?)\s*(?:option\s*)?[ab]\b)")
_STRICT_PICK = re.compile(r"(?:option\s*([ab])\b|([ab])\s*(?:$|[.;:)\]]))")  # not the article "a"
_TIE = re.compile(r"(?:tie|tied|neither|both|none|equal|draw|no\s+preference)\b")


@dataclass
class Verdict:
    """One parsed judge answer. Scores are ints 0..5, None when missing or out of range."""

    scores_a: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(CRITERIA))
    scores_b: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(CRITERIA))
    choice: str | None = None  # "A" | "B" | None (no or unreadable decision, or a tie)
    tie: bool = False  # the decision explicitly names no winner ("Tie", "Neither", "Both")


@dataclass
class JudgeResult:
    """Two verdicts on (option_1, option_2) combined. winner: 0 = option_1, 1 = option_2."""

    winner: int | None
    reason: str  # "consistent" | "inconsistent" (position bias) | "tie" | "malformed"
    verdicts: tuple[Verdict | None, Verdict | None]  # (in order, swapped)
    explainability: tuple[float | None, float | None]  # per option, 1–100, mean over both orders


def _scores(section: str) -> dict[str, int | None]:
    out: dict[str, int | None] = dict.fromkeys(CRITERIA)
    seen = set()
    for name, value in _SCORE.findall(_RANGE.sub(" ", section)):
        v, name = float(value), name.lower()
        if name not in seen and 0 <= v <= 5:
            out[name] = int(v + 0.5)
        seen.add(name)  # the first line decides: an out-of-range score stays None
    return out


def _read_choice(value: str, strict: bool = False) -> tuple[str | None, bool]:
    """("A" | "B" | None, is a tie) from the text after "Chosen Option:" (strict: after "Decision:",
    where "a" may be the article)."""
    v = value.lower().strip(" \t[(\"':")
    if _TIE.match(v):
        return None, True
    if strict:
        pick = _STRICT_PICK.match(v)
        return ((pick[1] or pick[2]).upper() if pick else None), False
    pick = _PICK.match(re.sub(r"^option\s*", "", v))
    return (pick[1].upper() if pick else None), False


def parse_verdict(text: str) -> Verdict | None:
    """Parse a judge answer in the `reclaif_judge.j2` format. Tolerates case, markdown, "Option A"
    / "A" / "[A]", scores as "4", "[4]" or "4/5". None when neither a score nor a decision is found.

    >>> v = parse_verdict("**Option A Evaluation:**\\n- Relevance Score: 4/5 good\\n"
    ...                   "Option B Evaluation:\\n- relevance score: [2]\\nDecision:\\n- Chosen Option: **Option A**")
    >>> v.scores_a["relevance"], v.scores_b["relevance"], v.scores_b["diversity"], v.choice
    (4, 2, None, 'A')
    """
    if not isinstance(text, str):
        return None
    text = _MARKDOWN.sub("", text)
    starts = {k: (m.start() if (m := r.search(text)) else None) for k, r in _HEAD.items()}
    bounds = sorted({s for s in starts.values() if s is not None} | {len(text)})

    def section(key: str) -> str:
        s = starts[key]
        return "" if s is None else text[s : next(b for b in bounds if b > s)]

    verdict = Verdict(scores_a=_scores(section("A")), scores_b=_scores(section("B")))
    final = [m[1] for m in _CHOSEN_LINE.finditer(text) if m[1].strip()]
    chosen = [m[1] for m in _CHOSEN.finditer(text) if m[1].strip()]
    decided = [m[1] for m in _DECISION.finditer(text) if m[1].strip()]
    if final:  # the template's "Chosen Option:" line decides, not a "preferred option" phrase earlier
        verdict.choice, verdict.tie = _read_choice(final[-1])
    elif chosen:
        verdict.choice, verdict.tie = _read_choice(chosen[0])
    elif decided:
        verdict.choice, verdict.tie = _read_choice(decided[0], strict=True)
    scored = any(v is not None for v in (*verdict.scores_a.values(), *verdict.scores_b.values()))
    return verdict if scored or verdict.choice or verdict.tie else None


def explainability_score(verdict: Verdict | None, option: str = "A") -> float | None:
    """The judge's 0–5 explainability score of one option on the paper's 1–100 scale, linearly:
    s ↦ 1 + 99·s/5 (0 → 1, 5 → 100). None when the verdict or the score is missing.

    >>> v = Verdict(scores_a={"explainability": 5}, scores_b={"explainability": 0})
    >>> explainability_score(v, "A"), explainability_score(v, "B")
    (100.0, 1.0)
    """
    assert option in ("A", "B"), f"option must be 'A' or 'B', got {option!r}"
    if verdict is None:
        return None
    s = (verdict.scores_a if option == "A" else verdict.scores_b).get("explainability")
    return None if s is None else 1.0 + 99.0 * s / 5.0


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def combine(in_order: Verdict | None, swapped: Verdict | None) -> JudgeResult:
    """Combine the verdict on (1 as A, 2 as B) with the one on (2 as A, 1 as B)."""
    verdicts = (in_order, swapped)
    # option 1 is A in order and B swapped; option 2 the reverse
    expl = (
        _mean([explainability_score(in_order, "A"), explainability_score(swapped, "B")]),
        _mean([explainability_score(in_order, "B"), explainability_score(swapped, "A")]),
    )
    if any(v is None or (v.choice is None and not v.tie) for v in verdicts):
        return JudgeResult(None, "malformed", verdicts, expl)
    if in_order.tie or swapped.tie:
        return JudgeResult(None, "tie", verdicts, expl)
    first, second = (0 if in_order.choice == "A" else 1), (1 if swapped.choice == "A" else 0)
    if first != second:
        return JudgeResult(None, "inconsistent", verdicts, expl)
    return JudgeResult(first, "consistent", verdicts, expl)


def logit_winners(p_first: np.ndarray, margin: float = 0.0) -> list[int | None]:
    """Winners (0 = option 1, 1 = option 2, None = undecided) from P(option 1 ≻ option 2) read in both
    orders, (P, 2): a pair is decided only when both orders prefer the same option on their own and
    their mean is more than `margin` from ½ (position bias cancels in the mean; a preference that
    flips with the order carries no signal, as in `combine`).

    >>> logit_winners(np.array([[0.8, 0.7], [0.9, 0.4], [0.2, 0.3], [0.55, 0.52]]), margin=0.05)
    [0, None, 1, None]
    """
    out: list[int | None] = []
    for a, b in np.asarray(p_first, float):
        m = 0.5 * (a + b)
        agree = (a > 0.5) == (b > 0.5) and a != 0.5 and b != 0.5
        out.append(None if not agree or abs(m - 0.5) <= margin else (0 if m > 0.5 else 1))
    return out


def first_wins(verdict: Verdict | None, option: str) -> float:
    """1 when `verdict` chose `option` (where option 1 sat), 0 when it chose the other, ½ otherwise."""
    if verdict is None or verdict.choice is None:
        return 0.5
    return 1.0 if verdict.choice == option else 0.0


PromptFn = Callable[[str, str], str]  # (option_a, option_b) -> judge prompt


def judge_pairs(
    judge_fn: Callable[[list[str]], Sequence[str]],
    prompt_fns: PromptFn | Sequence[PromptFn],
    pairs: Sequence[tuple[str, str]],
) -> list[JudgeResult]:
    """Judge P pairs with one `judge_fn` call on 2P prompts: [pair 0 in order, pair 0 swapped,
    pair 1 in order, …]. `prompt_fns` is one prompt builder per pair (each pair has its own user
    history, candidates and target) or one shared by all."""
    fns = [prompt_fns] * len(pairs) if callable(prompt_fns) else list(prompt_fns)
    if len(fns) != len(pairs):
        raise ValueError(f"got {len(fns)} prompt functions for {len(pairs)} pairs")
    prompts = [p for fn, (o1, o2) in zip(fns, pairs) for p in (fn(o1, o2), fn(o2, o1))]
    answers = list(judge_fn(prompts)) if prompts else []
    if len(answers) != len(prompts):
        raise ValueError(f"judge_fn returned {len(answers)} answers for {len(prompts)} prompts")
    return [combine(parse_verdict(answers[2 * i]), parse_verdict(answers[2 * i + 1])) for i in range(len(pairs))]


def judge_pair(
    judge_fn: Callable[[list[str]], Sequence[str]], render_prompt: PromptFn, option_1: str, option_2: str
) -> JudgeResult:
    """Judge one pair in both orders (one batched `judge_fn` call of 2 prompts)."""
    return judge_pairs(judge_fn, [render_prompt], [(option_1, option_2)])[0]


@dataclass
class JudgeStats:
    pairs: int = 0
    consistent: int = 0
    inconsistent: int = 0  # the verdict flipped with the order: position bias
    ties: int = 0
    malformed: int = 0

    def update(self, results: Sequence[JudgeResult]) -> JudgeStats:
        key = {"consistent": "consistent", "inconsistent": "inconsistent", "tie": "ties", "malformed": "malformed"}
        for r in results:
            self.pairs += 1
            setattr(self, key[r.reason], getattr(self, key[r.reason]) + 1)
        return self

    def as_dict(self) -> dict[str, float]:
        rate = self.consistent / self.pairs if self.pairs else math.nan
        return {f"judge/{k}": v for k, v in self.__dict__.items()} | {"judge/consistency": rate}


def explain_score(answer: str) -> float:
    """The explain template's written 0–5 score on the 1–100 scale (nan when unreadable): only the
    "Explainability Score:" line counts.

    >>> explain_score("**Explainability Score:** [4]"), explain_score("I would say 4")
    (80.2, nan)
    """
    m = _EXPLAIN_LINE.search(_MARKDOWN.sub("", answer))
    s = float(m.group(1)) if m else math.nan
    return 1 + 99 * s / 5 if 0 <= s <= 5 else math.nan
