"""Constrained decoding for an LLM recommender: every recommendation line names one of the
question's candidates, no candidate twice, at most k lines; the key preferences and each reason
stay free text (RecLAIF §4.1's answer format, made valid by construction).

    spec = CandidateList(titles=("Heat (1995)", "Casino (1995)", …), k=3,
                         header="Recommended Movies (from most to least likely):")
    gen.sample(prompts, …, constraints=[spec, …])      # one spec per prompt (None = free)

The answer the decoder allows, as a grammar:

    preamble  free text (no end-of-sequence), up to `max_preamble_tokens`; it ends at a line the
              downstream's parser reads as the list header (`is_header`), or `"\\n" header "\\n"`
              is forced when the budget runs out
    item × k  TITLE  " -"  REASON "\\n"     TITLE ∈ the candidates not named yet, spelled as the
              tokenizer spells the title alone (a token trie); REASON = free text on one line
              (starts with a space, at most `max_reason_tokens`, then a newline is forced)
    end       end-of-sequence after the k-th line (k = min(k, number of candidates))

Why a token automaton of our own rather than a structured-generation library: the set of allowed
continuations depends on which candidates were already named (no repeats), and the preamble is
bounded in *tokens* so a list always fits in `max_new_tokens`; both are one integer of state here,
while a regular grammar needs every ordered k-subset of the candidates spelled out (720 branches
for 3 of 10). The per-step cost is one masked row per constrained sample (benchmarks/constrained.py).
Servers (vLLM, `sampling.backend=openai|vllm`) get `regex()`: the same language as a regular
expression, sent as vLLM's `structured_outputs.regex`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import perm

import torch

from rlrec.runtime.cache import fingerprint

MAX_REGEX_BRANCHES = 5000  # ordered k-subsets spelled out in `regex()`; past that, repeats are allowed


@dataclass(frozen=True)
class CandidateList:
    """A question's answer constraint (see the module docstring). `is_header(line)` says whether a
    line the model writes itself is the list header (the downstream's parser decides; None = the line
    starts with the header's first word)."""

    titles: tuple[str, ...]
    k: int
    header: str
    is_header: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    max_preamble_tokens: int = 160
    max_reason_tokens: int = 40
    separator: str = " -"

    def __post_init__(self):
        if not self.titles:
            raise ValueError("CandidateList needs at least one candidate title")
        if self.k < 1:
            raise ValueError(f"CandidateList.k must be >= 1, got {self.k}")
        if any("\n" in t for t in self.titles):
            raise ValueError("candidate titles must be single lines")

    @property
    def key(self) -> str:
        """Identifies the language (part of the generation cache key)."""
        return fingerprint(
            "candidate_list/1",
            list(self.titles),
            self.k,
            self.header,
            self.max_preamble_tokens,
            self.max_reason_tokens,
            self.separator,
            length=16,
        )

    @property
    def lines(self) -> int:
        return min(self.k, len(self.titles))

    def regex(self, max_preamble_chars: int = 1500, max_reason_chars: int = 300) -> str:
        """The answers this constraint allows, as a regular expression (for vLLM's structured
        outputs). Ordered k-subsets are spelled out while there are ≤ MAX_REGEX_BRANCHES of them
        (no repeats); past that any candidate may fill any line.

        >>> import re
        >>> c = CandidateList(("Heat (1995)", "Casino (1995)"), k=2, header="Recommended:")
        >>> bool(re.fullmatch(c.regex(), "Likes crime.\\nRecommended:\\nCasino (1995) - long\\nHeat (1995) - tense"))
        True
        >>> bool(re.fullmatch(c.regex(), "x\\nRecommended:\\nHeat (1995) - a\\nHeat (1995) - b"))
        False
        """
        reason = rf"[^\n]{{0,{max_reason_chars}}}"
        sep = re.escape(self.separator)
        names = [re.escape(t) for t in self.titles]
        n = self.lines

        def lines(used: frozenset[int], depth: int) -> str:
            alts = []
            for i, name in enumerate(names):
                if i in used:
                    continue
                rest = "" if depth + 1 == n else r"\n+" + lines(used | {i}, depth + 1)
                alts.append(name + sep + reason + rest)
            return "(?:" + "|".join(alts) + ")"

        if perm(len(names), n) <= MAX_REGEX_BRANCHES:
            body = lines(frozenset(), 0)
        else:
            one = "(?:" + "|".join(names) + ")" + sep + reason
            body = one + (rf"(?:\n+{one}){{{n - 1}}}" if n > 1 else "")
        return rf"[\s\S]{{0,{max_preamble_chars}}}?\n" + re.escape(self.header) + r"\n" + body + r"\n*"

    def compile(
        self, tokenizer, vocab_size: int, stop_ids: Sequence[int], max_new_tokens: int | None = None
    ) -> CandidateListDecoder:
        return CandidateListDecoder(self, tokenizer, vocab_size, stop_ids, max_new_tokens)


class TokenTable:
    """Per tokenizer (cached on it): each token's text and the vocabulary masks the states use."""

    def __init__(self, tokenizer, vocab_size: int):
        n = min(len(tokenizer), vocab_size)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
        texts += [""] * (vocab_size - n)
        self.texts = texts
        newline = torch.tensor(["\n" in t for t in texts])
        ends_newline = torch.tensor([t.endswith("\n") and "\n" not in t.rstrip("\n") for t in texts])
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[[i for i in getattr(tokenizer, "all_special_ids", []) if i < vocab_size]] = True
        special[n:] = True
        printable = torch.tensor([bool(t) for t in texts]) & ~special
        self.free_ok = printable  # the preamble: any text, no special token (so no end of sequence)
        # a reason token: no line break, or a line break only at its end (".\n" ends the line there)
        self.reason_ok = printable & (~newline | ends_newline)
        self.reason_start_ok = printable & ~newline & torch.tensor([t.startswith(" ") for t in texts])
        self.ends_line = ends_newline
        self.newline_id = _single_token(tokenizer, "\n")

    @classmethod
    def of(cls, tokenizer, vocab_size: int) -> TokenTable:
        cache = tokenizer.__dict__.setdefault("_rlrec_token_tables", {})
        if vocab_size not in cache:
            cache[vocab_size] = cls(tokenizer, vocab_size)
        return cache[vocab_size]


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"constrained decoding needs {text!r} to be one token; this tokenizer gives {ids}")
    return ids[0]


