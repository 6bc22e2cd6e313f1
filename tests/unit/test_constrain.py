"""Constrained decoding (RecLAIF's answer format): whatever a random model wants to write, every
answer names only candidates, no candidate twice, at most k of them, in the list the parser reads
— on the prefix-sharing sampler and on `model.generate`, greedy and sampled, within the token
budget — while the preamble and the reasons stay free text; the server regex accepts the same
answers; constrained samples are cached apart from free ones."""

from __future__ import annotations

import re

import pytest
import torch

from rlrec.downstream.parse import is_list_header, parse_recommendation
from rlrec.llm.constrain import CandidateList, apply_constraints
from rlrec.llm.generation import Generator, SamplingConfig

EOS, PAD = 1, 0
MERGES = ["Recommended", " -", ".\n", "\n\n", "a\nb", "Heat", " (199", "ing "]  # multi-character tokens
TITLES = ("Heat (1995)", "Heat Wave (1990)", "Casino (1995)", "Fargo (1996)", "Babe (1995)")
HEADER = "Recommended Movies (from most to least likely):"


class MergeTokenizer:
    """Characters (printable ASCII and "\\n") plus a few merged tokens; greedy longest-match
    encoding, so a title has one canonical spelling and the model can still spell it otherwise."""

    eos_token_id, pad_token_id, bos_token_id = EOS, PAD, None
    all_special_ids = [PAD, EOS, 2]

    def __init__(self):
        self.vocab = ["<pad>", "</s>", "<unk>"] + ["\n"] + [chr(c) for c in range(32, 127)] + MERGES
        self.ids = {t: i for i, t in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out, i = [], 0
        while i < len(text):
            tok = max((t for t in self.vocab[3:] if text.startswith(t, i)), key=len, default=None)
            out.append(self.ids[tok] if tok else 2)
            i += len(tok) if tok else 1
        return out

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join("" if (i < 3 and skip_special_tokens) or i >= len(self) else self.vocab[i] for i in ids)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]


