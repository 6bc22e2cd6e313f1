#!/usr/bin/env bash
# The FuxiCTR peer of `ctr_peer.py --peer fuxictr`, kept out of git:
#   benchmarks/.venv-fuxictr/   virtualenv with torch==2.13.0 (the same as rlrec's side) and fuxictr==2.3.10
#   benchmarks/.fuxictr-src/    FuxiCTR's model_zoo/ at the commit below, plus COMMIT (its hash)
# The PyPI wheel has the library (layers, BaseModel, FeatureMap) but not the models: DIN, DIEN,
# DeepFM, DCN, AutoInt, FiBiNET and FiGNN live in the repository's model_zoo/<Model>/src/, which
# `_fuxictr_side.py` imports from .fuxictr-src.
#
#   bash benchmarks/setup_fuxictr.sh                    # clones github.com/reczoo/FuxiCTR
#   FUXICTR_GIT_DIR=/path/to/FuxiCTR/.git bash benchmarks/setup_fuxictr.sh   # a local clone (bare or not)
#
# torch is pinned: an unpinned torch would pull a multi-GB CUDA build instead of the CPU wheel.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version=2.3.10
commit="${FUXICTR_COMMIT:-0245987fdc1d43c36164ea496a02324885a8557a}"  # fuxictr/version.py: 2.3.10
venv="$here/.venv-fuxictr"
dest="$here/.fuxictr-src"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python}" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet torch==2.13.0 "fuxictr==$version" 'polars<2' pandas pyarrow scikit-learn numpy

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git_dir="${FUXICTR_GIT_DIR:-}"
if [ -z "$git_dir" ]; then
    git clone --quiet --bare https://github.com/reczoo/FuxiCTR "$tmp/FuxiCTR.git"
    git_dir="$tmp/FuxiCTR.git"
fi
# the model zoo must be the one of the installed library's release
if ! git --git-dir="$git_dir" show "$commit:fuxictr/version.py" | grep -q "\"$version\""; then
    echo "setup_fuxictr.sh: fuxictr/version.py at $commit is not $version" >&2
    exit 1
fi
rm -rf "$dest"
mkdir -p "$dest"
git --git-dir="$git_dir" archive "$commit" model_zoo | tar -x -C "$dest"
git --git-dir="$git_dir" rev-parse "$commit^{commit}" > "$dest/COMMIT"
echo "FuxiCTR $version: $venv; model_zoo of $(cat "$dest/COMMIT") in $dest"
