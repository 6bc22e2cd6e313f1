"""`trainer.precision=auto` (rlrec.runtime.precision): the probe's decision and cache, and bf16 autocast
staying within tolerance of fp32 where rlrec uses it — the S-DPO loss and its LoRA gradients,
the sampler's next-token distribution, and a CTR backbone's AUC."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from rlrec.llm.data import PreferenceDataset
from rlrec.runtime import precision
from rlrec.tasks.preference import PreferenceTask
from tests.unit.test_preference import LORA, CharTokenizer, loader, pref_examples, tiny_llama


def fake_measure(speedups: dict):
    calls = []

    def measure():
        calls.append(1)
        return {w: {"fp32_ms": 1.0, "bf16_ms": 1.0 / s, "speedup": s} for w, s in speedups.items()}

    return measure, calls


def test_auto_picks_bf16_per_workload_by_the_measured_speedup_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.delenv(precision.PINNED)  # the probe decides, as on a user's machine
    measure, calls = fake_measure({"llm": 1.6, "ctr": 0.9})
    monkeypatch.setattr(precision, "measure", measure)
    assert precision.resolve("auto", "llm", "cpu", tmp_path) == "bf16-mixed"
    assert precision.resolve("auto", "ctr", "cpu", tmp_path) == "32-true"
    assert len(calls) == 1  # measured once for this machine kind, then read from the cache
    (cached,) = (tmp_path / "precision").glob("*.json")
    saved = json.loads(cached.read_text())
    assert saved["workloads"]["llm"]["speedup"] == 1.6 and saved["cpu"] == precision.cpu_identity()["cpu"]
    # another machine kind (other threads count) measures again
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    precision.resolve("auto", "llm", "cpu", tmp_path)
    assert len(calls) == 2 and len(list((tmp_path / "precision").glob("*.json"))) == 2


def test_auto_needs_a_clear_win_and_explicit_values_pass_through(tmp_path, monkeypatch):
    monkeypatch.delenv(precision.PINNED)  # the probe decides, as on a user's machine
    monkeypatch.setattr(precision, "measure", fake_measure({"llm": precision.MIN_SPEEDUP - 0.01, "ctr": 3.0})[0])
    assert precision.resolve("auto", "llm", "cpu", tmp_path) == "32-true"
    assert precision.resolve("auto", "ctr", "cpu", tmp_path) == "bf16-mixed"
    assert precision.resolve("32-true", "ctr", "cpu", tmp_path) == "32-true"
    assert precision.resolve("bf16-mixed", "llm", "cpu", tmp_path) == "bf16-mixed"
    with pytest.raises(ValueError, match="workload"):
        precision.resolve("auto", "vision", "cpu", tmp_path)


def test_one_name_per_precision():
    for spellings, name in (((32, "32", "32-true"), "32-true"), (("bf16", "bf16-mixed"), "bf16-mixed"),
                            ((16, "16", "16-mixed"), "16-mixed"), ((64, "64", "64-true"), "64-true"),
                            (("bf16-true",), "bf16-true"), (("16-true",), "16-true"), (("auto",), "auto")):  # fmt: skip
        assert {precision.normalise(s) for s in spellings} == {name}
        assert all(precision.resolve(s, "ctr") == name for s in spellings if s != "auto")
    with pytest.raises(ValueError, match="trainer.precision='fp8'.*expected auto or one of 32"):
        precision.normalise("fp8")


def test_a_pinned_auto_never_probes(tmp_path, monkeypatch):
    measure, calls = fake_measure({"llm": 3.0, "ctr": 3.0})
    monkeypatch.setattr(precision, "measure", measure)
    monkeypatch.setenv(precision.PINNED, "32")
    assert precision.resolve("auto", "llm", "cpu", tmp_path) == precision.resolve("auto", "ctr", "cpu", tmp_path) \
        == "32-true"  # fmt: skip
    monkeypatch.setenv(precision.PINNED, "llm=bf16")  # one workload pinned, the other probed
    assert precision.resolve("auto", "llm", "cpu", tmp_path) == "bf16-mixed" and calls == []
    assert precision.resolve("auto", "ctr", "cpu", tmp_path) == "bf16-mixed" and calls == [1]
    assert precision.resolve("bf16-true", "ctr", "cpu", tmp_path) == "bf16-true"  # explicit values win
    monkeypatch.setenv(precision.PINNED, "vision=bf16")
    with pytest.raises(ValueError, match="RLREC_PRECISION_AUTO.*vision"):
        precision.resolve("auto", "ctr", "cpu", tmp_path)


def test_machine_kind_names_what_the_probe_runs(monkeypatch):
    from rlrec.layers import compiled

    ident = precision.cpu_identity()
    assert ident["probe"] == precision.PROBE_VERSION and ident["compiled_kernels"] == compiled.enabled()
    monkeypatch.setattr(compiled, "_state", {"enabled": not compiled.enabled()})
    assert precision.cpu_identity()["compiled_kernels"] != ident["compiled_kernels"]  # another kind


def test_measure_times_both_workloads():
    step = {"rows": 64, "d_in": 8, "hidden": 4, "batch": 16, "mlp_in": 8, "mlp_dims": (8,)}
    out = precision.measure(shapes={"llm": [(8, 16, 16)]}, repeats=2, ctr_step=step)
    assert set(out) == {"llm", "ctr"}
    for v in out.values():
        assert v["fp32_ms"] > 0 and v["bf16_ms"] > 0
        assert v["speedup"] == pytest.approx(v["fp32_ms"] / v["bf16_ms"], rel=1e-2)


def test_context_resolves_auto_into_every_trainer_and_key(tmp_path, monkeypatch):
    monkeypatch.delenv(precision.PINNED)  # the probe decides, as on a user's machine
    from omegaconf import OmegaConf

    from rlrec.context import Context

    monkeypatch.setattr(precision, "measure", fake_measure({"llm": 2.0, "ctr": 1.0})[0])
    monkeypatch.setenv("RLREC_PRECISION_CACHE", str(tmp_path))  # never the machine's own probe file
    cfg = OmegaConf.create({"seed": 1, "cache_dir": str(tmp_path), "threads": 1,
                            "trainer": {"accelerator": "cpu", "devices": 1, "precision": "auto"}})  # fmt: skip
    ctx = Context(cfg, tmp_path / "out")
    assert ctx.llm_trainer.trainer["precision"] == ctx.llm_precision == "bf16-mixed"
    assert ctx.trainer.trainer["precision"] == "32-true"
    assert ctx.llm_trainer_key["precision"] == "bf16-mixed" and ctx.trainer_key["precision"] == "32-true"
    assert "eval_precision" not in ctx.trainer_key  # fp32 keys are what they were
    monkeypatch.setattr(precision, "measure", fake_measure({"llm": 2.0, "ctr": 2.0})[0])
    monkeypatch.setenv("RLREC_PRECISION_CACHE", str(tmp_path / "other"))
    bf16 = Context(cfg, tmp_path / "out2").trainer_key
    assert bf16["precision"] == "bf16-mixed" and bf16["eval_precision"] == "32-true"  # new key under bf16


def _sdpo_loss_and_grads(autocast: bool, cast_frozen: bool = False):
    ds = PreferenceDataset(pref_examples(4, seed=5, k=3), CharTokenizer())
    task = PreferenceTask(tiny_llama(seed=3), loss="sdpo", beta=0.5, lora=LORA)
    frozen = [p for p in task.parameters() if not p.requires_grad]
    before = [p.detach().clone() for p in frozen]
    low = precision.low_precision_weights(task, torch.bfloat16 if cast_frozen else None, frozen_only=True)
    with low:
        with precision.autocast("bf16-mixed" if autocast else "32-true"):  # as fit_preference does
            task.precompute_reference(loader(ds))
        with torch.no_grad():  # move off the zero-margin point so the loss and gradients are generic
            for n, p in task.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.05)
        if cast_frozen:  # the base weights are bf16 copies, the adapters stay fp32 Parameters
            assert {p.dtype for p in task.parameters() if p.requires_grad} == {torch.float32}
            assert task.model.get_base_model().lm_head.weight.dtype == torch.bfloat16
        batch = ds.collate([ds[i] for i in range(4)])
        with precision.autocast("bf16-mixed" if autocast else "32-true"):
            loss, _ = task.step(batch)
        loss.mean().backward()
    assert all(a is b for a, b in zip(frozen, [p for p in task.parameters() if not p.requires_grad]))
    assert all(torch.equal(p, b) for p, b in zip(frozen, before))  # the fp32 base weights are back
    grads = torch.cat([p.grad.flatten() for n, p in task.model.named_parameters() if p.grad is not None])
    return loss.detach(), grads


def test_frozen_weights_cast_once_give_autocasts_loss_and_gradients():
    """A LoRA fit under bf16 autocast with its frozen base weights cast once (`low_precision_weights`,
    `rlrec.tasks.llm.frozen_weights_cast`): the loss and the adapters' gradients equal autocast's own casts."""
    loss, grads = _sdpo_loss_and_grads(True)
    loss_c, grads_c = _sdpo_loss_and_grads(True, cast_frozen=True)
    assert torch.equal(loss_c, loss) and torch.equal(grads_c, grads)


def test_sdpo_loss_and_lora_gradients_under_bf16_autocast_match_fp32():
    loss32, g32 = _sdpo_loss_and_grads(False)
    loss16, g16 = _sdpo_loss_and_grads(True)
    assert loss32.dtype == loss16.dtype == torch.float32  # log-probs are upcast before the loss
    assert torch.allclose(loss16, loss32, atol=0.01), (loss16, loss32)
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cos > 0.99 and (g16.norm() / g32.norm() - 1).abs() < 0.05, (cos, g16.norm(), g32.norm())


def test_sampler_under_bf16_autocast_keeps_the_next_token_distribution_and_its_own_cache_keys(tmp_path):
    from rlrec.llm.generation import Generator, SamplingConfig

    model, tok = tiny_llama(seed=4), CharTokenizer()
    tok.decode = lambda ids, skip_special_tokens=True: "".join(chr(97 + i % 26) for i in ids)
    ids = torch.tensor([tok("user abc likes")["input_ids"]])
    with torch.no_grad():
        p32 = model(input_ids=ids).logits[0, -1].softmax(-1)
        with precision.autocast("bf16-mixed"):
            p16 = model(input_ids=ids).logits[0, -1].float().softmax(-1)
    assert (p16 - p32).abs().sum() < 0.05  # total variation of the next-token distribution

    gens = {p: Generator(SamplingConfig.preset(chat=False), model, tok, "tiny", tmp_path / p, progress=False, precision=p)
            for p in ("32-true", "bf16-mixed")}  # fmt: skip
    out = {
        p: g.sample(["user abc likes", "user xyz hates"], num_samples=3, max_new_tokens=6, seed=1)
        for p, g in gens.items()
    }
    assert {len(row) for rows in out.values() for row in rows} == {3}
    assert gens["bf16-mixed"].backend.name == "hf-bf16-mixed-kv16" and gens["32-true"].backend.name == "hf"
    exact = Generator(
        SamplingConfig.preset(kv_dtype="float32"),
        model,
        tok,
        "tiny",
        tmp_path / "x",
        progress=False,
        precision="bf16-mixed",
    )
    assert exact.backend.name == "hf-bf16-mixed"  # an fp32 cache's texts keep their earlier keys


@pytest.mark.parametrize("prompt", ["user abc likes", "u"])
@pytest.mark.parametrize("kv", ["auto", "float32"])
def test_sampler_under_bf16_autocast_keeps_a_bf16_kv_cache_and_the_next_token_distribution(kv, prompt):
    """kv_dtype=auto: under bf16 autocast keys and values are stored in bf16 (half the bytes at the
    same slots); every decode step's next-token distribution stays within a small total variation
    of the fp32 model's on the same tokens (`float32` keeps an fp32 cache)."""
    from rlrec.llm.sampler import Job, PrefixSharingSampler
    from tests.unit.test_generation import CharTokenizer as Chars
    from tests.unit.test_generation import tiny_llama as sharp_llama

    model, tok = sharp_llama(seed=4, sharpen=4.0), Chars()  # peaked logits: TV means something
    ids = tok(prompt)["input_ids"]
    sampler = PrefixSharingSampler(model, [10**6], batch_size=8, kv_cache_gb=None, kv_dtype=kv)
    logits, forward = [], sampler._forward_rows
    sampler._forward_rows = lambda *a: logits.append(forward(*a)) or logits[-1]
    out = []
    with precision.autocast("bf16-mixed"):
        sampler.run([Job(ids, [7])], 0.0, 1.0, 6, lambda fs: out.extend(f.token_ids for f in fs))
    assert sampler.k_pre.dtype == sampler.v_suf.dtype == (torch.bfloat16 if kv == "auto" else torch.float32)
    assert sampler.k_pre.shape[1] == 8  # batch_size // n slots, whatever the dtype
    assert len(out[0]) == 6 and len(logits) == 5  # token 1 from the prefill, then one step per token
    for t, step in enumerate(logits):  # the fp32 model, no cache, on the same tokens
        with torch.no_grad():
            p32 = model(input_ids=torch.tensor([ids + out[0][: t + 1]])).logits[0, -1].softmax(-1)
        assert (step[0].float().softmax(-1) - p32).abs().sum() < 0.05, t


