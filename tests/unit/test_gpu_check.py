"""`benchmarks/gpu_check.py`: on a machine without a CUDA GPU it stops at once with a clear
message and exit code 2; its comparisons (loss curves, LoRA adapters) compute what they say."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_without_a_gpu_nothing_runs_and_the_exit_code_is_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: no CUDA GPU visible") and "CUDA build of torch" in err
    assert not (tmp_path / "out").exists()  # no run was started


def test_without_vllm_the_message_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert "pip install rlrec[vllm]" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA GPU")
def test_the_command_itself_exits_2_here(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 2 and "gpu_check: no CUDA GPU visible" in p.stderr and "Traceback" not in p.stderr


def _adapter(folder, b_scale=1.0, b_shift=0.0):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for m in ("q_proj", "v_proj"):
        prefix = f"base_model.model.model.layers.0.self_attn.{m}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(2, 3, generator=g)  # (r, in)
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(4, 2, generator=g) * b_scale + b_shift  # (out, r)
    (folder / "adapter").mkdir(parents=True)
    save_file(tensors, str(folder / "adapter" / "adapter_model.safetensors"))
    return tensors


def test_adapter_comparison(tmp_path):
    cpu = _adapter(tmp_path / "cpu")
    _adapter(tmp_path / "same")
    same = gpu_check.compare_adapters(tmp_path / "same", tmp_path / "cpu")
    assert same["lora_max_abs_diff"] == 0 and same["update_rel_error"] == 0
    _adapter(tmp_path / "gpu", b_scale=1.1)  # every B 10 % larger: dW = B A is 10 % larger
    diff = gpu_check.compare_adapters(tmp_path / "gpu", tmp_path / "cpu")
    assert diff["update_rel_error"] == pytest.approx(0.1, rel=1e-5)
    b_max = max(float(v.abs().max()) for k, v in cpu.items() if "lora_B" in k)
    assert diff["lora_max_abs_diff"] == pytest.approx(0.1 * b_max, rel=1e-5)
    assert diff["cpu_lora_B_max_abs"] == pytest.approx(b_max)


def test_loss_curve_and_align_stage_read_a_run(tmp_path):
    (tmp_path / "align").mkdir()
    (tmp_path / "align" / "deps.json").write_text(json.dumps({"groups": "g1", "heldout": "h1"}))
    results = {
        "curves": {"round1": [{"step": 0, "train/sdpo_loss": 0.6931, "train/margin": 0.0},
                              {"step": 1, "train/sdpo_loss": 0.69, "train/margin": 0.1}]},
        "stages": [{"stage": "score", "dir": "x"}, {"stage": "align", "dir": str(tmp_path / "align")}],
    }  # fmt: skip
    assert gpu_check.loss_curve(results) == [0.6931, 0.69]
    folder, deps = gpu_check.align_stage(results)
    assert folder == tmp_path / "align" and deps["groups"] == "g1"
