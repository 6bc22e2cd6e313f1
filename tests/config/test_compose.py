"""Config tree: every experiment/option composes, resolves, and every `_target_` imports."""

from __future__ import annotations

import importlib

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlrec.data.schema import DataError
from rlrec.feedback.ensemble import build_feedback
from tests.conftest import CONF

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUPS = sorted(
    p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra") and any(p.glob("*.yaml"))
)


def _compose(overrides, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"output_dir={tmp_path}", f"cache_dir={tmp_path}/cache"])


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
    assert cfg.experiment_name == cfg.task_name == experiment  # the run's name is derived, never set twice
    for path, target in _targets(cfg):
        assert callable(_import(target)), f"{experiment}: {path}._target_={target} does not import"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _instantiate(group: str, cfg, tmp_path):
    """Build the group's node the way the run does: plain nodes by `instantiate`, the two axes and
    distillation as partials called with a context on synthetic data (nothing heavy is loaded)."""
    node = cfg.get(group)
    if node is None or group in ("profile", "callbacks"):  # profiles only set other nodes' values
        return node
    if group == "trainer" and node.accelerator != "cpu" and not torch.cuda.is_available():
        if str(node.get("strategy")).startswith(("fsdp", "deepspeed")):  # GPU strategies: a registered name
            from pytorch_lightning.strategies import StrategyRegistry

            assert node.strategy in StrategyRegistry, f"trainer.strategy={node.strategy} is not a Lightning strategy"
            return node
        return instantiate(node, accelerator="cpu", devices=1, precision="32-true", sync_batchnorm=False)
    if group == "trainer":  # as Context.trainer_node builds it: precision=auto resolved for this machine
        from rlrec.runtime.precision import resolve

        return instantiate(node, precision=resolve(node.precision, "ctr", node.accelerator))
    obj = instantiate(node) if group not in ("feedback", "gold") else None  # `ensemble` is build_feedback's
    if group in ("downstream", "feedback", "distill", "gold"):
        from rlrec.context import Context

        ctx = Context(cfg, tmp_path / "run")
        downstream = instantiate(cfg.downstream)(ctx=ctx)
        if group in ("feedback", "gold"):  # as run.py builds it: one member or an ensemble
            return build_feedback(cfg[group], ctx, downstream)
        obj = downstream if group == "downstream" else obj(ctx=ctx)
    return obj


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_instantiates(group, tmp_path):
    """A new yaml in any group is tested without editing a list."""
    for option in _options(group):
        cfg = _compose([f"{group}={option}", "dataset=synthetic", "llm=tiny_random"] if group != "dataset"
                       else [f"{group}={option}"], tmp_path)  # fmt: skip
        OmegaConf.resolve(cfg)
        for path, target in _targets(cfg):
            assert callable(_import(target)), f"{group}={option}: {path}._target_={target} does not import"
        obj = _instantiate(group, cfg, tmp_path)
        assert obj is not None or group in ("distill", "profile") or option == "none", f"{group}={option} built nothing"


@pytest.mark.parametrize("axis", ["downstream", "feedback"])
def test_every_profile_bundle_composes_with_its_axis_option(axis, tmp_path):
    """profile/<axis>/<profile>_<option>.yaml: the per-paper scale knobs of each profile."""
    for path in sorted((CONF / "profile" / axis).glob("*.yaml")):
        profile, option = path.stem.split("_", 1)
        assert option in _options(axis), f"{path.name}: no {axis} option {option!r}"
        base = _compose([f"profile={profile}", f"{axis}={option}"], tmp_path)
        bundle = OmegaConf.load(path)
        bundle.pop("defaults", None)  # another bundle it builds on (checked on its own)
        for key in OmegaConf.to_container(bundle):  # every key it sets is a key of the composed config
            assert key in base, f"{path.name} sets {key!r}, which the config does not have"
        for dotted, value in _leaves(bundle):
            assert OmegaConf.select(base, dotted) == value, f"{path.name}: {dotted} not applied"


PAPERS = {  # the papers' settings (sampling N, rounds T, β, lr, epochs, LoRA or full fine-tuning)
    "trackrec_movielens": (["llm=qwen2_5_7b", "encoder=bert_base"], 10, 3, 0.1, 1e-5, 1, False),
    "dpo4rec_movielens": (["llm=llama3_1_8b", "encoder=bert_base"], 10, 3, 0.01, 5e-6, 3, True),
    "reclaif_movielens": (["llm=mistral_7b"], 2, 4, 0.1, 5e-5, 1, True),
}


@pytest.mark.parametrize("experiment", sorted(PAPERS))
def test_profile_paper_gives_each_paper_its_settings(experiment, tmp_path):
    groups, n, t, beta, lr, epochs, lora = PAPERS[experiment]
    cfg = _compose([f"+experiment={experiment}", "profile=paper", *groups], tmp_path)
    P = cfg.preference
    assert (cfg.sampling.num_samples, cfg.align.rounds, P.task.beta, P.task.optimizer.lr, P.max_epochs) == (
        n, t, beta, lr, epochs)  # fmt: skip
    assert (P.task.lora is not None) == lora
    assert cfg.llm.name == groups[0].split("=")[1]
    if experiment.startswith("reclaif"):
        assert cfg.feedback.mode == "generate"  # the paper's judge writes its verdict