class _Node:
    __slots__ = ("children", "ends", "under")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.ends: list[int] = []  # candidates whose title ends here
        self.under: set[int] = set()  # candidates whose title passes through here


class CandidateListDecoder:
    """A CandidateList compiled for one tokenizer: the title trie and the forced token sequences;
    `start()` gives one sample's state."""

    def __init__(
        self,
        spec: CandidateList,
        tokenizer,
        vocab_size: int,
        stop_ids: Sequence[int],
        max_new_tokens: int | None = None,
    ):
        self.spec, self.table = spec, TokenTable.of(tokenizer, vocab_size)
        self.vocab_size = vocab_size
        self.stop_ids = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
        self.root = _Node()
        for c, title in enumerate(spec.titles):
            node = self.root
            node.under.add(c)
            for tok in tokenizer.encode(title, add_special_tokens=False):
                node = node.children.setdefault(tok, _Node())
                node.under.add(c)
            node.ends.append(c)
        self.sep_ids = tokenizer.encode(spec.separator, add_special_tokens=False)
        self.header_ids = tokenizer.encode("\n" + spec.header + "\n", add_special_tokens=False)
        # the token budget: a list line costs at most its longest title, the separator, one reason token
        # and the line break; the preamble gets what the header and k such lines leave of max_new_tokens
        longest = max(len(tokenizer.encode(t, add_special_tokens=False)) for t in spec.titles)
        self.line_cost = longest + len(self.sep_ids) + 2
        self.max_new = max_new_tokens if max_new_tokens is not None else 10**9
        room = self.max_new - len(self.header_ids) - spec.lines * self.line_cost - 1
        self.preamble_budget = max(0, min(spec.max_preamble_tokens, room))
        words = spec.header.split()
        first = words[0].lower() if words else ""
        self.is_header = spec.is_header or (lambda line: line.strip().lower().startswith(first))

    def start(self) -> CandidateListState:
        return CandidateListState(self)


