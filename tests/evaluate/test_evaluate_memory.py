"""Streaming stages hand freed heap memory back (ldmtool.runtime.release_memory)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ldmtool.runtime import release_memory


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_returns_the_holes_volume_temporaries_leave():
    import ctypes
    import ctypes.util

    if not hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim"):
        pytest.skip("not glibc")
    # the pattern of a streaming stage: per volume a large temporary and a small array kept
    big = np.ones(5_000_000, dtype=np.float32)  # 20 MB, freed: glibc raises its mmap threshold
    del big
    kept, temps = [], []
    for _ in range(40):
        temps.append(np.ones(5_000_000, dtype=np.float32))  # 20 MB each, now from the heap
        kept.append(np.ones(40_000, dtype=np.float32))  # 160 kB each, lives on between them
    del temps
    before = _rss_mb()
    release_memory()
    after = _rss_mb()
    assert before - after > 400, (before, after)  # most of the 800 MB of holes back to the system
    assert all(float(k[0]) == 1.0 for k in kept)  # live data untouched