def _leaves(node, prefix=""):
    if OmegaConf.is_dict(node):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], OmegaConf.to_container(node) if OmegaConf.is_list(node) else node


def test_two_axes_combine_without_code(tmp_path):
    """A judge scoring knowledge texts, a recommender reward for the LLM as recommender: any
    feedback with any downstream builds from config alone."""
    from rlrec.context import Context

    for downstream, feedback in (("ctr", "judge"), ("recommend", "recommender"), ("rerank", "validator")):
        cfg = _compose([f"downstream={downstream}", f"feedback={feedback}", "dataset=synthetic", "llm=tiny_random"],
                       tmp_path)  # fmt: skip
        ctx = Context(cfg, tmp_path / "run")
        d = instantiate(cfg.downstream)(ctx=ctx)
        f = build_feedback(cfg.feedback, ctx, d)
        assert hasattr(f, "score") and hasattr(f, "refit") and isinstance(f.key, str)
        user = int(d.train_users[0])
        assert isinstance(d.context(user, "train")["history"], list)
        if feedback == "judge":  # the judge compares two of this downstream's texts with its template
            prompt = f.judge_prompt(user, "likes westerns", "likes musicals")
            assert "Option A: likes westerns" in prompt and "Option B: likes musicals" in prompt
            assert "Chosen Option:" in prompt and d.view.history(user)[0]["title"] in prompt


def test_n_has_one_name(tmp_path):
    """N is sampling.num_samples and nothing else; an override reaches it in every experiment."""
    for experiment in EXPERIMENTS:
        cfg = _compose([f"+experiment={experiment}", "sampling.num_samples=7"], tmp_path)
        assert cfg.sampling.num_samples == 7
        text = OmegaConf.to_yaml(cfg)
        assert "num_samples: 7" in text
    for path in CONF.rglob("*.yaml"):
        body = path.read_text()
        assert "alignment." not in body and "${profile." not in body, f"{path}: a stale config name"


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
    cfg = _compose(["dataset=synthetic", "profile=smoke"], tmp_path)
    dm = instantiate(cfg.dataset)
    spec = dm.feature_spec
    assert spec.num_users == 60 and spec.num_items == 300  # the smoke profile keeps 60 of the 200 users
    cpu = _compose(["dataset=synthetic"], tmp_path)  # profile=cpu: the positive control's scale
    assert (cpu.dataset.loader.num_users, cpu.dataset.loader.num_items, cpu.align.users) == (400, 600, 288)
    assert [f.name for f in spec.fields][:1] == ["user_id"]


def test_teacher_and_judge_llms_are_group_overrides(tmp_path):
    """Any configured LLM can be the distillation teacher or the judge; the policy stays the default."""
    cfg = _compose(["+experiment=reclaif_movielens", "distill=teacher", "llm@distill.teacher=qwen2_5_7b",
                    "llm@feedback.llm=llama3_1_8b"], tmp_path)  # fmt: skip
    assert cfg.distill.teacher.name == "qwen2_5_7b" and cfg.distill.require_valid is True
    assert cfg.feedback.llm.name == "llama3_1_8b" and cfg.llm.name == "smollm2_135m"
    assert cfg.downstream.rater.llm.name == "llama3_1_8b"  # explainability is rated by the judge's LLM
    judge = instantiate(cfg.feedback)  # a partial: the downstream comes from the run
    assert judge.keywords["mode"] == "logits" and judge.keywords["llm"].name == "llama3_1_8b"


def test_every_knob_has_one_name(tmp_path):
    """No knob is an alias of another: a downstream's early-stopping patience is its own value (a
    re-ranker's is `rerank.patience`), the initial ranker trains by `rerank.ranker_fit` (not the
    table's optimizer unless an experiment says so), the run's name is the experiment's."""
    for experiment in EXPERIMENTS:
        assert "task_name" not in (CONF / "experiment" / f"{experiment}.yaml").read_text()
    ctr = _compose(["+experiment=trackrec_movielens"], tmp_path)
    assert ctr.downstream.patience == 2 and not OmegaConf.is_interpolation(ctr.downstream, "patience")
    assert "early_stopping_patience" not in ctr
    for rerank in _options("rerank"):
        cfg = _compose(["+experiment=dpo4rec_movielens", f"rerank={rerank}"], tmp_path)
        assert "patience" not in cfg.downstream and cfg.rerank.patience >= 1
        assert cfg.rerank.ranker_fit.optimizer.lr == 1e-3 and cfg.optimizer.lr == 5e-4  # two optimisers, two nodes
    assert "retry_samples" in _compose(["+experiment=reclaif_movielens"], tmp_path).distill
