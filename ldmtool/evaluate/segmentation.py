"""Segmentation metrics per class: Dice, IoU and the 95th-percentile Hausdorff distance (MONAI).

Used by the segmentation benchmark and available to any evaluation of label maps. HD95 is in mm
when `spacing` is given (voxels otherwise); it is NaN where a class is absent from the prediction
or the truth (a distance is undefined there), and Dice/IoU count a class absent from both as 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _onehot(label: np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(label)).long()
    return F.one_hot(t, num_classes).movedim(-1, 0)[None].float()  # (1, K, *S)


def segmentation_metrics(pred, truth, num_classes: int, spacing: tuple[float, ...] | None = None,
                         metrics: tuple[str, ...] = ("dice", "iou", "hd95")) -> dict[str, list[float]]:
    """{'dice': [...], 'iou': [...], 'hd95': [...]} (those asked for), one value per foreground
    class 1..K-1 of two integer label maps of one shape."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"prediction {np.shape(pred)} and truth {np.shape(truth)} differ in shape")
    p, t = _onehot(pred, num_classes), _onehot(truth, num_classes)
    out: dict[str, list[float]] = {}
    if "dice" in metrics:
        out["dice"] = [float(v) for v in DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t)[0]]
    if "iou" in metrics:
        out["iou"] = [float(v) for v in MeanIoU(include_background=False, reduction="none", ignore_empty=False)(p, t)[0]]
    if "hd95" in metrics:
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        kwargs = {"spacing": list(spacing)} if spacing is not None else {}
        out["hd95"] = [float(hd(p[:, [0, c]], t[:, [0, c]], **kwargs)[0, 0]) if p[0, c].any() and t[0, c].any() else float("nan")
                       for c in range(1, num_classes)]
    return out
