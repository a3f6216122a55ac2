"""Descriptors (age, sex, height, ICU type …) of synthetic stays without keeping any real stay's.

A checkpoint must not carry the training stays' own descriptor rows: a combination such as
(age 87, height 152, ICU type 3) can single a patient out. What is stored instead is a Gaussian
copula per outcome group: each descriptor's quantiles at the 1st–99th percentile levels (never
the extremes, which are single patients' values) and its missing rate, and the correlation of the
descriptors' normal scores. Synthetic descriptors are drawn from that copula (scipy's normal
distribution for the scores); a descriptor with few distinct values (sex, ICU type) takes one of
its quantile values rather than a value between two levels.
"""

from __future__ import annotations

import numpy as np

LEVELS = np.linspace(0.01, 0.99, 99)
DISCRETE = 10  # at most this many distinct values: categorical, drawn without interpolation


def _group_model(static: np.ndarray) -> dict:
    """Copula of one group's (n, S) descriptors (NaN = unknown)."""
    from scipy import stats

    s = static.shape[1]
    quantiles, missing, discrete = [], [], []
    scores = np.zeros_like(static)
    for j in range(s):
        col = static[:, j]
        known = col[~np.isnan(col)]
        missing.append(float(1 - len(known) / max(len(col), 1)))
        discrete.append(bool(len(np.unique(known)) <= DISCRETE))
        if len(known) == 0:
            quantiles.append(None)
            continue
        quantiles.append(np.quantile(known, LEVELS, method="inverted_cdf" if discrete[-1] else "linear").tolist())
        ranks = stats.rankdata(known) / (len(known) + 1)
        scores[~np.isnan(col), j] = stats.norm.ppf(ranks)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant column: no correlation (0 below)
        corr = np.corrcoef(scores, rowvar=False) if len(static) > 2 and s > 1 else np.eye(s)
    corr = np.nan_to_num(np.atleast_2d(corr), nan=0.0)
    np.fill_diagonal(corr, 1.0)
    return {"quantiles": quantiles, "missing": missing, "discrete": discrete, "correlation": corr.tolist()}


def descriptor_model(static: np.ndarray, outcome: np.ndarray | None, min_group: int = 20) -> dict:
    """Copulas for all stays and, where outcomes are known, for each outcome with ≥ min_group stays."""
    groups = {"all": _group_model(static)}
    if outcome is not None:
        for y in (0, 1):
            rows = outcome == y
            if rows.sum() >= min_group:
                groups[str(y)] = _group_model(static[rows])
    return groups


def draw_descriptors(model: dict, outcomes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, S) descriptors, row i from the copula of outcome i's group (all stays when unknown)."""
    from scipy import stats

    n = len(outcomes)
    s = len(model["all"]["missing"])
    out = np.full((n, s), np.nan)
    for i, y in enumerate(outcomes):
        g = model.get("all" if np.isnan(y) else str(int(y)), model["all"])
        corr = np.asarray(g["correlation"], dtype=float)
        z = rng.multivariate_normal(np.zeros(s), corr, method="eigh")
        u = stats.norm.cdf(z)
        for j in range(s):
            q = g["quantiles"][j]
            if q is None or rng.random() < g["missing"][j]:
                continue
            if g["discrete"][j]:
                out[i, j] = q[min(int(u[j] * len(q)), len(q) - 1)]
            else:
                out[i, j] = float(np.interp(u[j], LEVELS, q))
    return out