def fit_auc(tiny_prep, precision_: str) -> float:
    """DeepFM fitted by Lightning at `precision_` on a planted task (clicked iff the item id is
    even), its AUC on the same rows: bf16 must learn what fp32 learns."""
    import pytorch_lightning as pl

    from rlrec.data.ctr import TensorBatches, ctr_tensors
    from rlrec.tasks.ctr import CTRTask
    from tests.unit.test_backbones import build

    t = ctr_tensors(tiny_prep, "train")
    t["label"] = (t["item"] % 2 == 0).float()
    task = CTRTask(build("deepfm", tiny_prep.spec, seed=0), optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2))
    pl.seed_everything(0, verbose=False)
    pl.Trainer(max_epochs=15, accelerator="cpu", precision=precision_, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(task, TensorBatches(t, 64, shuffle=True))  # fmt: skip
    with torch.no_grad():
        scores = task.eval()(t).float().numpy()
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(t["label"].numpy(), scores))


def test_ctr_fit_under_bf16_mixed_reaches_the_fp32_auc(tiny_prep):
    auc32 = fit_auc(tiny_prep, "32-true")
    auc16 = fit_auc(tiny_prep, "bf16-mixed")
    assert auc32 > 0.8, auc32  # the task is learnable, so the comparison means something
    assert abs(auc16 - auc32) < 0.02 and np.isfinite(auc16), (auc16, auc32)


