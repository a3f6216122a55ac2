"""Training of the slice autoencoder (the first stage of SBLDM)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldmtool.config import AELossConfig, AutoencoderConfig, TrainConfig, to_dict
from ldmtool.data.prepared import PreparedData
from ldmtool.diffusion.pipeline import decode_latents, encode_volume
from ldmtool.io.atomic import atomic_write_text
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.position import slice_positions
from ldmtool.train.checkpoint import load_checkpoint, save_checkpoint, write_config_json
from ldmtool.train.common import autocast, count_parameters, grad_scaler, progress, warmup_cosine


@dataclass
class AETrainResult:
    best_path: Path
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    slices_per_second: float
    parameters: int


def build_autoencoder(config: dict[str, Any]) -> SliceAutoencoder:
    """Rebuild the autoencoder described by a checkpoint config."""
    from ldmtool.config import from_dict

    cfg = from_dict(AutoencoderConfig, config["model"])
    return SliceAutoencoder(cfg, image_channels=1, num_classes=int(config["num_classes"]))


def load_autoencoder(path: Path, device: torch.device) -> tuple[SliceAutoencoder, dict[str, Any]]:
    """Load an autoencoder checkpoint (weights + config) onto `device`, in eval mode."""
    tensors, config = load_checkpoint(path, kind="autoencoder")
    ae = build_autoencoder(config)
    ae.load_state_dict(tensors)
    return ae.to(device).eval(), config


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), summed over latent elements, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


class AELoss(torch.nn.Module):
    """L1 on the image + (CE + Dice) on the label logits + KL (+ optional 1 − SSIM)."""

    def __init__(self, cfg: AELossConfig, num_classes: int) -> None:
        super().__init__()
        from monai.losses import DiceCELoss, SSIMLoss

        self.cfg = cfg
        self.num_classes = num_classes
        # batch=True: Dice over the whole batch, so slices without a small class do not dominate.
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True) if num_classes else None
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0) if cfg.ssim_weight > 0 else None

    def forward(self, image, logits, target_image, target_label, z_mu, z_sigma) -> tuple[torch.Tensor, dict]:
        parts = {"l1": F.l1_loss(image, target_image)}
        if self.dice_ce is not None:
            parts["label"] = self.cfg.label_weight * self.dice_ce(logits, target_label[:, None].long())
        if self.ssim is not None:
            parts["ssim"] = self.cfg.ssim_weight * self.ssim(image.clamp(0, 1), target_image)
        parts["kl"] = self.cfg.kl_weight * kl_loss(z_mu, z_sigma)
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


class SliceSampler:
    """Random (case, slice) batches; a fraction drawn from slices holding the rarest label.

    Small lesions occupy few slices; drawing part of each batch from those slices is what lets the
    mask channel be learned at all (a plain loss collapses it to background).
    """

    def __init__(self, data: PreparedData, batch_size: int, rare_fraction: float, generator: torch.Generator):
        n, d = data.images.shape[:2]
        self.all = torch.arange(n * d)
        self.rare = torch.empty(0, dtype=torch.long)
        if data.labels is not None and rare_fraction > 0 and data.num_classes > 1:
            rare_class = data.num_classes - 1
            has = (data.labels == rare_class).flatten(2).any(2).flatten()  # (N·D,)
            self.rare = torch.nonzero(has).flatten()
        self.batch_size = batch_size
        self.n_rare = int(round(batch_size * rare_fraction)) if len(self.rare) else 0
        self.generator = generator
        self.depth = d

    def __len__(self) -> int:
        return max(1, len(self.all) // self.batch_size)

    def __iter__(self):
        perm = self.all[torch.randperm(len(self.all), generator=self.generator)]
        n_plain = self.batch_size - self.n_rare
        for b in range(len(self)):
            idx = perm[b * n_plain : (b + 1) * n_plain]
            if self.n_rare:
                pick = torch.randint(len(self.rare), (self.n_rare,), generator=self.generator)
                idx = torch.cat([idx, self.rare[pick]])
            yield idx // self.depth, idx % self.depth


@torch.inference_mode()
def validate_autoencoder(ae: SliceAutoencoder, data: PreparedData, loss_fn: AELoss, batch: int = 64) -> dict[str, float]:
    """Held-out PSNR/SSIM on the image, Dice per foreground class on the mask, and the loss."""
    from monai.metrics import DiceMetric, PSNRMetric, SSIMMetric

    ae.eval()
    psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=3, data_range=1.0)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    losses = []
    device = next(ae.parameters()).device
    for i in range(len(data.case_ids)):
        image = data.images[i]
        label = None if data.labels is None else data.labels[i]
        z = encode_volume(ae, image, label, batch)
        rec, probs = decode_latents(ae, z[None], batch)
        target = image[None, None].float()
        psnr(rec[None].clamp(0, 1), target)
        ssim(rec[None].clamp(0, 1), target)
        if probs is not None:
            k = probs.shape[1]
            pred = F.one_hot(probs.argmax(1), k).permute(0, 4, 1, 2, 3)
            gt = F.one_hot(label[None].long(), k).permute(0, 4, 1, 2, 3)
            dice(pred, gt)
        # loss on this case's slices (posterior mean, deterministic)
        pos = slice_positions(image.shape[0], device)
        x = ae.make_input(image[:, None].to(device), None if label is None else label.to(device))
        z_mu, z_sigma = ae.encode(x, pos)
        img, logits = ae.split(ae.decode(z_mu, pos))
        loss, _ = loss_fn(img, logits, image[:, None].to(device), None if label is None else label.to(device), z_mu, z_sigma)
        losses.append(float(loss))
    out = {"val_loss": float(np.mean(losses)), "psnr": float(psnr.aggregate()), "ssim": float(ssim.aggregate())}
    if data.labels is not None:
        per_case = dice.aggregate()  # (cases, classes-1), NaN where a class is absent from both
        names = {v: k for k, v in data.label_names.items()}
        for c in range(per_case.shape[1]):
            col = per_case[:, c]
            col = col[~torch.isnan(col)]
            out[f"dice_{names.get(c + 1, c + 1)}"] = float(col.mean()) if len(col) else None  # absent class
    return out


def train_autoencoder(
    data: PreparedData,
    out_dir: Path,
    *,
    model_cfg: AutoencoderConfig,
    loss_cfg: AELossConfig,
    train_cfg: TrainConfig,
    preprocess: dict,
    device: torch.device,
    seed: int = 0,
    console=None,
) -> AETrainResult:
    """Fit the slice autoencoder; keep the best checkpoint by held-out loss."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train, val = data.split(train_cfg.val_fraction, seed)
    ae = SliceAutoencoder(model_cfg, image_channels=1, num_classes=data.num_classes).to(device)
    loss_fn = AELoss(loss_cfg, data.num_classes).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sampler = SliceSampler(train, train_cfg.batch_size, loss_cfg.lesion_oversample, gen)
    total_steps = len(sampler) * train_cfg.epochs
    sched = warmup_cosine(opt, train_cfg.warmup_steps, total_steps, train_cfg.max_minutes)
    scaler = grad_scaler(device, train_cfg.precision)
    d, h, w = data.images.shape[1:]
    config = {
        "kind": "autoencoder",
        "model": to_dict(model_cfg),
        "loss": to_dict(loss_cfg),
        "train": to_dict(train_cfg),
        "preprocess": preprocess,
        "num_classes": data.num_classes,
        "label_names": data.label_names,
        "slice_shape": [h, w],
        "depth": d,
        "volume_shape": list(data.volume_shape),
        "reference_affine": np.asarray(data.affines[0]).tolist(),
        "intensity_range": [float(np.mean([r[0] for r in data.intensity_ranges])), float(np.mean([r[1] for r in data.intensity_ranges]))]
        if data.intensity_ranges
        else None,
        "train_cases": train.case_ids,
        "val_cases": [] if val is None else val.case_ids,
        "seed": seed,
    }
    history: list[dict[str, float]] = []
    best = math.inf
    best_metrics: dict[str, float] = {}
    best_path = out_dir / "model.safetensors"
    t0 = time.perf_counter()
    seen = 0
    deadline = None if train_cfg.max_minutes is None else t0 + 60 * train_cfg.max_minutes
    step = 0
    with progress(console) as bar:
        task = bar.add_task("train-ae", total=total_steps, rate="", info="")
        for epoch in range(train_cfg.epochs):
            ae.train()
            run = {}
            for case_idx, slice_idx in sampler:
                image = train.images[case_idx, slice_idx][:, None].to(device)
                label = None if train.labels is None else train.labels[case_idx, slice_idx].to(device)
                pos = (slice_idx.float() / max(d - 1, 1)).to(device)
                with autocast(device, train_cfg.precision):
                    out, z_mu, z_sigma = ae(ae.make_input(image, label), pos)
                img, logits = ae.split(out.float())
                loss, parts = loss_fn(img, logits, image, label, z_mu.float(), z_sigma.float())
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                seen += len(slice_idx)
                for k, v in parts.items():
                    run[k] = run.get(k, 0.0) + v
                rate = seen / (time.perf_counter() - t0)
                bar.update(task, advance=1, rate=f"{rate:.0f} slices/s", info=f"epoch {epoch + 1} loss {float(loss.detach()):.4f}")
                if deadline and time.perf_counter() > deadline:
                    break
            n_batches = max(1, len(sampler))
            metrics = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v / n_batches for k, v in run.items()}}
            if val is not None:
                metrics.update(validate_autoencoder(ae, val, loss_fn))
                score = metrics["val_loss"]
            else:
                score = metrics.get("train_l1", 0.0) + metrics.get("train_label", 0.0)
            metrics["seconds"] = time.perf_counter() - t0
            history.append(metrics)
            shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if v is not None and (k in ("psnr", "ssim") or k.startswith("dice_")))
            bar.console.print(f"epoch {epoch + 1}/{train_cfg.epochs}  loss {score:.4f}  {shown}")
            save_checkpoint(out_dir / "last.safetensors", ae.state_dict(), {**config, "metrics": metrics})
            if score < best:
                best, best_metrics = score, metrics
                save_checkpoint(best_path, ae.state_dict(), {**config, "metrics": metrics})
            atomic_write_text(out_dir / "history.json", json.dumps(history, indent=2))
            if deadline and time.perf_counter() > deadline:
                bar.console.print(f"stopping: --max-minutes {train_cfg.max_minutes} reached")
                break
    elapsed = time.perf_counter() - t0
    # config.json beside the weights describes the best checkpoint
    write_config_json(out_dir, {**config, "metrics": best_metrics})
    return AETrainResult(best_path, best_metrics, history, seen / elapsed, count_parameters(ae))
