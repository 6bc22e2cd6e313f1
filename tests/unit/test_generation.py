"""Generation: the prefix-sharing sampler reproduces the model (greedy = HF generate; sampled
tokens follow softmax(logits / T) within the top-p nucleus), the disk cache makes reruns free and
killed runs resumable, and the openai / vllm backends speak their protocols. Tiny random Llamas
with a character tokenizer: nothing downloaded."""

from __future__ import annotations

import doctest
import importlib
import sys

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from rlrec.llm.backends import lora_merged
from rlrec.llm.chat import format_chat
from rlrec.llm.gencache import GenerationCache
from rlrec.llm.generation import Generator, SamplingConfig
from rlrec.llm.nucleus import top_p_keep
from rlrec.llm.sampler import Job, PrefixSharingSampler

V = 64
EOS, PAD = 1, 0


class CharTokenizer:
    """One token per character (ids 3..V-1), EOS=1, PAD=0; decode maps ids to letters."""

    eos_token_id, pad_token_id, bos_token_id = EOS, PAD, None
    chat_template = "<role>content"

    def __init__(self, vocab: int = V):
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [3 + ord(c) % (self.vocab - 3) for c in text]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join("#" if i < 3 else chr(33 + i % 90) for i in ids if not (skip_special_tokens and i < 3))

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def tiny_llama(vocab: int = V, heads: int = 4, kv_heads: int = 2, seed: int = 0, sharpen: float = 1.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    conf = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=kv_heads, max_position_embeddings=512, pad_token_id=PAD, eos_token_id=EOS,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(conf).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)  # random logits are nearly flat; sharpen for top-p tests
    return model


PROMPTS = ["Alice likes noir films.", "Bob", "Carol watched Heat (1995) twice and loved it.", "Dan hates musicals."]


def count_calls(model) -> list[int]:
    """Counts model forwards (prefill and decode steps both embed their input tokens)."""
    calls = [0]
    model.get_input_embeddings().register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def hf_greedy(model, tok, text: str, max_new: int) -> str:
    ids = torch.tensor([tok(text)["input_ids"]])
    out = model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=PAD, eos_token_id=EOS)
    return tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


# ----------------------------------------------------------------------------- chat


def test_format_chat_uses_template_or_falls_back_to_raw_text():
    tok = CharTokenizer()
    assert format_chat(tok, "hi") == "<user>hi<assistant>"
    assert format_chat(tok, "hi", system="S") == "<system>S<user>hi<assistant>"

    class NoTemplate:
        chat_template = None

    assert format_chat(NoTemplate(), "hi") == "hi"
    assert format_chat(NoTemplate(), "hi", system="S") == "S\n\nhi"


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_greedy_matches_hf_generate_and_is_deterministic(kv_heads):
    model, tok = tiny_llama(kv_heads=kv_heads, sharpen=4.0), CharTokenizer()
    gen = Generator(SamplingConfig.preset(batch_size=2), model, tok, progress=False)  # 2 slots: refills mid-run
    a = gen.greedy(PROMPTS, max_new_tokens=12)
    assert a == gen.greedy(PROMPTS, max_new_tokens=12)
    assert a == [hf_greedy(model, tok, format_chat(tok, p), 12) for p in PROMPTS]
    fallback = Generator(SamplingConfig.preset(), model, tok, progress=False, engine="generate")
    assert fallback.greedy(PROMPTS, max_new_tokens=12) == a


def test_greedy_with_a_lora_adapter_matches_hf_generate():
    from peft import LoraConfig, get_peft_model

    tok = CharTokenizer()
    lora = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_llama(sharpen=4.0), lora).eval()
    plain = Generator(SamplingConfig.preset(), tiny_llama(sharpen=4.0), tok, progress=False).greedy(
        PROMPTS[:2], max_new_tokens=10
    )
    ours = Generator(SamplingConfig.preset(), model, tok, progress=False).greedy(PROMPTS[:2], max_new_tokens=10)
    assert ours == [hf_greedy(model, tok, format_chat(tok, p), 10) for p in PROMPTS[:2]]
    assert ours != plain  # the adapter is live in the fast decode path


