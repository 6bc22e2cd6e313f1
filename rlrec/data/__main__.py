"""`python -m rlrec.data describe dataset=<name> [overrides...]`: counts, positive rate, split sizes.

The whole dataset is described (`dataset.max_users=null`) unless an override says otherwise; the
profiles' user subsets are a property of a run, not of the data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from rlrec.configs import conf_dir
from rlrec.data.schema import DataError
from rlrec.runtime.console import quiet_libraries


def describe(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["dataset.max_users=null", *overrides], return_hydra_config=False)
    path = cfg.dataset.get("path")
    if path and not Path(str(path)).expanduser().exists():  # before the data layer (and Lightning) is imported
        raise DataError(f"{cfg.dataset.name}: dataset.path={str(path)!r} does not exist; pass the folder of its files")
    # `cache_dir` interpolates hydra:runtime, which compose() outside a run does not set
    dm = instantiate(cfg.dataset)
    return dm.describe()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("describe",):
        print(
            "usage: python -m rlrec.data describe dataset=<name> [dataset.path=...] [split=temporal|user|reference] [--json]"
        )
        return 2
    as_json = "--json" in argv
    quiet_libraries()
    overrides = [a for a in argv[1:] if a != "--json"]
    try:
        info = describe(overrides)
    except (DataError, HydraException) as e:  # bad input: one line, exit code 2 (as every entry point)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    con = Console()
    con.print(f"[bold]{info['dataset']}[/] — {info['source']}")
    con.print(
        f"users {info['users']:,} · items {info['items']:,} (catalogue {info['catalogue_items']:,}) · "
        f"interactions {info['interactions']:,} · positive rate {info['positive_rate']:.4f} ({info['label_rule']})"
    )
    s = info["split"]
    t = Table(title=f"split={s['protocol']} ratios={s['ratios']} leakage_guard={s['leakage_guard']}")
    for col in ("split", "rows", "users", "positive rate"):
        t.add_column(col, justify="right")
    for name, v in info["split_sizes"].items():
        t.add_row(
            name,
            f"{v['rows']:,}",
            f"{v['users']:,}",
            "-" if v["positive_rate"] is None else f"{v['positive_rate']:.4f}",
        )
    con.print(t)
    con.print("fields (vocab incl. pad+OOV): " + ", ".join(f"{k}={v}" for k, v in info["fields"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
