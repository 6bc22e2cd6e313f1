"""Packaging that pyproject.toml cannot say alone: the top-level `conf/` (the config tree, the source
of truth in a checkout) ships inside the package as `rlrec/conf`, so an installed wheel runs from any
directory (`rlrec/configs.py` finds it). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["rlrec", "rlrec.*"]), "rlrec.conf"],
    package_dir={"rlrec.conf": "conf"},
    package_data={"rlrec": ["data/templates/*.j2"], "rlrec.conf": ["*.yaml", "**/*.yaml"]},
)
