"""Slice-position embedding: where in the volume a slice sits, as sinusoidal features."""

from __future__ import annotations

import math

import torch


def slice_positions(depth: int, device=None) -> torch.Tensor:
    """Normalised slice indices in [0, 1] for a volume of `depth` slices, shape (depth,)."""
    if depth == 1:
        return torch.zeros(1, device=device)
    return torch.linspace(0.0, 1.0, depth, device=device)


def position_features(pos: torch.Tensor, n_features: int) -> torch.Tensor:
    """Sinusoidal features of normalised positions.

    Args:
        pos: (B,) positions in [0, 1].
        n_features: even number of features; pairs (sin, cos) at frequencies π·2^k, k = 0..n/2-1.

    Returns:
        (B, n_features) tensor; distinct positions give distinct feature vectors.
    """
    if n_features == 0:
        return pos.new_zeros(pos.shape[0], 0)
    freqs = math.pi * (2.0 ** torch.arange(n_features // 2, device=pos.device, dtype=pos.dtype))
    angles = pos[:, None] * freqs[None, :]  # (B, n/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
