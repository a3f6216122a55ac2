"""Stays on a grid → normalised tensors for the model, and the record of the normalisation."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ldmtool.series.model import UNKNOWN_OUTCOME
from ldmtool.series.reader import SeriesData


def normalisation(data: SeriesData) -> dict[str, list[float]]:
    """Per-variable mean, std, min and max of the observed values, and the descriptors' mean and std
    (a variable never observed gets mean 0, std 1)."""
    with warnings.catch_warnings():  # all-NaN columns: handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nan_to_num(np.nanmean(data.values, axis=(0, 1)), nan=0.0)
        std = np.nan_to_num(np.nanstd(data.values, axis=(0, 1)), nan=1.0)
        lo = np.nan_to_num(np.nanmin(data.values, axis=(0, 1)), nan=0.0)
        hi = np.nan_to_num(np.nanmax(data.values, axis=(0, 1)), nan=0.0)
        s_mean = np.nan_to_num(np.nanmean(data.static, axis=0), nan=0.0) if data.static.size else np.zeros(0)
        s_std = np.nan_to_num(np.nanstd(data.static, axis=0), nan=1.0) if data.static.size else np.zeros(0)
    std = np.where(std > 1e-6, std, 1.0)
    s_std = np.where(s_std > 1e-6, s_std, 1.0)
    return {
        k: np.asarray(v, dtype=float).tolist()
        for k, v in dict(mean=mean, std=std, min=lo, max=hi, static_mean=s_mean, static_std=s_std).items()
    }


@dataclass
class SeriesTensors:
    """x (N, T, V) normalised, 0 where unobserved; m (N, T, V) bool observed; static (N, S)
    normalised, 0 where unknown; known (N, S) float; outcome (N,) long (2: unknown)."""

    x: torch.Tensor
    m: torch.Tensor
    static: torch.Tensor
    known: torch.Tensor
    outcome: torch.Tensor

    def rows(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
        return tuple(t[idx].to(device) for t in (self.x, self.m, self.static, self.known, self.outcome))


def to_tensors(data: SeriesData, norm: dict[str, list[float]]) -> SeriesTensors:
    """The model's inputs for `data` under the stored normalisation `norm`."""
    mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
    obs = data.observed
    x = np.where(obs, (np.nan_to_num(data.values) - mean) / std, 0.0)
    known = ~np.isnan(data.static)
    s = np.where(
        known, (np.nan_to_num(data.static) - np.asarray(norm["static_mean"])) / np.asarray(norm["static_std"]), 0.0
    )
    if data.outcome is None:
        y = np.full(len(data.ids), UNKNOWN_OUTCOME)
    else:
        y = np.where(np.isnan(data.outcome), UNKNOWN_OUTCOME, np.clip(np.nan_to_num(data.outcome), 0, 1)).astype(int)
    return SeriesTensors(
        torch.from_numpy(x).float(),
        torch.from_numpy(obs),
        torch.from_numpy(s.reshape(len(data.ids), -1)).float(),
        torch.from_numpy(known.reshape(len(data.ids), -1)).float(),
        torch.from_numpy(y).long(),
    )