class CandidateListState:
    """One sample's position in the answer grammar: `allowed()` → what the next token may be,
    `advance(token)` after it is drawn."""

    def __init__(self, d: CandidateListDecoder):
        self.d = d
        self.mode = "preamble"  # preamble | forced | title | reason | end
        self.forced: list[int] = []
        self.after_forced = "title"
        self.generated = 0  # tokens drawn so far
        self.line = ""  # the preamble's current line
        self.preamble_tokens = 0
        self.node = d.root
        self.used: set[int] = set()
        self.reason_tokens = 0
        self.chosen: list[int] = []  # candidate indices, in the order named
        if d.preamble_budget == 0:  # no room for free text: the list starts at once
            self._force(d.header_ids[1:] or d.header_ids, "title")

    # -- what may come next -----------------------------------------------------------------------
    def allowed(self) -> tuple[str, torch.Tensor]:
        """("ids", LongTensor) = only these tokens; ("mask", BoolTensor (V,)) = where True;
        ("ban", LongTensor) = any token but these."""
        d = self.d
        if self.mode == "preamble":
            return "mask", d.table.free_ok
        if self.mode == "forced":
            return "ids", torch.tensor(self.forced[:1])
        if self.mode == "end":
            return "ids", d.stop_ids[:1]
        if self.mode == "title":
            ids = [t for t, child in self.node.children.items() if child.under - self.used]
            if any(c not in self.used for c in self.node.ends):
                ids.append(d.sep_ids[0])
            return "ids", torch.tensor(sorted(set(ids)), dtype=torch.long)
        # reason
        last = len(self.chosen) == self.d.spec.lines
        left = d.max_new - self.generated  # tokens still allowed, this one included
        later = (d.spec.lines - len(self.chosen)) * d.line_cost  # what the lines after this one need
        if self.reason_tokens >= d.spec.max_reason_tokens or (self.reason_tokens > 0 and left <= later + 1):
            return "ids", (d.stop_ids[:1] if last else torch.tensor([d.table.newline_id]))
        mask = (d.table.reason_start_ok if self.reason_tokens == 0 else d.table.reason_ok).clone()
        if last and self.reason_tokens > 0:
            mask[d.stop_ids] = True  # the last line may end the answer
        return "mask", mask

    # -- after a token was drawn ----------------------------------------------------------------
    def advance(self, token: int) -> None:
        d, token = self.d, int(token)
        self.generated += 1
        if self.mode == "preamble":
            self.preamble_tokens += 1
            self.line += d.table.texts[token]
            if "\n" in self.line:
                *done, self.line = self.line.split("\n")
                if any(d.is_header(x) for x in done):
                    if self.line.strip():  # the header's token ran into the next line: start it afresh
                        self._force([d.table.newline_id], "title")
                    else:
                        self.mode = "title"
                    return
            if self.preamble_tokens >= d.preamble_budget:
                self._force(d.header_ids, "title")
        elif self.mode == "forced":
            self.forced.pop(0)
            if not self.forced:
                self.mode = self.after_forced
                if self.mode == "title":
                    self.node = d.root
        elif self.mode == "title":
            child = self.node.children.get(token)
            if child is not None and child.under - self.used:
                self.node = child
                return
            # the separator's first token after a complete title
            c = next((c for c in self.node.ends if c not in self.used), None)
            if c is None:
                raise RuntimeError(f"constrained decoding: token {token} is not allowed after a partial title")
            self.used.add(c)
            self.chosen.append(c)
            rest = d.sep_ids[1:]
            self.reason_tokens = 0
            if rest:
                self._force(rest, "reason")
            else:
                self.mode = "reason"
        elif self.mode == "reason":
            self.reason_tokens += 1
            if token in d.stop_ids.tolist():
                self.mode = "end"
            elif d.table.ends_line[token]:
                self.mode, self.node = ("end" if len(self.chosen) == d.spec.lines else "title"), d.root

    def _force(self, ids: list[int], then: str) -> None:
        self.mode, self.forced, self.after_forced = "forced", list(ids), then


def apply_constraints(logits: torch.Tensor, states: Sequence[CandidateListState | None]) -> torch.Tensor:
    """Mask each row of logits (B, V) to what its state allows (None = unconstrained); in place."""
    for r, state in enumerate(states):
        if state is None:
            continue
        kind, what = state.allowed()
        row = logits[r]
        if kind == "ban":
            row[what] = float("-inf")
        elif kind == "ids":
            keep = row[what].clone()
            row.fill_(float("-inf"))
            row[what] = keep
        else:
            row.masked_fill_(~what[: row.shape[0]], float("-inf"))
    return logits


class ConstraintLogitsProcessor:
    """The same constraints for `model.generate` (a transformers logits processor): one state per
    batch row, advanced with the token generate appended since the last call."""

    def __init__(self, states: Sequence[CandidateListState | None]):
        self.states, self.started = list(states), False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.started:
            for state, tok in zip(self.states, input_ids[:, -1].tolist()):
                if state is not None and state.mode != "end":
                    state.advance(tok)
        self.started = True
        return apply_constraints(scores.clone(), self.states)
