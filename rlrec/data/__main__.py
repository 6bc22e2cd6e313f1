"""`python -m rlrec.data describe dataset=<name> [overrides...]`: counts, positive rate, split sizes,
load time and peak memory. `python -m rlrec.data write dataset=<name> --format csv|parquet|recbole
--out DIR`: the dataset as the files a user brings (`docs/data.md`).

The whole dataset is described (`dataset.max_users=null`) unless an override says otherwise; the
profiles' user subsets are a property of a run, not of the data."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from rich.console import Console
from rich.table import Table

from rlrec.configs import conf_dir
from rlrec.data.schema import DataError
from rlrec.runtime.console import quiet_libraries
from rlrec.runtime.memory import peak_rss_gb


def _dataset(overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["dataset.max_users=null", *overrides], return_hydra_config=False)
    path = cfg.dataset.get("path")
    if path and str(path) != "???" and not Path(str(path)).expanduser().exists():  # before the data layer loads
        raise DataError(f"{cfg.dataset.name}: dataset.path={str(path)!r} does not exist; pass the folder of its files")
    return cfg.dataset


def describe(overrides: list[str]) -> dict:
    t0 = time.perf_counter()
    dm = instantiate(_dataset(overrides))
    info = dm.describe()
    return {
        **info,
        "load_seconds": round(dm.setup_seconds, 2),  # read, map, label, split, index
        "seconds": round(time.perf_counter() - t0, 2),  # + the data layer's imports and describe's counts
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }


def write(overrides: list[str], form: str, out: str) -> list[Path]:
    from rlrec.data.table import write_files

    data = instantiate(_dataset(overrides).loader)()
    return write_files(data, Path(out), form)


def _option(argv: list[str], name: str) -> str | None:
    if name in argv and argv.index(name) + 1 < len(argv):
        return argv[argv.index(name) + 1]
    return next((a.split("=", 1)[1] for a in argv if a.startswith(name + "=")), None)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("describe", "write"):
        print(
            "usage: python -m rlrec.data describe dataset=<name> [dataset.path=...] [split=temporal|user|reference] [--json]\n"
            "       python -m rlrec.data write dataset=<name> --format csv|parquet|recbole --out DIR"
        )
        return 2
    as_json = "--json" in argv
    quiet_libraries()
    flags = {"--json", "--format", "--out", _option(argv, "--format"), _option(argv, "--out")}
    overrides = [a for a in argv[1:] if a not in flags and not a.startswith(("--format=", "--out="))]
    try:
        if argv[0] == "write":
            form, out = _option(argv, "--format"), _option(argv, "--out")
            if not form or not out:
                raise DataError("write needs --format csv|parquet|recbole and --out DIR")
            for path in write(overrides, form, out):
                print(path)
            return 0
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
    con.print(
        f"read, labelled, split and indexed in {info['load_seconds']:.1f} s ({info['seconds']:.1f} s with imports); "
        f"peak memory {info['peak_rss_gb']:.2f} GB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