def test_lora_merged_samples_the_adapted_model_and_restores_the_base_weights_exactly():
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_llama(sharpen=4.0), lora).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 9, 17, 30, 4]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with lora_merged(model) as n:
            merged = model(input_ids=ids).logits
            assert n == 8  # 2 layers x q, k, v, o
            base = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
            assert not torch.equal(base, before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
        after = model(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)  # the same function, one matmul each
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit for bit
    assert torch.equal(after, adapted)
    with model.disable_adapter(), lora_merged(model) as n:  # adapters off: nothing merged
        assert n == 0
    with lora_merged(tiny_llama()) as n:  # a plain model passes through
        assert n == 0


def test_samples_do_not_depend_on_batch_composition():
    model, tok = tiny_llama(), CharTokenizer()
    kw = dict(num_samples=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    big = Generator(SamplingConfig.preset(batch_size=64), model, tok, progress=False).sample(PROMPTS, **kw)
    small = Generator(SamplingConfig.preset(batch_size=3), model, tok, progress=False).sample(
        PROMPTS, **kw
    )  # one prompt at a time
    assert big == small
    assert len(big) == len(PROMPTS) and all(len(row) == 3 for row in big)
    assert len({t for row in big for t in row}) > len(PROMPTS)  # samples differ from each other
    assert Generator(SamplingConfig.preset(), model, tok, progress=False).sample(PROMPTS, **{**kw, "seed": 8}) != big


def test_kv_cache_cap_keeps_fewer_prompts_in_flight_and_the_same_texts():
    from rlrec.llm.sampler import Job, PrefixSharingSampler

    model, tok = tiny_llama(), CharTokenizer()
    kw = dict(num_samples=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3)
    free = Generator(SamplingConfig.preset(kv_cache_gb=None), model, tok, progress=False).sample(PROMPTS, **kw)
    capped = Generator(SamplingConfig.preset(kv_cache_gb=1e-5), model, tok, progress=False).sample(PROMPTS, **kw)
    assert capped == free
    ids = [tok(format_chat(tok, p))["input_ids"] for p in PROMPTS]
    for cap, slots in ((None, 64), (1e-5, None)):
        sampler = PrefixSharingSampler(model, [EOS], batch_size=128, kv_cache_gb=cap)
        sampler.run([Job(i, [1, 2]) for i in ids], 1.0, 1.0, 8, lambda done: None)
        per_slot = sampler.k_pre[:, 0].numel() * 4 * 2 + sampler.k_suf[:, 0].numel() * 4 * 2  # k and v, fp32
        if slots is not None:
            assert sampler.k_pre.shape[1] == slots  # batch_size // n
        else:
            assert sampler.k_pre.shape[1] == max(1, int(cap * 2**30 // per_slot)) < 64


def _reference_probs(model, prompt_ids, temperature, top_p) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0, -1]
    p = torch.softmax(logits / temperature, -1)
    vals, ids = p.sort(descending=True)
    keep = top_p_keep(vals[None], top_p)[0]
    q = torch.zeros_like(p)
    q[ids[keep]] = vals[keep]
    return (q / q.sum()).double().numpy()


def _check_distribution(tokens: np.ndarray, q: np.ndarray) -> None:
    counts = np.bincount(tokens, minlength=len(q))
    assert counts[q == 0].sum() == 0, f"tokens outside the top-p nucleus: {np.nonzero(counts * (q == 0))}"
    support = q > 0
    tv = 0.5 * np.abs(counts / counts.sum() - q).sum()
    expected = q[support] / q[support].sum() * counts.sum()
    p_value = chisquare(counts[support], expected).pvalue
    assert tv < 0.05 and p_value > 1e-4, (tv, p_value)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.6)])
def test_sampled_tokens_follow_the_policy_distribution(temperature, top_p):
    """First tokens (from the prefill logits) and second tokens (from the sampler's own decode
    forward, conditioned on the most frequent first token) against softmax(logits / T) of the HF
    model, truncated to the top-p nucleus."""
    vocab, n = 16, 6000
    model = tiny_llama(vocab=vocab, sharpen=10.0)
    prompt = [3, 7, 11, 5, 9, 4, 12]
    seeds = [int(s) for s in np.random.default_rng(0).integers(0, 2**63, size=n)]
    got = {}
    sampler = PrefixSharingSampler(model, stop_ids=[EOS], batch_size=n)
    sampler.run(
        [Job(prompt, seeds, list(range(n)))],
        temperature,
        top_p,
        2,
        lambda d: got.update({f.tag: f.token_ids for f in d}),
    )
    first = np.array([got[i][0] for i in range(n)])
    q1 = _reference_probs(model, prompt, temperature, top_p)
    assert 0.05 < q1.max() < 0.95  # a distribution worth testing
    assert (q1 > 0).sum() == (vocab if top_p == 1.0 else 3)  # top_p=0.6 keeps 3 of 16 tokens here
    _check_distribution(first, q1)

    values, counts = np.unique(first[first != EOS], return_counts=True)
    t1 = int(values[counts.argmax()])
    second = np.array([got[i][1] for i in range(n) if got[i][0] == t1])
    assert len(second) > 500
    _check_distribution(second, _reference_probs(model, [*prompt, t1], temperature, top_p))


# ----------------------------------------------------------------------------- cache


