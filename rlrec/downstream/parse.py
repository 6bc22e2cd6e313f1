"""RecLAIF's LLM-as-recommender output (§4.1): parse an answer to `reclaif_recommender.j2` into
the stated key preferences K_u and the ranked top-k R_u (indices into the candidate list, with a
reason each), and decide whether the answer is *valid*.

The template asks for

    Key Preferences:
    - Preference 1: [Description]
    Recommended Movies (from most to least likely):
    [Name] - [Reason for Recommendation]

Real answers drift from it (numbering, bullets, bold, quotes, "Name: reason", a dropped header,
"(1995)" missing, typos), so *parsing* is tolerant and never raises on any text, while *validity*
is strict. ValidRatio (RecLAIF §5, after LLaRA) is the share of answers with `Parsed.valid`:

    valid  ⇔  ≥ 1 candidate recognised, and no recommendation line names a non-candidate
              (`invalid == 0`), repeats one (`duplicates == 0`) or goes past k (`extra == 0`).

Layout drift alone (no header, other separators, a summary paragraph) does not make an answer
invalid: the metric asks whether the model recommended only from the list, not how it typeset it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

try:  # optional: faster; its ratio is the same Indel-normalised similarity difflib approximates
    from rapidfuzz.fuzz import ratio as _rapidfuzz_ratio
except ImportError:  # pragma: no cover - depends on the environment
    _rapidfuzz_ratio = None

FUZZY_THRESHOLD = 0.85  # a typo or a dropped article passes; "Heat" vs "Seat" (0.75) does not
MAX_NAME_WORDS = 10  # an unmatched "X - Y" line with a longer X is prose, not a recommendation

_MARKDOWN = re.compile(r"[*_`]+")
_MARKER = re.compile(r"^(?:[-•+·>]|\*\s|\d{1,2}\s*[.)\]]|\(\d{1,2}\)|#{1,6})\s*")
_SEP = re.compile(r"\s+[-–—]{1,2}\s+|\s*[:–—]\s+")  # name/reason separators (titles contain them too)
_YEAR = re.compile(r"\(\s*(\d{4})\s*\)")
_ARTICLE = re.compile(r"^(.*),\s*(the|a|an|les|la|le|il|el|das|der|die)$")  # "Usual Suspects, The"
_PREF_HEAD = re.compile(r"^key\s+(?:preferences?|features)\b", re.I)
_REC_HEAD = re.compile(r"^(?:(?:your\s+)?top\s*\d*\s+)?recommend(?:ed|ations?)\b", re.I)
_PREF_LINE = re.compile(r"^preference\s*\d*\s*:", re.I)
_COMMENT = re.compile(r"^(?:notes?|reasoning|summary|explanation|overall|conclusion|here|sure|based)\b", re.I)


@dataclass
class Parsed:
    """One parsed answer. `items[i]` indexes the candidate list; `reasons[i]` is its reason."""

    preferences: list[str] = field(default_factory=list)
    items: list[int] = field(default_factory=list)  # ranked, de-duplicated, at most k
    reasons: list[str] = field(default_factory=list)
    invalid: int = 0  # recommendation lines naming no candidate / a non-candidate
    duplicates: int = 0  # recommendation lines repeating an already listed candidate
    extra: int = 0  # candidate lines past the k-th

    @property
    def valid(self) -> bool:
        return bool(self.items) and self.invalid == 0 and self.duplicates == 0 and self.extra == 0


def normalize_title(title: str) -> str:
    """Matching key of a title: lower case, no year, markdown, quotes, brackets or punctuation,
    "&" → "and", a trailing ", The" article moved to the front and an English leading article dropped.

    >>> normalize_title("**Usual Suspects, The (1995)**")
    'usual suspects'
    >>> normalize_title('"The Usual Suspects"'), normalize_title("[Angus & Julia Stone]")
    ('usual suspects', 'angus and julia stone')
    """
    s = _YEAR.sub(" ", title.lower()).replace("&", " and ")
    s = re.sub(r"['’`]", "", s)
    s = re.sub(r"[^\w,]+|_+", " ", s).strip(" ,")
    m = _ARTICLE.match(s)
    if m:
        s = f"{m[2]} {m[1]}"
    s = " ".join(s.replace(",", " ").split())
    return re.sub(r"^(?:the|a|an) ", "", s)


def _similarity(a: str, b: str) -> float:
    if _rapidfuzz_ratio is not None:
        return _rapidfuzz_ratio(a, b) / 100.0
    return difflib.SequenceMatcher(None, a, b).ratio()


class _Matcher:
    """Maps a written name to a candidate index: exact key (the year breaks ties between remakes),
    else the most similar key if its similarity ≥ threshold."""

    def __init__(self, candidates: list[str], threshold: float):
        self.keys = [normalize_title(c) for c in candidates]
        self.years = [(m[1] if (m := _YEAR.search(c)) else None) for c in candidates]
        self.threshold = threshold

    def name(self, name: str) -> tuple[int | None, float]:
        key = normalize_title(name)
        if not key:
            return None, 0.0
        exact = [i for i, k in enumerate(self.keys) if k == key]
        if exact:
            year = _YEAR.search(name)
            same_year = [i for i in exact if year and self.years[i] == year[1]]
            return (same_year or exact)[0], 1.0
        scores = [_similarity(key, k) if k else 0.0 for k in self.keys]
        best = max(range(len(scores)), key=scores.__getitem__)
        return (best if scores[best] >= self.threshold else None), scores[best]

    def line(self, body: str) -> tuple[int | None, str, bool]:
        """(candidate or None, reason, starts with a name-like "Name - " part).
        Every separator split (and the whole line) is tried as the name; the best score wins and
        the longer name on ties, since titles contain " - " and ":" themselves."""
        cuts = [(m.start(), m.end()) for m in _SEP.finditer(body)] + [(len(body), len(body))]
        best, best_score, reason = None, 0.0, ""
        for start, end in cuts:
            idx, score = self.name(body[:start])
            if idx is not None and score >= best_score:
                best, best_score, reason = idx, score, re.sub(r"^\[(.*)\]$", r"\1", body[end:].strip())
        return best, reason, len(cuts) > 1 and _looks_like_name(body[: cuts[0][0]])


def _looks_like_name(text: str) -> bool:
    """A short, mostly capitalised text ("Casino (1995)", "Band of Skulls"), not a sentence."""
    words = text.split()
    capitalised = sum(w[0].isupper() or w[0].isdigit() for w in words)
    return 0 < len(words) <= MAX_NAME_WORDS and (len(words) <= 3 or 2 * capitalised >= len(words))


def _clean(line: str) -> tuple[bool, str]:
    """(had a list marker, the line without list marker, markdown emphasis and outer spaces)."""
    body, marked = line.strip(), False
    for _ in range(2):  # the marker may sit inside the emphasis: "**1. Heat**"
        marker = _MARKER.match(body)
        if marker:
            body, marked = body[marker.end() :], True
        body = _MARKDOWN.sub("", body).strip()
    return marked, body


def _pref_block_end(lines: list[tuple[bool, str]], start: int) -> int:
    """End of a preference block with no "Recommended" header after it: the first blank or
    non-entry line once an entry (a list item or "Preference n: …") was seen."""
    seen = False
    for j in range(start, len(lines)):
        marked, body = lines[j]
        if body and (marked or _PREF_LINE.match(body)):
            seen = True
        elif body or seen:
            return j
    return len(lines)


def _is_rec_header(body: str) -> bool:
    return bool(_REC_HEAD.match(body)) and (body.endswith(":") or len(body.split()) <= 8)


def is_list_header(line: str) -> bool:
    """Whether a raw answer line is the recommendation list's header as `parse_recommendation`
    reads it (constrained decoding starts the item lines after it).

    >>> is_list_header("**Recommended Movies (from most to least likely):**"), is_list_header("I recommend it")
    (True, False)
    """
    return _is_rec_header(_clean(line)[1])


def parse_recommendation(text: str, candidates: list[str], k: int, threshold: float = FUZZY_THRESHOLD) -> Parsed:
    """Parse one recommender answer; see the module docstring for the validity rule.

    Lines after the "Recommended …" header are scanned (all lines but the key-preference block
    when the header is missing). A line naming a candidate adds it (repeats → `duplicates`, past k
    → `extra`); an unmatched line counts as `invalid` when it looks like a recommendation (a list
    marker, or "Name - reason" with a short, capitalised name); prose, sub-headers and notes are
    skipped.

    >>> p = parse_recommendation("Recommended Movies:\\n1. **Heat (1995)** - tense\\n2. Casino: long",
    ...                          ["Casino (1995)", "Heat (1995)", "Fargo (1996)"], k=2)
    >>> p.items, p.reasons, p.valid
    ([1, 0], ['tense', 'long'], True)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not isinstance(text, str) or not candidates:
        return Parsed()
    match = _Matcher(list(candidates), threshold)
    lines = [_clean(line) for line in text.splitlines()]
    pref_at = next((i for i, (_, b) in enumerate(lines) if _PREF_HEAD.match(b)), None)
    after = -1 if pref_at is None else pref_at
    rec_at = next((i for i, (_, b) in enumerate(lines) if i > after and _is_rec_header(b)), None)

    out, skip = Parsed(), range(0)
    if pref_at is not None:
        end = rec_at if rec_at is not None else _pref_block_end(lines, pref_at + 1)
        inline = _PREF_HEAD.sub("", lines[pref_at][1]).strip(" :")  # "Key Preferences: X" on one line
        out.preferences = [b for b in [inline] + [b for _, b in lines[pref_at + 1 : end]] if b]
        skip = range(pref_at, end)
    seen: set[int] = set()
    scan = range(rec_at + 1, len(lines)) if rec_at is not None else [i for i in range(len(lines)) if i not in skip]

    for i in scan:
        marked, body = lines[i]
        if not any(c.isalnum() for c in body) or _is_rec_header(body):
            continue
        if _PREF_HEAD.match(body) or _PREF_LINE.match(body):
            continue
        idx, reason, named = match.line(body)
        if idx is None:  # not a recommendation if a sub-header ("…:") or a note ("Overall, …")
            out.invalid += int((marked or named) and not (body.endswith(":") or _COMMENT.match(body)))
            continue
        if idx in seen:
            out.duplicates += 1
        elif len(out.items) == k:
            out.extra += 1
        else:
            out.items.append(idx)
            out.reasons.append(reason)
        seen.add(idx)
    return out
