"""Segmentation metrics per class: Dice, IoU and the 95th-percentile Hausdorff distance (MONAI).

The one place label maps are scored: training validation, the evaluation report and the
benchmarks all call these functions, so every Dice in the project follows one rule.

Rule for a class absent from a map (foreground classes 1..K-1 only):
  - absent from both the prediction and the truth: Dice = IoU = 1.0 (a correct empty prediction);
  - absent from only one of them: Dice = IoU = 0.0 (MONAI with ``ignore_empty=False``);
  - HD95 is NaN unless the class is present in both (a distance is undefined otherwise).
HD95 is in mm when `spacing` is given, in voxels otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("dice", "iou", "hd95")


def _label_tensor(label: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(label, torch.Tensor):
        return label.detach().cpu().long()
    return torch.as_tensor(np.asarray(label)).long()


def _onehot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(label, num_classes).movedim(-1, 0)[None].float()  # (1, K, *S)


def segmentation_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    num_classes: int,
    spacing: tuple[float, ...] | None = None,
    metrics: tuple[str, ...] = METRICS,
) -> dict[str, list[float]]:
    """Dice, IoU and HD95 of each foreground class between two integer label maps of one shape.

    Args:
        pred, truth: label maps (any number of spatial dims), values in 0..num_classes-1.
        num_classes: K, background included.
        spacing: voxel size per axis; HD95 in mm with it, in voxels without.
        metrics: which of 'dice', 'iou', 'hd95' to compute.

    Returns:
        {'dice': [...], 'iou': [...], 'hd95': [...]} (those asked for), one value per class 1..K-1,
        absent classes scored by the rule in the module docstring.
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {METRICS}")
    if tuple(np.shape(pred)) != tuple(np.shape(truth)):
        raise ValueError(f"prediction {tuple(np.shape(pred))} and truth {tuple(np.shape(truth))} differ in shape")
    p, t = _onehot(_label_tensor(pred), num_classes), _onehot(_label_tensor(truth), num_classes)
    out: dict[str, list[float]] = {}
    overlap = {"include_background": False, "reduction": "none", "ignore_empty": False}  # absent from both: 1
    if "dice" in metrics:
        out["dice"] = [float(v) for v in DiceMetric(**overlap)(p, t)[0]]
    if "iou" in metrics:
        out["iou"] = [float(v) for v in MeanIoU(**overlap)(p, t)[0]]
    if "hd95" in metrics:
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        kwargs = {"spacing": list(spacing)} if spacing is not None else {}
        with warnings.catch_warnings():
            # MONAI's surface-distance code passes its own deprecated `always_return_as_numpy` argument
            # and warns about it on every call; nothing here can act on that warning.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            out["hd95"] = [
                float(hd(p[:, [0, c]], t[:, [0, c]], **kwargs)[0, 0])
                if p[0, c].any() and t[0, c].any()
                else float("nan")
                for c in range(1, num_classes)
            ]
    return out


def dice_per_class(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each foreground class 1..K-1 between two label maps (absent classes: module rule)."""
    return segmentation_metrics(pred, truth, num_classes, metrics=("dice",))["dice"]
