"""`python -m rlrec.outputs.export <run dir> [--what knowledge,vectors,pairs,adapter] [--rounds round0,round1]
[--merge] --out DIR`: a run's artifacts in formats other tools read (`rlrec/runtime/artifacts.py`).

    DIR/<round>/user.klg, item.klg          KAR's knowledge files: JSON {raw id: text}
    DIR/<round>/user_vectors.npy + .ids.json the knowledge vectors and their raw ids
    DIR/<round>/pairs.jsonl                  one group per line: prompt, chosen, rejected [..], rewards
    DIR/<round>/pairs.trl.jsonl              one row per (chosen, rejected) pair: trl's DPOTrainer format
    DIR/<round>/adapter/                     the round's LoRA adapter (a peft folder)
    DIR/<round>/merged/                      with --merge: base + adapter merged, a transformers model folder
    DIR/manifest.json                        what was exported, from which run

Every user error is one line naming the file or option and what was expected (exit code 2).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from rlrec.runtime import artifacts
from rlrec.runtime.cache import atomic_write_json
from rlrec.runtime.console import quiet_libraries
from rlrec.data.schema import DataError

WHAT = ("knowledge", "vectors", "pairs", "adapter")


def export(run_dir: str | Path, out: str | Path, what=WHAT, rounds=None, merge: bool = False) -> dict:
    """Copy (and convert) the chosen artifacts of `run_dir` into `out`; returns the written manifest."""
    unknown = sorted(set(what) - set(WHAT))
    if unknown:
        raise DataError(f"--what: unknown {unknown}; expected a comma list of {','.join(WHAT)}")
    man = artifacts.manifest(Path(run_dir))
    src, out = Path(man["dir"]), Path(out)
    names = list(man["rounds"]) if rounds is None else list(rounds)
    missing = [r for r in names if r not in man["rounds"]]
    if missing:
        raise DataError(f"--rounds: {missing} not in {src / artifacts.MANIFEST}; the run has {list(man['rounds'])}")
    written: dict = {}
    for name in names:
        entry, files = man["rounds"][name], []
        for kind in what:
            for f in artifacts.KINDS.get(kind, ()):
                if f in entry["files"]:
                    (out / name).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / name / f, out / name / f)
                    files.append(f)
        if "pairs" in what and "pairs.jsonl" in entry["files"]:
            files.append(_trl_pairs(artifacts.read_pairs(src / name / "pairs.jsonl"), out / name / "pairs.trl.jsonl"))
        if ("adapter" in what or merge) and entry.get("adapter"):
            adapter = Path(entry["adapter"])
            if not adapter.is_dir():
                raise DataError(
                    f"{src / artifacts.MANIFEST}: round {name}'s adapter {adapter} is gone (the run's "
                    "stage cache was cleared?); rerun the job to rebuild it"
                )
            if "adapter" in what:
                _copy_tree(adapter, out / name / "adapter")
                files.append("adapter/")
            if merge:
                merged(adapter, out / name / "merged", man)
                files.append("merged/")
        written[name] = {"round": entry["round"], "files": files}
    result = {
        "from": str(Path(run_dir).resolve()),
        "rounds": written,
        **{k: man.get(k) for k in ("dataset", "llm", "encoder")},
    }
    atomic_write_json(out / "manifest.json", result)
    return result


def _trl_pairs(groups: list[dict], path: Path) -> str:
    """One row per (chosen, rejected) pair, `rejected` a string: what trl's DPOTrainer reads."""
    rows = [
        {"prompt": g["prompt"], "chosen": g["chosen"], "rejected": r, "user": g.get("user")}
        for g in groups
        for r in g["rejected"]
    ]
    return artifacts.write_jsonl(path, rows)


def _copy_tree(src: Path, dst: Path) -> None:
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)


def merged(adapter: Path, dst: Path, man: dict) -> Path:
    """base + `adapter` merged into plain weights (peft `merge_and_unload`), saved with the tokenizer;
    a full fine-tune's folder is already a model and is copied."""
    if not (adapter / "adapter_config.json").is_file():
        _copy_tree(adapter, dst)
        return dst
    from hydra.utils import instantiate
    from peft import PeftModel

    from rlrec.llm.loading import load_model

    if not isinstance(man.get("llm"), dict):
        raise DataError(f"--merge: {man['dir']}/{artifacts.MANIFEST} names no base model (llm) for the adapter")
    base, tok = load_model(instantiate(man["llm"]))
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tok.save_pretrained(partial)
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlrec.outputs.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run's output dir (it holds artifacts/manifest.json)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--what", default=",".join(WHAT), help=f"comma list of {','.join(WHAT)} (default: all)")
    p.add_argument("--rounds", default=None, help="comma list of round names (default: every round)")
    p.add_argument("--merge", action="store_true", help="also write each adapter merged into the base weights")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    try:
        result = export(
            args.run_dir,
            args.out,
            [w for w in args.what.split(",") if w],
            None if args.rounds is None else args.rounds.split(","),
            args.merge,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, r in result["rounds"].items():
        print(f"{args.out}/{name}: {', '.join(r['files']) or '(nothing of --what)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
