"""Stage keys: a stage must be recomputed whenever a value it depends on changes, including values
reached through interpolation (`${profile.*}`) inside configs nested in plain dicts."""

from __future__ import annotations

from omegaconf import OmegaConf

from rlrec.cache import fingerprint


def test_nested_configs_hash_by_resolved_values():
    smoke = OmegaConf.create({"profile": {"users": 60}, "dataset": {"max_users": "${profile.users}"}})
    cpu = OmegaConf.create({"profile": {"users": 300}, "dataset": {"max_users": "${profile.users}"}})
    # the deps dicts stages build hold config nodes; their `${...}` text is identical in both runs
    assert fingerprint({"dataset": smoke.dataset}) != fingerprint({"dataset": cpu.dataset})
    assert fingerprint([smoke.dataset]) != fingerprint([cpu.dataset])
    same = OmegaConf.create({"profile": {"users": 60}, "dataset": {"max_users": 60}})
    assert fingerprint({"dataset": smoke.dataset}) == fingerprint({"dataset": same.dataset})
