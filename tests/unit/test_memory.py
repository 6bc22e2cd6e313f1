"""rlrec.runtime.memory: the RSS numbers a run prints and writes to results.json."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from rlrec.runtime import memory


def test_rss_and_peak_see_a_touched_buffer():
    before = memory.rss_gb()
    buf = np.ones(64 * 2**20 // 8)  # 64 MiB, every page written
    assert memory.rss_gb() - before > 0.05
    assert memory.peak_rss_gb() >= memory.rss_gb() - 1e-3
    del buf


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
def test_peak_since_reset_measures_one_stretch():
    base = memory.rss_gb()
    big = np.ones(256 * 2**20 // 8)  # a 256 MiB high-water mark before the reset
    assert memory.peak_since_reset_gb() > base + 0.2
    del big
    memory.release()
    assert memory.reset_peak()
    start = memory.peak_since_reset_gb()
    assert start < base + 0.1  # the 256 MiB peak is forgotten
    buf = np.ones(96 * 2**20 // 8)  # 96 MiB within the stretch
    assert memory.peak_since_reset_gb() - start > 0.08
    del buf


def test_importing_rlrec_bounds_the_onednn_shape_caches_unless_the_user_set_them():
    """Bounded per-shape caches of oneDNN / ideep (bf16 matmuls on CPU): defaults, user values kept."""
    import subprocess
    import sys

    code = "import os, rlrec; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["128", "64"]
    env["LRU_CACHE_CAPACITY"] = "7"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["128", "7"]
