"""`benchmarks/gemm_peak.py`: the FLOP counts the LLM benchmarks divide by the GEMM peak, checked by
hand on a tiny Llama, and the peak itself a positive rate that a larger matmul does not undercut."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gemm_peak", ROOT / "benchmarks" / "gemm_peak.py")
gemm_peak = importlib.util.module_from_spec(spec)
sys.modules["gemm_peak"] = gemm_peak  # its dataclass resolves annotations through sys.modules
spec.loader.exec_module(gemm_peak)


def test_flops_from_the_model_shapes():
    cfg = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    shapes = gemm_peak.llm_shapes(LlamaForCausalLM(cfg))
    kv = 16 // 4 * 2  # 2 key/value heads of width 4
    per_layer = 16 * 16 + 2 * 16 * kv + 16 * 16 + 3 * 16 * 32  # q, k + v, o, gate + up + down
    assert shapes.linear_params == 2 * per_layer
    assert (shapes.layers, shapes.hidden, shapes.vocab) == (2, 16, 100)
    token = lambda ctx: 2 * 2 * per_layer + 4 * 2 * 16 * ctx  # noqa: E731
    head = 2 * 16 * 100
    assert shapes.prefill([3]) == pytest.approx(3 * token(2) + head)  # 3 tokens, mean causal context 2
    assert shapes.decode(5, 10.0) == pytest.approx(5 * (token(10) + head))
    forward = 4 * token(2.5) + 2 * 3 * (token(4 + 2) + head)  # prompt 4, two responses of 3
    assert shapes.preference_pair(4, 3, negatives=1) == pytest.approx(3 * forward)


def test_the_gemm_peak_is_a_rate_and_fractions_divide_by_it():
    peak = gemm_peak.gemm_peak(torch.float32, threads=1, n=128, reps=3)
    assert peak > 1e8  # any CPU multiplies 128×128 fp32 matrices faster than 0.1 GFLOP/s
    line = gemm_peak.fraction_line("decode", 2e9, 2.0, {"fp32": 4e9}, "bf16")
    assert line == "fraction of peak, decode: 1.0 GFLOP/s = 0.250 of the fp32 GEMM peak (4.0 GFLOP/s)"
