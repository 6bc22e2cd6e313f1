"""rlrec.memory: the RSS numbers a run prints and writes to results.json."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from rlrec import memory


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
