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


def segmentation_metrics(pred, truth, num_classes: int, spacing: tuple[float, ...] | None = None) -> dict[str, list[float]]:
    """{'dice': [...], 'iou': [...], 'hd95': [...]}, one value per foreground class 1..K-1."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU

    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"prediction {np.shape(pred)} and truth {np.shape(truth)} differ in shape")
    p, t = _onehot(pred, num_classes), _onehot(truth, num_classes)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t)[0]
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)(p, t)[0]
    hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    kwargs = {"spacing": list(spacing)} if spacing is not None else {}
    hd95 = []
    for c in range(1, num_classes):
        if p[0, c].any() and t[0, c].any():
            hd95.append(float(hd(p[:, [0, c]], t[:, [0, c]], **kwargs)[0, 0]))
        else:
            hd95.append(float("nan"))
    return {"dice": [float(v) for v in dice], "iou": [float(v) for v in iou], "hd95": hd95}
