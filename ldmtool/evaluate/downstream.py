"""Utility and robustness: a small downstream model trained on real / synthetic / both, tested on
real volumes, clean and under perturbation.

Segmentation (label maps present): a 2D MONAI UNet on axial slices, DiceCE loss, 3D Dice per class
on the test volumes. Classification (a CSV of case labels): a MONAI `Classifier` on whole volumes,
accuracy. Robustness: FGSM and PGD at a stated ε (intensities in [0, 1]) for segmenters, DeepFool
(5 iterations) for classifiers, and Gaussian noise for both. The attacks are written here: MONAI
has none, and torchattacks (classifiers only) would add a dependency for a few lines of code.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ldmtool.errors import LdmError
from ldmtool.evaluate.cases import Cases
from ldmtool.metrics import segmentation_metrics
from ldmtool.runtime import class_index


@dataclass
class DownstreamConfig:
    """Size and budget of the downstream models (tiny by default: seconds on a CPU)."""

    channels: tuple[int, ...] = (16, 32, 64)
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    oversample: float = 0.5  # share of each segmentation batch from slices holding the rarest class
    # share of each batch drawn from the real cases when real and synthetic ones are mixed
    # (0: every case equally likely, so many synthetic cases crowd the real ones out of the batches);
    # `evaluate` passes its own setting (default 0.5: benchmarks/real_data.py --only augment compares)
    real_share: float = 0.0
    epsilon: float = 0.03  # FGSM/PGD L∞ budget on [0, 1] intensities
    pgd_steps: int = 5
    noise_sigma: float = 0.05  # Gaussian noise std on [0, 1] intensities
    deepfool_iters: int = 5
    deepfool_overshoot: float = 0.02


# ---------------------------------------------------------------- segmentation

# Test slices scored (and attacked) together. The attacks' per-slice steps do not depend on the
# chunk: DiceCE's Dice is per slice (MONAI's batch=False) and a mean only scales the gradient.
EVAL_SLICES = 32


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), (h, w)


def axial_slices(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, I, J, K) volumes → (N·K, 1, I, J) slices and (N·K, 1, I, J) labels."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().reshape(-1, 1, *images.shape[1:3])
    y = torch.from_numpy(np.ascontiguousarray(labels.transpose(0, 3, 1, 2))).long().reshape(-1, 1, *labels.shape[1:3])
    return x, y


def build_segmenter(n_classes: int, cfg: DownstreamConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=n_classes,
        channels=tuple(cfg.channels),
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=1,
    )


def _mixed_batch(
    n_real: int, n_total: int, bs: int, share: float, gen: torch.Generator, rare: torch.Tensor, oversample: float
) -> torch.Tensor:
    """Indices of one batch with round(share·bs) items from [0, n_real) (the real cases) and the
    rest from [n_real, n_total) (the synthetic ones); inside each part, a share `oversample` comes
    from the indices in `rare` that fall in it (none when `rare` is empty)."""
    m_real = min(max(int(round(share * bs)), 0), bs)
    parts = []
    for lo, hi, m in ((0, n_real, m_real), (n_real, n_total, bs - m_real)):
        if m == 0:
            continue
        idx = torch.randint(lo, hi, (m,), generator=gen)
        pool = rare[(rare >= lo) & (rare < hi)]
        k = int(round(oversample * m)) if len(pool) else 0
        if k:
            idx[:k] = pool[torch.randint(0, len(pool), (k,), generator=gen)]
        parts.append(idx)
    return torch.cat(parts)


def _mixing(n_real: int | None, n_total: int, cfg: DownstreamConfig) -> bool:
    """Whether batches are drawn with a fixed real share (both kinds present and a share set)."""
    return bool(cfg.real_share) and n_real is not None and 0 < n_real < n_total


def train_segmenter(
    data: Cases,
    n_classes: int,
    cfg: DownstreamConfig,
    device: torch.device,
    seed: int,
    on_step=None,
    n_real: int | None = None,
) -> torch.nn.Module:
    """Fit the 2D UNet on the axial slices of the cases for cfg.steps steps (each batch's slices
    read from the cases as it is drawn: no set is stacked).

    `n_real`: the first n_real cases are real, the rest synthetic; with cfg.real_share > 0 each
    batch then takes that share of its slices from the real cases."""
    from monai.losses import DiceCELoss

    from ldmtool.runtime import autocast

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # Like nnU-Net's foreground oversampling: a share of each batch comes from slices that hold
    # the rarest foreground class, so small structures (lesions) are learned at all.
    counts = data.class_counts()[1:n_classes]
    rare = 1 + int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max))) if counts.any() else None
    rare_idx = data.slices_with(rare) if rare is not None else torch.empty(0, dtype=torch.long)
    model = build_segmenter(n_classes, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    mult = 2 ** (len(cfg.channels) - 1)
    model.train()
    n_slices = data.n_slices
    real_slices = None if n_real is None else n_real * data.shape[2]
    mixing = _mixing(real_slices, n_slices, cfg)
    for _ in range(cfg.steps):
        bs = min(cfg.batch_size, n_slices)
        if mixing:
            idx = _mixed_batch(real_slices, n_slices, bs, cfg.real_share, gen, rare_idx, cfg.oversample)
        else:
            idx = torch.randint(0, n_slices, (bs,), generator=gen)
            n_rare = int(round(cfg.oversample * bs)) if len(rare_idx) else 0
            if n_rare:
                idx[:n_rare] = rare_idx[torch.randint(0, len(rare_idx), (n_rare,), generator=gen)]
        x, y = data.slice_batch(idx)
        xb, _ = _pad_to(x.to(device), mult)
        yb, _ = _pad_to(y.to(device), mult)
        with autocast(device):
            out = model(xb)
        loss = loss_fn(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()
    return model.eval()


def _seg_logits(model: torch.nn.Module, x: torch.Tensor, mult: int) -> torch.Tensor:
    xp, (h, w) = _pad_to(x, mult)
    return model(xp)[..., :h, :w]


def _seg_loss(model, x, y, mult):
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)(_seg_logits(model, x, mult).float(), y)


def fgsm(loss_of, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al.): one L∞ step of size ε up the loss."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(x), x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def pgd(loss_of, x: torch.Tensor, eps: float, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): random start in the ε-ball, `steps` sign steps of
    2.5ε/steps, projected back to the ball and to [0, 1]."""
    alpha = 2.5 * eps / max(1, steps)
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
    adv = (x + noise).clamp(0, 1)
    for _ in range(steps):
        adv = adv.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(adv), adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def evaluate_segmenter(
    model: torch.nn.Module,
    test: Cases,
    n_classes: int,
    cfg: DownstreamConfig,
    device: torch.device,
    seed: int,
    perturb: str = "clean",
    extra: dict[str, list] | None = None,
) -> np.ndarray:
    """Mean Dice per foreground class over test volumes, with the test images perturbed by
    `perturb` ∈ clean | noise | fgsm | pgd (attacks use the true labels: white-box). With a dict
    `extra`, also fills extra['iou'] and extra['hd95'] (in voxels): per-class means over the test
    volumes (MONAI MeanIoU, HausdorffDistanceMetric; HD95 over the volumes where the class is in
    both the prediction and the truth). Absent classes are scored by the rule of ldmtool.metrics."""
    mult = 2 ** (len(cfg.channels) - 1)
    gen = torch.Generator().manual_seed(seed)
    scores, ious, hd95s = [], [], []
    for i in range(len(test)):
        vol, lab = (np.array(a) for a in test.case(i))  # a copy: memory-mapped cases are read-only
        x_all, y_all = axial_slices(vol[None], lab[None])
        if perturb == "noise":  # drawn for the whole volume at once
            x_all = (x_all + cfg.noise_sigma * torch.randn(x_all.shape, generator=gen)).clamp(0, 1)
        elif perturb not in ("clean", "fgsm", "pgd"):
            raise ValueError(perturb)
        preds = []
        for lo in range(0, len(x_all), EVAL_SLICES):  # slices in chunks: bounded memory at any size
            x, y = x_all[lo : lo + EVAL_SLICES].to(device), y_all[lo : lo + EVAL_SLICES].to(device)
            loss_of = lambda inp: _seg_loss(model, inp, y, mult)  # noqa: E731, B023 (used within this iteration)
            if perturb == "fgsm":
                x = fgsm(loss_of, x, cfg.epsilon)
            elif perturb == "pgd":
                x = pgd(loss_of, x, cfg.epsilon, cfg.pgd_steps, gen)
            with torch.no_grad():
                preds.append(class_index(_seg_logits(model, x, mult), 1).cpu().numpy())
        pred = np.concatenate(preds)  # (K, I, J)
        m = segmentation_metrics(
            pred.transpose(1, 2, 0), lab, n_classes, metrics=("dice", "iou", "hd95") if extra is not None else ("dice",)
        )
        scores.append(m["dice"])
        if extra is not None:
            ious.append(m["iou"])
            hd95s.append(m["hd95"])
    if extra is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class never predicted: NaN HD95
            extra["iou"] = list(np.mean(np.array(ious, dtype=float), axis=0))
            extra["hd95"] = list(np.nanmean(np.array(hd95s, dtype=float), axis=0))
    return np.mean(np.array(scores, dtype=float), axis=0)