def test_eval_steps_score_in_fp32_under_bf16_autocast(tiny_prep):
    """CTR and re-rank evaluation forwards run with autocast off inside a bf16-mixed step: the
    scores that AUC and NDCG rank are the fp32 model's, not bf16's 8-bit ones (ties)."""
    from rlrec.data.ctr import ctr_tensors
    from rlrec.data.rerank import kar_lists
    from rlrec.tasks.ctr import CTRTask
    from rlrec.tasks.rerank import RerankTask
    from tests.unit.test_backbones import build
    from tests.unit.test_rerankers import build as build_reranker

    batch = ctr_tensors(tiny_prep, "train")
    task = CTRTask(build("din", tiny_prep.spec, seed=0), optimizer=torch.optim.Adam).eval()
    with torch.no_grad():
        want = task.model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            coarse = task.model(batch)
            task._eval_step(batch, "test")
    got = task._outputs["test"][0][1]
    assert coarse.dtype == torch.bfloat16 and not torch.equal(coarse.float(), want)  # bf16 would differ
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    lists = kar_lists(tiny_prep, "train", chunk=3, list_len=6, seed=0).tensors()
    ranker = RerankTask(build_reranker("setrank", tiny_prep.spec), optimizer=torch.optim.Adam).eval()
    with torch.no_grad():
        want = ranker.model(lists)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not torch.equal(ranker.model(lists).float(), want)
            ranker._eval_step(lists, "test")
    torch.testing.assert_close(ranker._outputs["test"][0][0], want, rtol=0, atol=0)


