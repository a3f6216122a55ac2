"""PhysioNet 2012 set A as shipped beside the project (`../shared/data`): slow, skipped without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("LDMTOOL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "physionet2012"


@pytest.mark.slow
def test_read_set_a():
    if not (DATA / "set-a.tar.gz").is_file():
        pytest.skip(f"{DATA} not found")
    from ldmtool.series.reader import read_table

    data = read_table(DATA / "set-a.tar.gz", skip_empty=True)
    assert len(data.variables) == 37 and data.values.shape[1:] == (48, 37)
    assert 3990 <= len(data.ids) <= 4000
    assert 0.75 < 1 - data.observed.mean() < 0.85  # ~80 % missing
    assert set(np.unique(data.outcome)) == {0.0, 1.0}
    assert data.static_names == ["Age", "Gender", "Height", "ICUType"]
    assert np.isnan(data.static[:, 2]).any()  # −1 heights are unknown, not −1