# ---------------------------------------------------------------- classification


class _Planar(torch.nn.Module):
    """A 2D network fed (B, C, I, J, 1) images: the singleton slice axis dropped on the way in."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[..., 0])


def build_classifier(shape: tuple[int, int, int], n_classes: int, cfg: DownstreamConfig) -> torch.nn.Module:
    """MONAI's Classifier on (B, 1, I, J, K) inputs: 3D for volumes, 2D for 2D images (K = 1)."""
    from monai.networks.nets import Classifier

    planar = shape[2] == 1 and min(shape[:2]) > 1
    net = Classifier(
        in_shape=(1, *(shape[:2] if planar else shape)),
        classes=n_classes,
        channels=tuple(cfg.channels),
        strides=(2,) * len(cfg.channels),
        num_res_units=1,
    )
    return _Planar(net) if planar else net


def train_classifier(
    data: Cases,
    n_classes: int,
    cfg: DownstreamConfig,
    device: torch.device,
    seed: int,
    on_step=None,
    n_real: int | None = None,
) -> torch.nn.Module:
    """Fit the classifier (`build_classifier`) on the cases and their class ids (`Cases.targets`);
    `n_real` as in `train_segmenter`. Each batch's volumes are read as it is drawn."""
    from ldmtool.runtime import autocast

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    y = torch.from_numpy(data.targets).long()
    n = len(data)
    model = build_classifier(data.shape, n_classes, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    mixing, none = _mixing(n_real, n, cfg), torch.empty(0, dtype=torch.long)
    for _ in range(cfg.steps):
        bs = min(cfg.batch_size, n)
        if mixing:
            idx = _mixed_batch(n_real, n, bs, cfg.real_share, gen, none, 0.0)
        else:
            idx = torch.randint(0, n, (bs,), generator=gen)
        with autocast(device):
            out = model(data.volume_batch(idx.tolist()).to(device))
        loss = F.cross_entropy(out.float(), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()
    return model.eval()


def deepfool(
    model: torch.nn.Module, x: torch.Tensor, n_classes: int, iters: int = 5, overshoot: float = 0.02
) -> torch.Tensor:
    """DeepFool (Moosavi-Dezfooli et al. 2016), multi-class, one input (1, ...) at a time: step to
    the nearest linearised decision boundary, at most `iters` times, overshoot as in the paper."""
    x0 = x.detach()
    with torch.no_grad():
        label = int(model(x0).argmax(1))
    r_total = torch.zeros_like(x0)
    for _ in range(iters):
        xi = (x0 + (1 + overshoot) * r_total).clamp(0, 1).requires_grad_(True)
        logits = model(xi)[0]
        if int(logits.argmax()) != label:
            break
        (g_label,) = torch.autograd.grad(logits[label], xi, retain_graph=True)
        best, step = None, None
        for k in range(n_classes):
            if k == label:
                continue
            (g_k,) = torch.autograd.grad(logits[k], xi, retain_graph=True)
            w = g_k - g_label
            f = (logits[k] - logits[label]).detach()
            dist = f.abs() / (w.norm() + 1e-8)
            if best is None or dist < best:
                best, step = dist, (dist + 1e-4) * w / (w.norm() + 1e-8)
        r_total = r_total + step
    return (x0 + (1 + overshoot) * r_total).clamp(0, 1).detach()


def evaluate_classifier(
    model: torch.nn.Module,
    test: Cases,
    n_classes: int,
    cfg: DownstreamConfig,
    device: torch.device,
    seed: int,
    perturb: str = "clean",
) -> dict:
    """Accuracy on the test cases (class ids in `test.targets`), clean or under `perturb` ∈ noise |
    deepfool; for DeepFool also the mean relative L2 size of the perturbation that was needed."""
    gen = torch.Generator().manual_seed(seed)
    correct, sizes = 0, []
    for i, cls in enumerate(test.targets):
        x = test.volume_batch([i]).to(device)
        if perturb == "noise":
            x = (x + cfg.noise_sigma * torch.randn(x.shape, generator=gen).to(device)).clamp(0, 1)
        elif perturb == "deepfool":
            adv = deepfool(model, x, n_classes, cfg.deepfool_iters, cfg.deepfool_overshoot)
            sizes.append(float((adv - x).norm() / (x.norm() + 1e-8)))
            x = adv
        with torch.no_grad():
            correct += int(int(model(x).argmax(1)) == int(cls))
    out = {"accuracy": correct / max(1, len(test))}
    if sizes:
        out["mean_relative_l2_perturbation"] = float(np.mean(sizes))
    return out


def has_classes(sets) -> bool:
    """True when every case of `sets` (VolumeSets) has a class of its own (`VolumeSet.classes`:
    class folders, `sample --class` provenance)."""
    return all(c is not None for vs in sets for c in vs.classes)


def read_class_csv(path, sets) -> dict[str, list[str]]:
    """Class labels of every case of `sets` (VolumeSets) from a CSV with a header row: first column
    the case id, or `SET/case` (SET = real, synthetic, train or test) where ids repeat across sets;
    second column the class label. Cases the CSV does not name keep the class the set gives them
    (`VolumeSet.classes`); without a CSV (`path` None) every case must have one.
    Returns {set name: [label per case]}."""
    import csv
    from pathlib import Path

    table: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LdmError(f"--class-labels {path} does not exist")
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
        if len(rows) < 2 or len(rows[0]) < 2:
            raise LdmError(f"{path} must have a header and rows `case,label`")
        table = {r[0].strip(): r[1].strip() for r in rows[1:] if len(r) >= 2}
    out, missing = {}, []
    for vs in sets:
        labels = []
        for c, own in zip(vs.case_ids, vs.classes):
            label = table.get(f"{vs.name}/{c}", table.get(c, own))
            if label is None:
                missing.append(f"{vs.name}/{c}")
            labels.append(label)
        out[vs.name] = labels
    if missing:
        where = f"{path} has no class label" if path is not None else "no class (class folder or sample provenance)"
        raise LdmError(f"{where} for {len(missing)} case(s), e.g. {', '.join(missing[:3])}")
    return out
