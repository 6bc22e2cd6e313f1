"""The `rlrec` command (installed with the package): one front door to the entry points.

rlrec train [+experiment=...] [overrides] [-m]    = python -m rlrec.train
rlrec export <run dir> --out DIR [...]            = python -m rlrec.outputs.export
rlrec describe dataset=<name> [...]               = python -m rlrec.data describe
rlrec report <dir>                                = python -m rlrec.outputs.report
"""

from __future__ import annotations

import sys

COMMANDS = ("train", "export", "describe", "report")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip().split("\n\n", 1)[1], file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    command, rest = argv[0], argv[1:]
    if command == "train":  # Hydra reads sys.argv itself
        from rlrec import train

        sys.argv = ["rlrec train", *rest]
        train.main()
        return 0
    if command == "export":
        from rlrec.outputs import export

        return export.main(rest)
    if command == "describe":
        from rlrec.data.__main__ import main as describe

        return describe(["describe", *rest])
    from rlrec.outputs.report import main as report

    return report(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
