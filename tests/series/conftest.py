"""Tiny tables of stays for the series tests: a few stays, a 12-hour grid, four variables."""

from __future__ import annotations

import numpy as np
import pytest

from ldmtool.series.reader import Grid, SeriesData

N, T, V = 24, 12, 4


def tiny_data(n: int = N, seed: int = 0, style: str = "hours", fmt: str = "long-csv") -> SeriesData:
    """Smooth curves with noise, half the cells missing, descriptors Age/Gender and an outcome."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    values = np.sin(t[None, :, None] / 3 + rng.normal(size=(n, 1, V))) * 10 + 50 + 5 * np.arange(V)
    values = np.round(values + rng.normal(size=values.shape), 2)
    values[rng.random(values.shape) < 0.5] = np.nan
    values[:, 0, 0] = 70.25  # every stay has an observation
    static = np.stack([rng.integers(20, 90, n), rng.integers(0, 2, n)], 1).astype(float)
    static[1, 1] = np.nan
    return SeriesData(
        [f"{1000 + i}" for i in range(n)],
        [f"V{j}" for j in range(V)],
        values,
        ["Age", "Gender"],
        static,
        Grid(T, 1.0),
        {"format": fmt, "time_style": style},
        (rng.random(n) < 0.4).astype(float),
    )


@pytest.fixture
def data() -> SeriesData:
    return tiny_data()
