"""benchmarks/conditional.py --quick: the whole chain (train, mask-to-image, segment, inpaint) runs and reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_conditional_benchmark_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conditional.py"), "--quick", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "## Mask-to-image: segmenter Dice" in proc.stdout and "## Lesion insertion" in proc.stdout
    assert "| repaint | 2/2 |" in proc.stdout and "| guidance | 2/2 |" in proc.stdout  # outside bit-exact
