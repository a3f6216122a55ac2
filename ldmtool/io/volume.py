"""The one Volume type every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A 3D voxel array with its geometry.

    Attributes:
        array: voxel values, shape (I, J, K) in nibabel's voxel-axis order (K is the slice axis
            for axial acquisitions after canonical orientation).
        affine: 4x4 voxel-index -> world (RAS+, mm) matrix, nibabel's convention. DICOM readers
            convert from DICOM's LPS patient coordinates.
        meta: free-form source metadata (format, source path, series UID, modality, ...). Never
            copied into synthetic DICOM output. The readers set ``meta["dtype"]`` (the type
            stored on disk) and ``meta["value_dtype"]`` (the type of ``array``, which holds the
            values as read exactly): write a result in the input's type with
            ``write_nifti(..., dtype=volume.meta["value_dtype"])`` (rounded and clipped).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """A new Volume with the same geometry and another array (same spatial shape)."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"shape {array.shape} does not match {self.array.shape}")
        return Volume(array, self.affine.copy(), {**self.meta, **meta})
