"""The preprocessing settings (YAML section `preprocess`), apart from the code that applies them.

Kept light (numpy only) so the command line can build its options from these fields without
importing the resampling code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ldmtool.config import setting
from ldmtool.data.labels import LabelMap, parse_labels
from ldmtool.errors import LdmError

IntensityMode = Literal["percentile", "ct_window", "none"]
_INTENSITY_MODES = ("percentile", "ct_window", "none")
_AXIS_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))


def _float_tuple(value: Any, n: int, what: str, hint: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes, bool)):
        raise LdmError(f"{what} must be {hint}, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise LdmError(f"{what} must be {hint}, got {value!r}") from None
    if len(out) != n or any(isinstance(v, bool) for v in value) or not all(map(math.isfinite, out)):
        raise LdmError(f"{what} must be {hint}, got {value!r}")
    return out


@dataclass
class PreprocessConfig:
    """How cases are brought to a common geometry and intensity scale.

    Attributes:
        orientation: axis codes of the output array ("RAS" = I left->right, J posterior->anterior,
            K inferior->superior), any permutation of one letter from each of L/R, P/A, I/S;
            or "none" to keep the input's axes.
        spacing: output voxel size in mm (x, y, z along the output axes); None keeps the input's.
            A single number means isotropic.
        shape: output array shape after resampling (centre crop or pad); None keeps it.
        intensity: "percentile" clips to the case's percentiles and rescales to out_range;
            "ct_window" clips to a fixed (level, width) window in HU and rescales; "none" leaves
            intensities unchanged.
        percentiles: (low, high) percentiles for "percentile", 0 <= low < high <= 100.
        ct_window: (level, width) in HU, required for "ct_window" (e.g. (40, 400) soft tissue).
        out_range: (low, high) of the normalised intensities.
        labels: label mapping {class name: [[lo, hi], ...] source value ranges} (see
            ldmtool/data/labels.py); None keeps the label values as they are.
    """

    orientation: str = setting(
        "RAS", "Axis codes of the output array (any permutation of L/R, P/A, I/S), or none to keep the input's."
    )
    spacing: tuple[float, float, float] | None = setting(
        None, "Resample to this voxel size x,y,z (mm); one number means isotropic (default: the input's)."
    )
    shape: tuple[int, int, int] | None = setting(None, "Crop/pad volumes to I,J,K after resampling.")
    intensity: IntensityMode = setting("percentile", "percentile | ct_window | none.")
    percentiles: tuple[float, float] = setting((0.5, 99.5), "Low, high percentiles clipped to with percentile.")
    ct_window: tuple[float, float] | None = setting(
        None, "CT window level,width (HU), with --intensity ct_window (e.g. 40,400 soft tissue)."
    )
    out_range: tuple[float, float] = setting((0.0, 1.0), "Low, high of the normalised intensities.")
    labels: dict[str, list[list[int]]] | None = setting(
        None, "Label mapping {class name: [[lo, hi], ...] source value ranges}; none keeps label values as they are."
    )

    def __post_init__(self) -> None:
        # orientation
        if not isinstance(self.orientation, str):
            raise LdmError(
                f"orientation must be 3 axis letters such as 'RAS' or 'LPS', or 'none'; got {self.orientation!r}"
            )
        code = self.orientation.strip()
        if code.lower() == "none":
            self.orientation = "none"
        else:
            code = code.upper()
            ok = len(code) == 3 and all(sum(ch in pair for ch in code) == 1 for pair in _AXIS_PAIRS)
            if not ok:
                raise LdmError(
                    f"orientation must be 3 axis letters with one of L/R, one of P/A and one of "
                    f"I/S (such as 'RAS' or 'LPS'), or 'none'; got {self.orientation!r}"
                )
            self.orientation = code

        # spacing
        if self.spacing is not None:
            hint = "three positive numbers in mm (or one for isotropic), or null"
            value = self.spacing
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value, value, value)
            sp = _float_tuple(value, 3, "spacing", hint)
            if min(sp) <= 0:
                raise LdmError(f"spacing must be {hint}, got {self.spacing!r}")
            self.spacing = sp  # type: ignore[assignment]

        # shape
        if self.shape is not None:
            hint = "three positive integers, or null"
            if isinstance(self.shape, (str, bytes)) or not hasattr(self.shape, "__iter__"):
                raise LdmError(f"shape must be {hint}, got {self.shape!r}")
            vals = list(self.shape)

            def _positive_int(v: Any) -> bool:
                if isinstance(v, bool):
                    return False
                if isinstance(v, float):
                    return v.is_integer() and v > 0
                return isinstance(v, (int, np.integer)) and v > 0

            if len(vals) != 3 or not all(_positive_int(v) for v in vals):
                raise LdmError(f"shape must be {hint}, got {self.shape!r}")
            self.shape = tuple(int(v) for v in vals)  # type: ignore[assignment]

        # intensity
        if self.intensity not in _INTENSITY_MODES:
            raise LdmError(f"intensity must be one of {', '.join(_INTENSITY_MODES)}; got {self.intensity!r}")
        hint = "two numbers (low, high) with 0 <= low < high <= 100"
        pl, ph = _float_tuple(self.percentiles, 2, "percentiles", hint)
        if not (0.0 <= pl < ph <= 100.0):
            raise LdmError(f"percentiles must be {hint}, got {self.percentiles!r}")
        self.percentiles = (pl, ph)

        if self.ct_window is not None:
            hint = "two numbers (level, width) in HU with width > 0, e.g. [40, 400]"
            level, width = _float_tuple(self.ct_window, 2, "ct_window", hint)
            if width <= 0:
                raise LdmError(f"ct_window must be {hint}, got {self.ct_window!r}")
            self.ct_window = (level, width)
        elif self.intensity == "ct_window":
            raise LdmError("intensity 'ct_window' needs ct_window = (level, width) in HU, e.g. [40, 400]")

        hint = "two numbers (low, high) with low < high"
        lo, hi = _float_tuple(self.out_range, 2, "out_range", hint)
        if not lo < hi:
            raise LdmError(f"out_range must be {hint}, got {self.out_range!r}")
        self.out_range = (lo, hi)
        if self.labels is not None:
            self.labels = self.label_map.to_dict()

    @property
    def label_map(self) -> LabelMap | None:
        """The label mapping as a LabelMap, or None."""
        return parse_labels(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        return {
            "orientation": self.orientation,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "shape": list(self.shape) if self.shape is not None else None,
            "intensity": self.intensity,
            "percentiles": list(self.percentiles),
            "ct_window": list(self.ct_window) if self.ct_window is not None else None,
            "out_range": list(self.out_range),
            **({"labels": self.labels} if self.labels is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PreprocessConfig:
        """Inverse of to_dict; missing keys take their defaults, unknown keys are an error."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise LdmError(f"preprocessing config must be a mapping, got {type(data).__name__}")
        allowed = tuple(cls.__dataclass_fields__)
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise LdmError(
                f"unknown preprocessing option(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}"
            )
        return cls(**data)