def test_cast_linear_weights_gives_autocasts_outputs_and_restores_the_parameters():
    """The block's forwards equal plain bf16 autocast's bit for bit (the same rounding, done once);
    on exit every module holds its original fp32 Parameter objects with unchanged values; a weight
    tied between two linears is cast once and shared; fp32 precision swaps nothing."""
    model = tiny_llama(seed=3)
    lin = torch.nn.Linear(32, 32, bias=True)
    tied = torch.nn.Sequential(lin, torch.nn.Linear(32, 32))
    tied[1].weight = lin.weight
    before = {n: (p, p.detach().clone()) for n, p in [*model.named_parameters(), *tied.named_parameters()]}
    ids = torch.tensor([[5, 9, 3, 7, 2, 11]])
    x = torch.randn(4, 32)
    with torch.inference_mode():
        with precision.autocast("bf16-mixed"):
            want, want_tied = model(input_ids=ids).logits, tied(x)
        with precision.cast_linear_weights(model, "bf16-mixed"), precision.cast_linear_weights(tied, "bf16-mixed"):
            assert model.lm_head.weight.dtype == torch.bfloat16
            assert model.model.embed_tokens.weight.dtype == torch.float32  # embeddings are not linears
            assert tied[0].weight is tied[1].weight and tied[0].bias.dtype == torch.bfloat16
            got, got_tied = model(input_ids=ids).logits, tied(x)
        with precision.cast_linear_weights(model, "32-true"):
            assert model.lm_head.weight.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_tied, want_tied)
    for n, p in [*model.named_parameters(), *tied.named_parameters()]:
        assert p is before[n][0] and torch.equal(p, before[n][1]), n
    assert tied[0].weight is tied[1].weight


