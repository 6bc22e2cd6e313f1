"""Stage keys: a stage must be recomputed whenever a value it depends on changes, including values
reached through interpolation (`${profile.*}`) inside configs nested in plain dicts."""

from __future__ import annotations

from omegaconf import OmegaConf

from rlrec.runtime.cache import fingerprint


def test_nested_configs_hash_by_resolved_values():
    smoke = OmegaConf.create({"profile": {"users": 60}, "dataset": {"max_users": "${profile.users}"}})
    cpu = OmegaConf.create({"profile": {"users": 300}, "dataset": {"max_users": "${profile.users}"}})
    # the deps dicts stages build hold config nodes; their `${...}` text is identical in both runs
    assert fingerprint({"dataset": smoke.dataset}) != fingerprint({"dataset": cpu.dataset})
    assert fingerprint([smoke.dataset]) != fingerprint([cpu.dataset])
    same = OmegaConf.create({"profile": {"users": 60}, "dataset": {"max_users": 60}})
    assert fingerprint({"dataset": smoke.dataset}) == fingerprint({"dataset": same.dataset})


def test_the_code_version_follows_what_the_code_does_not_how_it_reads(tmp_path):
    from rlrec.runtime.cache import code_version

    base = {"scale.py": '"""Scales."""\n\ndef scale(x):\n    """Twice x."""\n    return 2 * x\n',
            "data/load.py": "def load():\n    return []\n"}  # fmt: skip

    def version(name, edits=None):  # a copy of the package with `edits` ({file: text}) applied
        for rel, text in {**base, **(edits or {})}.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text(text)
        return code_version(tmp_path / name)

    v0 = version("v0")
    assert len(v0) == 12 and version("again") == v0
    # a comment, a docstring, a reformatting: the same code
    assert version("doc", {"scale.py": '"""Scales by two."""\n# eq. 3\ndef scale( x ):\n    return 2*x\n'}) == v0
    # presentation modules (tables, plots, CLIs) never compute a stage's output
    assert version("report", {"outputs/report.py": "def table():\n    return 'x'\n"}) == v0
    # what the code computes, in any module: a new version
    assert version("scale", {"scale.py": "def scale(x):\n    return 3 * x\n"}) != v0
    assert version("load", {"data/load.py": "def load():\n    return [0]\n"}) != v0


def test_changed_code_rebuilds_a_stage_and_a_pinned_version_reuses_it(tmp_path, monkeypatch):
    from rlrec.runtime import cache
    from rlrec.runtime.store import Store

    builds = []

    def build(work):
        builds.append(1)
        return {"n": len(builds)}

    store = Store(tmp_path)
    assert store.stage("fit", {"a": 1}, build).data == {"n": 1}
    assert store.stage("fit", {"a": 1}, build).cached
    monkeypatch.setattr(cache, "_tree_hash", lambda root: "other-code")  # the package's code changed
    art = Store(tmp_path).stage("fit", {"a": 1}, build)
    assert not art.cached and art.data == {"n": 2}
    monkeypatch.setenv(cache.CODE_VERSION, "v1")  # pinned by hand: reused while it stays pinned
    assert not Store(tmp_path).stage("fit", {"a": 1}, build).cached
    assert Store(tmp_path).stage("fit", {"a": 1}, build).cached and len(builds) == 3
