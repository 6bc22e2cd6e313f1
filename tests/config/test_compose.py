"""Config tree: every experiment/option composes, resolves, and every `_target_` imports."""

from __future__ import annotations

import importlib

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlrec.data.schema import DataError
from tests.conftest import CONF

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUPS = sorted(
    p.name
    for p in CONF.iterdir()
    if p.is_dir() and p.name not in ("experiment", "hydra") and any(p.glob("*.yaml"))
)


def _compose(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train", overrides=[*overrides, f"output_dir={tmp_path}", f"cache_dir={tmp_path}/cache"]
        )


def _targets(node, path=""):
    if OmegaConf.is_dict(node):
        for k, v in node.items_ex(resolve=False):
            if k == "_target_":
                yield path, v
            else:
                yield from _targets(v, f"{path}.{k}")
    elif OmegaConf.is_list(node):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def _import(target: str):
    module, _, attr = target.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_resolves(experiment, tmp_path):
    cfg = _compose([f"+experiment={experiment}"], tmp_path)
    OmegaConf.resolve(cfg)
    missing = OmegaConf.missing_keys(cfg)
    assert not missing, f"{experiment}: unresolved ??? at {sorted(missing)}"
    assert cfg.experiment_name == experiment
    for path, target in _targets(cfg):
        assert callable(_import(target)), f"{experiment}: {path}._target_={target} does not import"


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group, tmp_path):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        cfg = _compose([f"{group}={option}"], tmp_path)
        OmegaConf.resolve(cfg)
        for path, target in _targets(cfg):
            assert callable(_import(target)), f"{group}={option}: {path}._target_={target} does not import"


@pytest.mark.parametrize("override", ["dataset=nope", "backbone=nope"])
def test_unknown_option_lists_valid_ones(override, tmp_path):
    group = override.split("=")[0]
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as e:
        _compose([override], tmp_path)
    msg = str(e.value)
    assert f"Could not find '{group}/nope'" in msg and "Available options" in msg
    assert ("movielens100k" if group == "dataset" else "din") in msg


def test_experiment_not_in_primary_defaults():
    text = (CONF / "train.yaml").read_text()
    defaults = OmegaConf.load(CONF / "train.yaml").defaults
    assert not any("experiment" in (d if isinstance(d, str) else next(iter(d))) for d in defaults), text


@pytest.mark.parametrize("dataset", ["movielens1m", "amazon_books", "amazon_beauty", "lastfm", "esci"])
def test_dataset_needing_a_path_says_so(dataset, tmp_path):
    cfg = _compose([f"dataset={dataset}"], tmp_path)
    dm = instantiate(cfg.dataset)
    with pytest.raises(DataError, match="dataset.path"):
        dm.setup()


def test_synthetic_builds_feature_spec_before_models(tmp_path):
    cfg = _compose(["dataset=synthetic"], tmp_path)
    dm = instantiate(cfg.dataset)
    spec = dm.feature_spec
    assert spec.num_users == 200 and spec.num_items == 300
    assert [f.name for f in spec.fields][:1] == ["user_id"]


def test_teacher_and_judge_llms_are_group_overrides(tmp_path):
    """Any configured LLM can be the distillation teacher or the judge; the policy stays the default."""
    cfg = _compose(["+experiment=reclaif_movielens", "+llm@alignment.distill.teacher=qwen2_5_7b",
                    "llm@feedback.strategy.llm=llama3_1_8b"], tmp_path)  # fmt: skip
    assert cfg.alignment.distill.teacher.name == "qwen2_5_7b"
    assert cfg.feedback.strategy.llm.name == "llama3_1_8b" and cfg.llm.name == "smollm2_135m"
    judge = instantiate(cfg.feedback.strategy)  # a partial: the task comes from the pipeline
    assert judge.keywords["mode"] == "logits" and judge.keywords["llm"].name == "llama3_1_8b"
