"""benchmarks/two_d.py: without the data it says so and exits 0; --quick runs the whole chain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LDMTOOL_RESULTS_DIR": str(args[-1])}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "two_d.py"), *map(str, args[:-1])],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_without_data_exits_0(tmp_path):
    proc = _run("--data", tmp_path / "none.npz", "--work", tmp_path / "w", tmp_path)
    assert proc.returncode == 0 and "not found" in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_quick_on_a_small_stand_in(tmp_path):
    """A PneumoniaMNIST-shaped file of random blobs (no real data needed)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 200), ("val", 10), ("test", 40)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28)).astype(np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez(tmp_path / "fake.npz", **arrays)
    proc = _run("--quick", "--data", tmp_path / "fake.npz", "--work", tmp_path / "w", tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| synthetic only | 120 |" in proc.stdout and "| 10 % real + synthetic |" in proc.stdout
    assert len(list((tmp_path / "w" / "synth_normal" / "imagesTr").glob("*.png"))) == 60
