"""Every `python -m rlrec.train …` command in the README, the docs, the sweeps page and the experiment
pages composes as written (each value of a multirun sweep), so a documented command never names a
config key or option that does not exist."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT

PAGES = [
    ROOT / "README.md",
    ROOT / "sweeps" / "README.md",
    *sorted((ROOT / "experiments").glob("*.md")),
    *sorted((ROOT / "docs").glob("*.md")),
]
EXAMPLES = "hydra.searchpath=[file://examples/conf]"  # docs/data.md's worked example, relative to the repository


def commands() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for line in page.read_text().splitlines():
            m = re.search(r"python -m rlrec\.train( [^`#|]*)", line)
            if m:
                out.append((page.name, m.group(1).strip()))
    return out


def arguments(command: str) -> list[str]:
    """A documented command's overrides, as far as they can be composed here: a `<placeholder>` (even
    one with spaces) and a `/data/...` path are dropped with the argument they sit in. A user's config
    folder (`--config-dir DIR`) is not on this machine, so it goes, and with it the options it adds:
    a `group=option` whose group is in conf/ but whose option is not (the user's `dataset=mydata`).

    >>> arguments("--config-dir <your conf dir> +experiment=trackrec_movielens feedback=concise seed=1")
    ['+experiment=trackrec_movielens', 'seed=1']
    >>> arguments("+experiment=x sampling.api_model=<served name> dataset.path=/data/ml-100k")
    ['+experiment=x']
    """
    command = re.sub(r"<[^<>]*>", "<placeholder>", command)  # `<your conf dir>` is one argument
    args, out = shlex.split(command), []
    user_conf = False
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--config-dir", "-cd"):
            user_conf, i = True, i + 2
            continue
        if a.startswith("--config-dir="):
            user_conf = True
        elif "<" not in a and "/data/" not in a:
            out.append(a)
        i += 1
    if user_conf:
        out = [a for a in out if not _user_option(a)]
    return out


def _user_option(arg: str) -> bool:
    """`group=option` naming a group of conf/ and an option that only a user's config folder has."""
    key, sep, value = arg.lstrip("+").partition("=")
    return bool(sep) and (CONF / key).is_dir() and "," not in value and not (CONF / key / f"{value}.yaml").exists()


def expand(args: list[str]) -> list[list[str]]:
    """A multirun's overrides → override lists that give every swept value once (comma sweeps
    expanded), each beside the other sweeps' first values: every option a sweep names is composed,
    without composing the whole product (7 backbones × 3 seeds differ in the backbone only)."""
    multirun = "-m" in args or "--multirun" in args
    args = [
        a
        for a in args
        if a not in ("-m", "--multirun") and (a.startswith("hydra.searchpath=") or not a.startswith("hydra."))
    ]
    if not multirun:
        return [args]
    choices = []
    for a in args:
        key, _, value = a.partition("=")
        swept = multirun and "," in value and not value.startswith(("[", "{"))
        choices.append([f"{key}={v}" for v in value.split(",")] if swept else [a])
    jobs = [[c[0] for c in choices]]
    for i, values in enumerate(choices):
        jobs += [[*jobs[0][:i], v, *jobs[0][i + 1 :]] for v in values[1:]]
    return jobs


def test_placeholders_and_a_user_config_folder_are_dropped():
    command = "--config-dir <your conf dir> +experiment=trackrec_movielens feedback=concise seed=1"
    assert arguments(command) == ["+experiment=trackrec_movielens", "seed=1"]
    assert arguments("--config-dir ~/my_conf dataset=mydata backbone=dcn") == ["backbone=dcn"]
    assert arguments("dataset=mydata") == ["dataset=mydata"]  # without a user folder, an unknown option must fail
    assert arguments("+experiment=x sampling.api_model=<served name> dataset.path=/data/ml-100k") == ["+experiment=x"]


def test_a_sweep_composes_each_of_its_values():
    jobs = expand(["-m", "backbone=din,dcn", "seed=1,2,3", "profile=cpu"])
    assert jobs == [["backbone=din", "seed=1", "profile=cpu"], ["backbone=dcn", "seed=1", "profile=cpu"],
                    ["backbone=din", "seed=2", "profile=cpu"], ["backbone=din", "seed=3", "profile=cpu"]]  # fmt: skip


CASES = commands()
COMPOSED: set[tuple[str, ...]] = set()  # override lists this process has composed already (pages repeat commands)


def test_the_pages_have_commands():
    assert len(CASES) >= 25 and {p for p, _ in CASES} >= {"README.md", "trackrec_movielens.md"}


@pytest.mark.parametrize(("page", "command"), CASES, ids=[f"{p}:{c[:60]}" for p, c in CASES])
def test_documented_command_composes(page, command, tmp_path):
    args = arguments(command)
    args = [f"hydra.searchpath=[file://{ROOT / 'examples' / 'conf'}]" if a == EXAMPLES else a for a in args]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in expand(args):
            if tuple(overrides) in COMPOSED:
                continue
            cfg = compose("train", overrides=[*overrides, f"output_dir={tmp_path}", f"cache_dir={tmp_path}/c"])
            OmegaConf.resolve(cfg)
            assert not OmegaConf.missing_keys(cfg), f"{page}: {command}: {overrides}: unresolved ??? values"
            COMPOSED.add(tuple(overrides))
