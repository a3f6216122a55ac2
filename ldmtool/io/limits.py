"""Memory guard: refuse volumes whose declared size would exhaust memory, before reading them.

The limit is a number of voxels (default ``DEFAULT_MAX_VOXELS`` = 2**28, 1 GiB as float32; the
commands hold a few float32 copies of a volume at once). It is taken, in this order, from the
module setting ``MAX_VOXELS`` (an int, e.g. set by a caller or a test), the environment variable
``LDMTOOL_MAX_VOXELS``, or the default. Readers check the shape a header declares (NIfTI dim,
DICOM Rows x Columns x slices/frames) before any pixel data is read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ldmtool.errors import LdmError

ENV_VAR = "LDMTOOL_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2**28
MAX_VOXELS: int | None = None  # module-level override of the environment and the default


def voxel_limit() -> int:
    """The voxel limit in force (module setting, then LDMTOOL_MAX_VOXELS, then the default)."""
    if MAX_VOXELS is not None:
        return int(MAX_VOXELS)
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise LdmError(
            f"{ENV_VAR}={raw!r} is not a number; set it to a voxel count such as {DEFAULT_MAX_VOXELS}"
        ) from None
    if value <= 0:
        raise LdmError(f"{ENV_VAR}={raw!r} must be a positive voxel count")
    return value


def check_voxel_count(source: str, shape: Sequence[int]) -> None:
    """LdmError if a volume of ``shape`` (as declared by the header of ``source``) exceeds the limit."""
    n = math.prod(int(s) for s in shape)
    limit = voxel_limit()
    if n > limit:
        dims = "x".join(str(int(s)) for s in shape)
        raise LdmError(
            f"{source} declares {dims} voxels ({n:,}, {n * 4 / 2**30:.1f} GiB as float32), above the "
            f"limit of {limit:,} voxels; check the file, or raise the limit with {ENV_VAR}=N"
        )
