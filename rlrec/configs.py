"""Where the config tree is. The checkout's top-level `conf/` is the source of truth; a wheel ships a
copy of it as the package data `rlrec/conf/` (setup.py maps it there), so `python -m rlrec.train`
and the `rlrec` command work from any directory with or without a checkout. A user's own configs
(datasets, models) extend it: `--config-dir DIR` or `hydra.searchpath=[file://DIR]`."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The config tree this rlrec runs with: the installed package's copy, else the checkout's."""
    for candidate in (_HERE / "conf", _HERE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"rlrec's config tree is missing: neither {_HERE / 'conf'} (an installed wheel) nor {_HERE.parent / 'conf'} "
        "(a checkout) holds train.yaml; reinstall rlrec"
    )