def test_last_logits_are_the_last_positions_logits_with_left_padding_and_a_cache():
    """…and the cache goes back in under the installed transformers' own keyword (no deprecation
    warning: a deprecated keyword would be dropped silently once it is removed)."""
    from rlrec.llm.logps import cache_of, last_logits, with_cache

    model = tiny_llama(seed=5)
    ids = torch.tensor([[0, 0, 5, 9, 3], [4, 8, 6, 2, 7]])
    mask = (ids != 0).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        got, out = last_logits(model, ids, attention_mask=mask, position_ids=pos, use_cache=True)
        assert got.shape == (2, model.config.vocab_size) and torch.allclose(got, want, atol=1e-5)
        # continuing from the returned cache gives the full sequence's last logits
        nxt = torch.tensor([[3], [1]])
        step, _ = last_logits(model, nxt, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                              position_ids=pos[:, -1:] + 1, **with_cache(cache_of(out)))  # fmt: skip
        full = model(input_ids=torch.cat([ids, nxt], 1), attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                     position_ids=torch.cat([pos, pos[:, -1:] + 1], 1)).logits[:, -1]  # fmt: skip
    assert torch.allclose(step, full, atol=1e-5)

    class Full(torch.nn.Module):  # a model that ignores logits_to_keep
        def forward(self, input_ids, logits_to_keep=None):
            return type("Out", (), {"logits": torch.arange(input_ids.numel() * 3.0).view(*input_ids.shape, 3)})()

    got, _ = last_logits(Full(), torch.zeros(2, 4, dtype=torch.long))
    assert torch.equal(got, torch.tensor([[9.0, 10, 11], [21, 22, 23]]))