def tiny_llama(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    conf = LlamaConfig(
        vocab_size=vocab + 3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
        eos_token_id=EOS,
        tie_word_embeddings=False,
    )  # fmt: skip  (3 padding rows past the tokenizer, as real checkpoints have)
    return LlamaForCausalLM(conf).eval()


def spec(**kw) -> CandidateList:
    return CandidateList(TITLES, 3, HEADER, is_header=is_list_header, **{"max_preamble_tokens": 24, **kw})


PROMPTS = ["Alice likes noir films. Recommend.", "Bob", "Carol watched Heat (1995) twice."]


@pytest.mark.parametrize("engine", ["prefix", "generate"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_answer_is_a_valid_list_of_distinct_candidates(engine, temperature):
    tok = MergeTokenizer()
    gen = Generator(SamplingConfig.preset(chat=False), tiny_llama(len(tok)), tok, progress=False, engine=engine)
    c = spec()
    n = 1 if temperature == 0 else 6
    texts = gen.sample(PROMPTS, num_samples=n, temperature=temperature, top_p=0.95, max_new_tokens=160, seed=3,
                       constraints=[c] * len(PROMPTS))  # fmt: skip
    answers = [t for row in texts for t in row]
    for text in answers:
        parsed = parse_recommendation(text, list(TITLES), 3)
        assert parsed.valid and len(parsed.items) == 3, text
        assert len(set(parsed.items)) == 3
        if HEADER in text:  # the regex asks for the forced header (the sampler also takes the model's own)
            assert re.fullmatch(c.regex(), text), text  # the server regex accepts what the sampler writes
            assert text.split(HEADER)[0].strip(), "the preamble is the model's own free text"
    forced = [t for t in answers if HEADER in t]
    assert len(forced) >= len(answers) // 2
    reasons = {line.split(" -", 1)[1] for t in forced for line in t.split(HEADER + "\n")[1].splitlines() if line}
    assert len(reasons) > 1  # reasons are written by the model, not forced
    free = gen.sample(PROMPTS, num_samples=n, temperature=temperature, top_p=0.95, max_new_tokens=160, seed=3)
    assert not any(parse_recommendation(t, list(TITLES), 3).valid for row in free for t in row)


def test_a_short_budget_still_ends_in_a_valid_list():
    """max_new_tokens leaves room for the header and two lines only: the preamble shrinks to fit,
    reasons are cut, and the answer is valid (fewer than k items)."""
    tok = MergeTokenizer()
    gen = Generator(SamplingConfig.preset(chat=False), tiny_llama(len(tok)), tok, progress=False)
    header = len(tok.encode("\n" + HEADER + "\n"))
    budget = header + 2 * (len(tok.encode("Heat Wave (1990)")) + 3) + 2
    records = gen.sample_records(
        PROMPTS,
        num_samples=4,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=budget,
        seed=0,
        constraints=[spec()] * len(PROMPTS),
    )
    for row in records:
        for s in row:
            parsed = parse_recommendation(s.text, list(TITLES), 3)
            assert parsed.valid and 1 <= len(parsed.items) <= 3, s.text
            assert s.n_tokens <= budget


def feed(state, tok, text):
    for t in tok.encode(text):
        assert state.allowed()[0] != "ids" or t in state.allowed()[1].tolist(), (text, tok.vocab[t], state.mode)
        state.advance(t)


def test_the_state_machine_follows_the_answer_grammar():
    tok = MergeTokenizer()
    d = spec(max_preamble_tokens=100).compile(tok, len(tok) + 3, [EOS])
    s = d.start()
    kind, mask = s.allowed()  # the preamble is free text but cannot end the answer
    assert kind == "mask" and mask[tok.ids["a"]] and mask[tok.ids["\n"]] and not mask[EOS] and not mask[-1]
    feed(s, tok, "Likes crime.\n- Preference 1: tense\n")
    assert s.mode == "preamble"
    feed(s, tok, "**Recommended Movies:**\n")  # the model's own header, as the parser reads it
    assert s.mode == "title"
    kind, ids = s.allowed()
    assert kind == "ids" and sorted(tok.vocab[i] for i in ids.tolist()) == ["B", "C", "F", "Heat"]
    feed(s, tok, "Heat")  # "Heat (1995)" and "Heat Wave (1990)" share it
    assert sorted(tok.vocab[i] for i in s.allowed()[1].tolist()) == [" ", " (199"]
    feed(s, tok, " (1995) - tense\n")
    assert s.chosen == [0] and s.mode == "title"
    feed(s, tok, "Heat")
    assert [tok.vocab[i] for i in s.allowed()[1].tolist()] == [" "]  # "Heat (1995)" is taken
    feed(s, tok, " Wave (1990) -")
    kind, mask = s.allowed()
    assert kind == "mask" and mask[tok.ids[" "]] and not mask[tok.ids["a"]]  # a reason starts with a space
    feed(s, tok, " sunny")
    _, mask = s.allowed()
    assert mask[tok.ids[".\n"]] and not mask[tok.ids["a\nb"]] and not mask[EOS]  # one line; not the last one
    feed(s, tok, ".\nFargo (1996) - cold")
    _, mask = s.allowed()
    assert mask[EOS]  # the k-th line may end the answer
    feed(s, tok, "\n")
    assert s.mode == "end" and s.allowed()[1].tolist() == [EOS] and s.chosen == [0, 1, 3]


def test_the_preamble_budget_forces_the_header():
    tok = MergeTokenizer()
    d = spec(max_preamble_tokens=5).compile(tok, len(tok) + 3, [EOS])
    s = d.start()
    feed(s, tok, "abcde")
    assert s.mode == "forced"
    while s.mode == "forced":
        s.advance(s.allowed()[1].item())
    assert s.mode == "title"
    no_room = spec().compile(tok, len(tok) + 3, [EOS], max_new_tokens=len(d.header_ids) + 3 * d.line_cost)
    assert no_room.preamble_budget == 0 and no_room.start().mode == "forced"


def test_apply_constraints_masks_rows_in_place():
    tok = MergeTokenizer()
    d = spec().compile(tok, len(tok) + 3, [EOS])
    title = d.start()
    title.mode = "title"
    logits = torch.zeros(3, len(tok) + 3)
    apply_constraints(logits, [None, d.start(), title])
    assert torch.isfinite(logits[0]).all()  # free row untouched
    assert logits[1, EOS] == float("-inf") and torch.isfinite(logits[1]).sum() == len(tok) - 3  # no specials
    allowed = torch.isfinite(logits[2]).nonzero().squeeze(-1).tolist()
    assert sorted(tok.vocab[i] for i in allowed) == ["B", "C", "F", "Heat"]


def test_regex_spells_out_orders_and_falls_back_when_too_many():
    c = CandidateList(("A", "B", "C"), 2, "H:")
    assert re.fullmatch(c.regex(), "pre\nH:\nB - x\nA - y")
    assert not re.fullmatch(c.regex(), "pre\nH:\nB - x\nB - y")
    assert not re.fullmatch(c.regex(), "pre\nH:\nD - x\nA - y")
    many = CandidateList(tuple(f"T{i}" for i in range(30)), 4, "H:")  # 657,720 orders: repeats allowed
    assert re.fullmatch(many.regex(), "p\nH:\nT1 - a\nT1 - b\nT2 - c\nT3 - d")


def test_bad_specs_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="at least one candidate"):
        CandidateList((), 3, HEADER)
    with pytest.raises(ValueError, match="k must be"):
        CandidateList(TITLES, 0, HEADER)
    with pytest.raises(ValueError, match="single lines"):
        CandidateList(("a\nb",), 1, HEADER)


def test_constrained_samples_are_cached_apart_from_free_ones(tmp_path):
    tok = MergeTokenizer()
    gen = Generator(SamplingConfig.preset(chat=False), tiny_llama(len(tok)), tok, "tiny", tmp_path, progress=False)
    c = [spec()] * len(PROMPTS)
    first = gen.sample(PROMPTS, num_samples=2, max_new_tokens=120, seed=1, constraints=c)
    free = gen.sample(PROMPTS, num_samples=2, max_new_tokens=120, seed=1)
    assert first != free and gen.last_stats.cached == 0
    again = gen.sample(PROMPTS, num_samples=2, max_new_tokens=120, seed=1, constraints=c)
    assert again == first and gen.last_stats.cached == len(PROMPTS) * 2
    other = gen.sample(PROMPTS, num_samples=2, max_new_tokens=120, seed=1, constraints=[spec(max_reason_tokens=3)] * 3)
    assert gen.last_stats.cached == 0 and other != first
    with pytest.raises(ValueError, match="one per prompt"):
        gen.sample(PROMPTS, num_samples=2, constraints=c[:1])
