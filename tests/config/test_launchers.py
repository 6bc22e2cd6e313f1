"""Hydra launcher presets: `hydra/launcher=joblib | submitit_local | submitit_slurm | slurm_llm |
slurm_cpu` compose, and each job's torch threads follow the launcher."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlrec.train import launcher_threads
from tests.conftest import CONF

SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _launcher(name: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")))
def test_slurm_presets_extend_submitit_slurm(name):
    launcher = _launcher(name)
    assert launcher["_target_"] == SLURM and launcher["tasks_per_node"] == 1  # one pipeline process per job
    assert launcher["cpus_per_task"] >= 1 and launcher["mem_gb"] >= 1 and launcher["timeout_min"] >= 1
    assert launcher["submitit_folder"].startswith("${hydra.sweep.dir}")  # the plugin's fields are all there


def test_llm_preset_asks_for_a_gpu_and_the_cpu_preset_for_none():
    llm, cpu = _launcher("slurm_llm"), _launcher("slurm_cpu")
    assert llm["gpus_per_node"] == 1 and cpu["gpus_per_node"] is None
    assert llm["mem_gb"] > cpu["mem_gb"] and llm["timeout_min"] > cpu["timeout_min"]
    assert _launcher("slurm_llm", "hydra.launcher.gpus_per_node=4")["gpus_per_node"] == 4


def test_threads_per_job_follow_the_launcher():
    joblib = _launcher("joblib", "hydra.launcher.n_jobs=2")
    assert launcher_threads(2, joblib, ["backbone=din"], cpus=2) == 1  # two jobs on 2 cores: 1 thread each
    assert launcher_threads(2, joblib, [], cpus=8) == 2  # room for the configured 2
    assert launcher_threads(2, _launcher("joblib"), [], cpus=2) == 1  # n_jobs=-1: one job per core
    assert launcher_threads(2, _launcher("slurm_cpu"), [], cpus=64) == 4  # the job's cpus_per_task
    assert launcher_threads(2, _launcher("slurm_llm"), [], cpus=64) == 8
    assert launcher_threads(3, _launcher("slurm_cpu"), ["threads=3"], cpus=64) == 3  # explicit wins
    assert launcher_threads(2, _launcher("submitit_local"), [], cpus=2) == 2  # no cpus_per_task: unchanged
    assert launcher_threads(2, _launcher("submitit_local", "hydra.launcher.cpus_per_task=1"), [], cpus=2) == 1
    assert launcher_threads(2, _launcher("basic"), [], cpus=2) == 2  # the sequential default launcher
