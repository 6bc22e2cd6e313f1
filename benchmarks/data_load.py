"""Loading a large table dataset: a seeded 1,000,000-row interactions file (with users and items
tables) as CSV and as parquet, each run through `python -m rlrec.data describe` in a fresh process
(read, map, label, split, index the features), with its wall time and peak memory. The baseline,
measured in the same run: pandas `read_csv` of the same interactions file alone (no mapping,
labels, split or features), so the ratio shows what the whole load costs over a bare parse.

    python benchmarks/data_load.py --rows 1000000 --out benchmarks/results/data_load.md

Runs one process at a time (two heavy processes on two cores slow each other).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def write_dataset(folder: Path, rows: int, users: int, items: int, seed: int = 0) -> None:
    """Interactions with Zipf-like item popularity, ratings 1-5, one timestamp per row; users with
    two categorical features and an age; items with a title, a genre list and a year."""
    rng = np.random.default_rng(seed)
    inter = pd.DataFrame(
        {
            "user": rng.integers(1, users + 1, rows),
            "item": np.minimum(rng.zipf(1.3, rows), items),
            "stars": rng.integers(1, 6, rows),
            "ts": 946684800 + rng.integers(0, 10 * 365 * 86400, rows),
        }
    )
    user_frame = pd.DataFrame(
        {
            "user": np.arange(1, users + 1),
            "gender": rng.choice(["f", "m"], users),
            "region": rng.choice([f"r{i}" for i in range(20)], users),
            "age": rng.integers(16, 80, users),
        }
    )
    genres = np.array(["drama", "comedy", "action", "horror", "sci-fi", "romance"])
    item_frame = pd.DataFrame(
        {
            "item": np.arange(1, items + 1),
            "name": [f"Item {i}" for i in range(1, items + 1)],
            "genres": ["|".join(rng.choice(genres, rng.integers(1, 4), replace=False)) for _ in range(items)],
            "year": rng.integers(1950, 2024, items),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (("interactions", inter), ("users", user_frame), ("items", item_frame)):
        frame.to_csv(folder / f"{name}.csv", index=False)
        frame.to_parquet(folder / f"{name}.parquet", index=False)


def overrides(folder: Path, form: str) -> list[str]:
    return [
        "dataset=table",
        f"dataset.path={folder}",
        "dataset.name=bench",
        f"dataset.loader.interactions.file=interactions.{form}",
        "dataset.loader.interactions.user=user",
        "dataset.loader.interactions.item=item",
        "dataset.loader.interactions.rating=stars",
        "dataset.loader.interactions.timestamp=ts",
        f"++dataset.loader.users={{file: users.{form}, id: user, features: {{gender: categorical, region: categorical, age: numeric}}}}",
        f"++dataset.loader.items={{file: items.{form}, id: item, title: name, features: {{genres: multi, year: numeric}}}}",
    ]


def describe(folder: Path, form: str) -> dict:
    """`python -m rlrec.data describe` in a fresh process: its JSON plus the process's wall time."""
    cmd = [sys.executable, "-m", "rlrec.data", "describe", *overrides(folder, form), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"describe failed ({form}):\n{out.stderr[-2000:]}")
    return {**json.loads(out.stdout), "wall_seconds": round(wall, 2)}


def pandas_read(folder: Path) -> dict:
    """The baseline: pandas parses the interactions CSV, nothing else (a fresh process)."""
    code = (
        "import time, resource, pandas as pd; t=time.perf_counter(); "
        f"df=pd.read_csv({str(folder / 'interactions.csv')!r}); "
        "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20, len(df))"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    seconds, peak, n = out.stdout.split()
    return {"read_seconds": float(seconds), "wall_seconds": round(wall, 2), "peak_rss_gb": float(peak), "rows": int(n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None, help="write a markdown result file here")
    args = ap.parse_args()
    from ctr_peer import cpu_model, git_commit

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_dataset(folder, args.rows, args.users, args.items)
        sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
        print(f"wrote {args.rows:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
        base = pandas_read(folder)
        results = {form: describe(folder, form) for form in ("csv", "parquet")}
    commit = git_commit()
    head = (
        f"{datetime.date.today()}, commit {commit}, {cpu_model()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}"
    )
    lines = [
        "# Loading a 1M-row table dataset",
        "",
        head,
        "",
        f"`python benchmarks/data_load.py --rows {args.rows} --users {args.users} --items {args.items}`",
        "",
        "| form | rows | users | items | describe wall (s) | load + label + split + index (s) | peak RSS (GB) | file MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for form, r in results.items():
        mb = sizes[f"interactions.{form}"] / 2**20
        lines.append(
            f"| {form} | {r['interactions']:,} | {r['users']:,} | {r['items']:,} | {r['wall_seconds']:.1f} | "
            f"{r['load_seconds']:.1f} | {r['peak_rss_gb']:.2f} | {mb:.0f} |"
        )
    lines += [
        "",
        f"Baseline in the same run: pandas `read_csv` of the interactions CSV alone, {base['read_seconds']:.1f} s "
        f"({base['wall_seconds']:.1f} s with the interpreter), peak {base['peak_rss_gb']:.2f} GB. "
        f"Ratio of rlrec's whole CSV load to that bare parse: "
        f"{results['csv']['load_seconds'] / base['read_seconds']:.2f}×.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(
        json.dumps(
            {
                "baseline": base,
                **{
                    k: {kk: v[kk] for kk in ("wall_seconds", "load_seconds", "peak_rss_gb")} for k, v in results.items()
                },
            }
        )
    )
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