def test_cache_rerun_calls_no_model_and_keys_on_the_adapter(tmp_path):
    model, tok = tiny_llama(), CharTokenizer()
    calls = count_calls(model)
    kw = dict(num_samples=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=1)
    gen = Generator(
        SamplingConfig.preset(), model, tok, "tiny-fp", tmp_path, progress=True
    )  # the bar must not break anything
    first = gen.sample(PROMPTS, **kw)
    assert calls[0] > 0 and gen.last_stats.generated == 12 and gen.last_stats.new_tokens > 0
    before = calls[0]

    again = Generator(
        SamplingConfig.preset(), model, tok, "tiny-fp", tmp_path, progress=False
    )  # a fresh process, same cache
    assert again.sample(PROMPTS, **kw) == first
    assert calls[0] == before and again.last_stats.cached == 12 and again.last_stats.generated == 0
    assert again.sample(PROMPTS[:2], **{**kw, "num_samples": 2}) == [row[:2] for row in first[:2]]  # a prefix of N
    assert calls[0] == before

    again.adapter_fingerprint = "round1"  # new weights: new samples
    again.sample(PROMPTS, **kw)
    assert calls[0] > before and again.last_stats.generated == 12
    after = calls[0]
    again.sample(PROMPTS, **kw, adapter_fingerprint="base")  # per-call override: cached
    assert calls[0] == after
    assert len(GenerationCache(tmp_path / "generations.sqlite")) == 24


class Killed(Exception):
    pass


def test_killed_run_resumes_with_only_the_missing_samples(tmp_path):
    model, tok = tiny_llama(), CharTokenizer()
    kw = dict(num_samples=2, temperature=1.0, top_p=0.95, max_new_tokens=6, seed=3)
    reference = Generator(SamplingConfig.preset(), model, tok, progress=False).sample(PROMPTS, **kw)

    def kill(done, total):
        raise Killed(f"killed after {done}/{total}")

    gen = Generator(
        SamplingConfig.preset(batch_size=2), model, tok, "tiny-fp", tmp_path, progress=False
    )  # one prompt at a time
    with pytest.raises(Killed):
        gen.sample(PROMPTS, **kw, callback=kill)
    committed = gen.last_stats.generated
    assert 0 < committed < 8
    assert len(GenerationCache(tmp_path / "generations.sqlite")) == committed

    calls = count_calls(model)
    resumed = Generator(SamplingConfig.preset(batch_size=2), model, tok, "tiny-fp", tmp_path, progress=False)
    assert resumed.sample(PROMPTS, **kw) == reference  # same texts as one uninterrupted run
    assert resumed.last_stats.cached == committed and resumed.last_stats.generated == 8 - committed
    assert calls[0] > 0


def test_cache_needs_a_model_fingerprint(tmp_path):
    with pytest.raises(ValueError, match="model_fingerprint"):
        Generator(SamplingConfig.preset(), tiny_llama(), CharTokenizer(), None, tmp_path)


# openai backend: tests/unit/test_openai_backend.py


# ----------------------------------------------------------------------------- vllm, config


def test_vllm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install rlrec\[vllm\]"):
        Generator(SamplingConfig.preset(backend="vllm"), "some/model", None)


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="hf"):
        Generator(SamplingConfig.preset(backend="nope"), tiny_llama(), CharTokenizer())


def test_the_yaml_declares_the_sampling_defaults_and_a_generator_follows_them(tmp_path):
    """One declaration: `preset()` is conf/sampling/default.yaml as a run instantiates it (seed aside),
    and a Generator takes N, the length and the seed from its config unless a call overrides them."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    tree = OmegaConf.create({"seed": 5, "sampling": OmegaConf.load(CONF / "sampling" / "default.yaml")})
    assert instantiate(tree.sampling) == SamplingConfig.preset(seed=5)
    with pytest.raises(TypeError):
        SamplingConfig(temperature=1.0)  # no second set of defaults in the code
    cfg = SamplingConfig.preset(num_samples=3, max_new_tokens=4)
    gen = Generator(cfg, tiny_llama(), CharTokenizer(), "fp", tmp_path, progress=False)
    out = gen.sample_records(PROMPTS[:1])
    assert len(out) == 1 and len(out[0]) == 3 and all(s.n_tokens <= 4 for s in out[0])
    assert [s.text for s in out[0]] == gen.sample(PROMPTS[:1], seed=0)[0]  # the config's seed is 0
    assert gen.sample(PROMPTS[:1], num_samples=2)[0] == [s.text for s in out[0][:2]]  # a prefix of N
    with pytest.raises(TypeError):
        gen.sample(PROMPTS[:1], n=2)  # a typo is not silently ignored


@pytest.mark.parametrize("module", ["rlrec.llm.nucleus", "rlrec.llm.chat", "rlrec.llm.length"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_prompts_sharing_a_long_prefix_prefill_it_once_and_still_match_hf():
    model, tok = tiny_llama(sharpen=4.0), CharTokenizer()
    header = "Here is a list of movies that a user has watched: "  # > MIN_COMMON_PREFIX tokens
    prompts = [header + p for p in PROMPTS]
    gen = Generator(SamplingConfig.preset(batch_size=4), model, tok, progress=False)
    assert gen.greedy(prompts, max_new_tokens=8) == [hf_greedy(model, tok, format_chat(tok, p), 8) for p in prompts]
    assert gen.last_stats.backend_calls == 1 + len(prompts) + 7  # common prefix, 4 prompts, 7 decode steps
