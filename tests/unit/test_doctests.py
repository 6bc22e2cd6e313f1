"""Every doctest in the package runs (the examples in docstrings are tests too). A module whose
source has examples must have run some, so an import path that silently finds none fails."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import rlrec

MODULES = sorted(m.name for m in pkgutil.walk_packages(rlrec.__path__, "rlrec.") if not m.name.endswith("__main__"))


def _has_examples(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None and ">>> " in open(spec.origin).read()


WITH_EXAMPLES = [m for m in MODULES if _has_examples(m)]


def test_the_package_has_doctests_to_run():
    assert len(WITH_EXAMPLES) >= 15, WITH_EXAMPLES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has examples in its source but none ran"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
