"""rlrec as an installed library, not only a checkout: the wheel ships the config tree and the
`rlrec` command, and a user's own config directory extends it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_the_wheel_runs_from_any_directory_with_its_configs_and_a_users_own(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)], check=True,
                   cwd=tmp_path)  # fmt: skip
    wheel = next(wheels.glob("rlrec-*.whl"))
    # every source folder is a package in the wheel (a folder without __init__.py imports from a
    # checkout as a namespace package, then is missing from the wheel)
    with zipfile.ZipFile(wheel) as z:
        shipped = {name.rsplit("/", 1)[0] for name in z.namelist() if name.endswith("/__init__.py")}
    sources = {str(f.parent.relative_to(ROOT)) for f in (ROOT / "rlrec").rglob("*.py") if "__pycache__" not in f.parts}
    assert sources <= shipped, f"not in the wheel (no __init__.py?): {sorted(sources - shipped)}"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def py(*args):
        out = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    # the installed copy is the one imported, and its configs are its own package data
    where = py("-c", "import rlrec, rlrec.configs as c; print(rlrec.__file__); print(c.conf_dir())").split()
    assert where[0].startswith(str(target)) and where[1] == str(target / "rlrec" / "conf")
    assert "positive rate" in py("-m", "rlrec.data", "describe", "dataset=synthetic")
    job = py("-m", "rlrec.train", "--cfg", "job", "+experiment=trackrec_movielens")
    assert "experiment_name: trackrec_movielens" in job
    # the console entry point, with a user's own dataset config added by --config-dir next to the
    # shipped ones
    mine = tmp_path / "myconf" / "dataset"
    mine.mkdir(parents=True)
    shipped = (target / "rlrec" / "conf" / "dataset" / "synthetic.yaml").read_text()
    (mine / "mydata.yaml").write_text(shipped.replace("name: synthetic", "name: mydata"))
    script = target / "bin" / "rlrec"
    assert script.is_file()
    job = py(str(script), "train", "--config-dir", str(tmp_path / "myconf"), "--cfg", "job",
             "+experiment=dpo4rec_movielens", "dataset=mydata")  # fmt: skip
    assert "experiment_name: dpo4rec_movielens" in job and "name: mydata" in job and "name: smollm2_135m" in job
    assert Path(target / "rlrec" / "conf" / "train.yaml").read_text() == (ROOT / "conf" / "train.yaml").read_text()
