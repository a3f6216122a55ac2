"""Training of the slice autoencoder (the first stage of SBLDM)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldmtool.config import AELossConfig, AutoencoderConfig, TrainConfig, to_dict
from ldmtool.data.prepared import PreparedData
from ldmtool.diffusion.pipeline import decode_latents, encode_volume
from ldmtool.io.atomic import atomic_write_text
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.position import slice_positions
from ldmtool.models.checkpoint import save_checkpoint, write_config_json
from ldmtool.errors import LdmError
from ldmtool.runtime import autocast, progress
from ldmtool.train.common import count_parameters, grad_scaler, optimizer_step, warmup_cosine
from ldmtool.train.distributed import DistInfo, StopFlag, finish, step_sync, wrap_ddp
from ldmtool.train.state import previous_run, restore, save_state, step_generator


@dataclass
class AETrainResult:
    best_path: Path
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    slices_per_second: float
    parameters: int
    world_size: int = 1
    effective_batch_size: int = 0
    lr: float = 0.0
    resumed_from: int | None = None
    in_sync: bool | None = None
    already_complete: bool = False


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), summed over latent elements, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


def masked_l1(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute error over the observed voxels only (normalised by their count)."""
    if observed is None:
        return F.l1_loss(pred, target)
    w = observed.to(pred.dtype)
    return ((pred - target).abs() * w).sum() / w.sum().clamp_min(1.0)


class AELoss(torch.nn.Module):
    """L1 on the image + (CE + Dice) on the label logits + KL (+ optional 1 − SSIM).

    With incomplete data (`observed` given) the image terms count observed voxels only: L1 is
    normalised by the observed count, and SSIM compares the image with the reconstruction where
    missing voxels take the reconstruction's values (they add no error)."""

    def __init__(self, cfg: AELossConfig, num_classes: int) -> None:
        super().__init__()
        from monai.losses import DiceCELoss, SSIMLoss

        self.cfg = cfg
        self.num_classes = num_classes
        # batch=True: Dice over the whole batch, so slices without a small class do not dominate.
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True) if num_classes else None
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0) if cfg.ssim_weight > 0 else None

    def forward(self, image, logits, target_image, target_label, z_mu, z_sigma, observed=None) -> tuple[torch.Tensor, dict]:
        parts = {"l1": masked_l1(image, target_image, observed)}
        if self.dice_ce is not None:
            parts["label"] = self.cfg.label_weight * self.dice_ce(logits, target_label[:, None].long())
        if self.ssim is not None:
            target = target_image if observed is None else torch.where(observed.bool(), target_image, image.detach())
            parts["ssim"] = self.cfg.ssim_weight * self.ssim(image.clamp(0, 1), target.clamp(0, 1))
        parts["kl"] = self.cfg.kl_weight * kl_loss(z_mu, z_sigma)
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


class SliceSampler:
    """Random (case, slice) batches; a fraction drawn from slices holding the rarest label.

    Small lesions occupy few slices; drawing part of each batch from those slices is what lets the
    mask channel be learned at all (a plain loss collapses it to background).

    The plain part walks through a DistributedSampler over all slices (one shuffled order per
    epoch, seeded by seed + epoch; with several processes each rank gets its own share); the
    lesion part is drawn from a generator seeded by (seed, rank, epoch). An epoch's batches are a
    function of (seed, rank, epoch) only, which is what lets a resumed run go on mid-epoch.
    """

    def __init__(self, data: PreparedData, batch_size: int, rare_fraction: float, seed: int = 0, rank: int = 0, world: int = 1):
        from torch.utils.data import DistributedSampler

        n, d = data.images.shape[:2]
        if n * d < world:
            raise LdmError(f"{n * d} slices cannot be shared by {world} processes")
        self.plain = DistributedSampler(range(n * d), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.rare = torch.empty(0, dtype=torch.long)
        if data.labels is not None and rare_fraction > 0 and data.num_classes > 1:
            rare_class = data.num_classes - 1
            has = (data.labels == rare_class).flatten(2).any(2).flatten()  # (N·D,)
            self.rare = torch.nonzero(has).flatten()
        self.batch_size = batch_size
        self.n_rare = int(round(batch_size * rare_fraction)) if len(self.rare) else 0
        self.seed, self.rank, self.epoch = seed, rank, 0
        self.depth = d

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.plain.set_epoch(epoch)

    def __len__(self) -> int:
        return max(1, len(self.plain) // self.batch_size)

    def __iter__(self):
        perm = torch.tensor(list(self.plain), dtype=torch.long)
        gen = step_generator(self.seed, self.rank, self.epoch, 0x5A)
        n_plain = self.batch_size - self.n_rare
        for b in range(len(self)):
            idx = perm[b * n_plain : (b + 1) * n_plain]
            if self.n_rare:
                pick = torch.randint(len(self.rare), (self.n_rare,), generator=gen)
                idx = torch.cat([idx, self.rare[pick]])
            yield idx // self.depth, idx % self.depth


@torch.inference_mode()
def validate_autoencoder(ae: SliceAutoencoder, data: PreparedData, loss_fn: AELoss, batch: int = 64) -> dict[str, float]:
    """Held-out PSNR/SSIM on the image, Dice per foreground class on the mask, and the loss.
    Incomplete cases: PSNR over observed voxels, SSIM with missing voxels counted as exact."""
    from monai.metrics import DiceMetric, PSNRMetric, SSIMMetric

    ae.eval()
    psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=3, data_range=1.0)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    losses, psnr_obs = [], []
    device = next(ae.parameters()).device
    for i in range(len(data.case_ids)):
        image = data.images[i]
        label = None if data.labels is None else data.labels[i]
        obs = None if data.observed is None else data.observed[i]
        z = encode_volume(ae, image, label, batch, observed=obs)
        rec, probs = decode_latents(ae, z[None], batch)
        target = image[None, None].float()
        rec = rec[None].clamp(0, 1)
        if obs is None:
            psnr(rec, target)
        else:  # incomplete: PSNR over the observed voxels; SSIM with missing voxels set to the target's
            keep = obs[None, None].bool()
            mse = float(((rec - target)[keep] ** 2).mean())
            psnr_obs.append(10 * math.log10(1.0 / max(mse, 1e-12)))
            rec = torch.where(keep, rec, target)
        ssim(rec, target)
        if probs is not None:
            k = probs.shape[1]
            pred = F.one_hot(probs.argmax(1), k).permute(0, 4, 1, 2, 3)
            gt = F.one_hot(label[None].long(), k).permute(0, 4, 1, 2, 3)
            dice(pred, gt)
        # loss on this case's slices (posterior mean, deterministic)
        pos = slice_positions(image.shape[0], device)
        obs_in = None if obs is None else obs[:, None].to(device, torch.float32)
        x = ae.make_input(image[:, None].to(device), None if label is None else label.to(device), obs_in)
        z_mu, z_sigma = ae.encode(x, pos)
        img, logits = ae.split(ae.decode(z_mu, pos))
        loss, _ = loss_fn(img, logits, image[:, None].to(device), None if label is None else label.to(device), z_mu, z_sigma, obs_in)
        losses.append(float(loss))
    out = {"val_loss": float(np.mean(losses)), "psnr": float(np.mean(psnr_obs)) if psnr_obs else float(psnr.aggregate()),
           "ssim": float(ssim.aggregate())}
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
    dist: DistInfo | None = None,
    resume: str = "never",
    stop: StopFlag | None = None,
    missing_rate: float = 0.0,
) -> AETrainResult:
    """Fit the slice autoencoder; keep the best checkpoint by held-out loss.

    `dist`, `resume` and `stop` as in `train_latent_diffusion`: `batch_size` slices per process
    and step, DDP gradients, rank 0 validates and writes; a resumed run goes on at the same batch
    of the same epoch.
    """
    info = dist or DistInfo(device=device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train, val = data.split(train_cfg.val_fraction, seed)
    ae = SliceAutoencoder(model_cfg, image_channels=1, num_classes=data.num_classes).to(device)
    loss_fn = AELoss(loss_cfg, data.num_classes).to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sampler = SliceSampler(train, train_cfg.batch_size, loss_cfg.lesion_oversample, seed, info.rank, info.world)
    per_epoch = len(sampler)
    total_steps = per_epoch * train_cfg.epochs
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
        "missing_fraction": data.missing_fraction,
        "missing_rate": missing_rate,  # simulated MCAR rate (train-ldm draws the same masks by default)
        "train_cases": train.case_ids,
        "val_cases": [] if val is None else val.case_ids,
        "seed": seed,
    }
    previous, settings, elapsed_before = previous_run(out_dir, resume, {
        "model": to_dict(model_cfg), "loss": to_dict(loss_cfg), "preprocess": preprocess, "cases": data.case_ids, "seed": seed,
        "shape": list(data.images.shape), "world": info.world, "missing": data.missing_fraction,
    }, to_dict(train_cfg))
    sched = warmup_cosine(opt, train_cfg.warmup_steps, total_steps, train_cfg.max_minutes, elapsed_before)
    scaler = grad_scaler(device, train_cfg.precision)

    history: list[dict[str, float]] = []
    best = math.inf
    best_metrics: dict[str, float] = {}
    best_path = out_dir / "model.safetensors"
    step, run = 0, {}
    if previous is not None:
        restore(previous, modules={"model": ae}, optimizer=opt, scheduler=sched, scaler=scaler)
        m = previous.meta
        step, run, history = previous.step, dict(m["epoch_sums"]), list(m["history"])
        best = m["best_score"] if m["best_score"] is not None else math.inf
        best_metrics = m["best_metrics"]
    resumed_from = step if previous is not None else None
    budget = None if train_cfg.max_minutes is None else 60 * train_cfg.max_minutes
    result_args = dict(parameters=count_parameters(ae), world_size=info.world, effective_batch_size=train_cfg.batch_size * info.world,
                       lr=train_cfg.lr, resumed_from=resumed_from)
    if step >= total_steps or (budget is not None and elapsed_before >= budget):
        return AETrainResult(best_path, best_metrics, history, 0.0, **result_args, already_complete=True)
    net = wrap_ddp(ae, info)
    t0 = time.perf_counter()
    seen = 0
    save_every = train_cfg.checkpoint_every  # besides every epoch end
    last_save = time.perf_counter()

    def write_state(complete: bool) -> None:
        save_state(out_dir, modules={"model": ae}, optimizer=opt, scheduler=sched, scaler=scaler, meta={
            "kind": "autoencoder", "settings": settings, "step": step, "total_steps": total_steps, "epoch_sums": run,
            "history": history, "best_score": None if math.isinf(best) else best, "best_metrics": best_metrics,
            "elapsed_seconds": elapsed_before + time.perf_counter() - t0, "complete": complete, "world_size": info.world,
            "effective_batch_size": train_cfg.batch_size * info.world,
        })

    halt_reason = ""
    start_epoch, position = divmod(step, per_epoch)
    with progress(console) as bar:
        task = bar.add_task("train-ae", total=total_steps, completed=step, rate="", info="")
        for epoch in range(start_epoch, train_cfg.epochs):
            sampler.set_epoch(epoch)
            if epoch > start_epoch:
                run = {}
            for b, (case_idx, slice_idx) in enumerate(sampler):
                if epoch == start_epoch and b < position:
                    continue  # done before the run was resumed
                ae.train()
                image = train.images[case_idx, slice_idx][:, None].to(device)
                label = None if train.labels is None else train.labels[case_idx, slice_idx].to(device)
                obs = None if train.observed is None else train.observed[case_idx, slice_idx][:, None].to(device, torch.float32)
                pos = (slice_idx.float() / max(d - 1, 1)).to(device)
                with autocast(device, train_cfg.precision):
                    out, z_mu, z_sigma = net(ae.make_input(image, label, obs), pos, loss_cfg.latent_noise)
                img, logits = ae.split(out.float())
                loss, parts = loss_fn(img, logits, image, label, z_mu.float(), z_sigma.float(), obs)
                optimizer_step(loss, ae, opt, scaler, sched, clip=None)
                step += 1
                seen += len(slice_idx) * info.world
                for k, v in parts.items():
                    run[k] = run.get(k, 0.0) + v
                out_of_time = budget is not None and elapsed_before + time.perf_counter() - t0 > budget
                lv, (out_of_time, signalled) = step_sync(float(loss.detach()), [out_of_time, bool(stop and stop.requested)], info)
                halt_reason = "signal" if signalled else ("time" if out_of_time else "")
                rate = seen / (time.perf_counter() - t0)
                bar.update(task, advance=1, rate=f"{rate:.0f} slices/s", info=f"epoch {epoch + 1} loss {lv:.4f}")
                end_of_epoch = b == per_epoch - 1
                timed_save = time.perf_counter() - last_save > 60 * train_cfg.checkpoint_minutes
                if info.is_main and not end_of_epoch and (halt_reason == "signal" or timed_save or (save_every and step % save_every == 0)):
                    write_state(complete=False)
                    last_save = time.perf_counter()
                if halt_reason:
                    break
            if halt_reason == "signal" and not end_of_epoch:
                break  # mid-epoch: state saved above; validation happens when the epoch is finished
            # every rank validates (MONAI's metrics all-gather when a process group exists, and the
            # other ranks would wait for rank 0 anyway); rank 0 alone prints and writes
            metrics = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v / per_epoch for k, v in run.items()}}
            if val is not None:
                metrics.update(validate_autoencoder(ae, val, loss_fn))
                score = metrics["val_loss"]
            else:
                score = metrics.get("train_l1", 0.0) + metrics.get("train_label", 0.0)
            metrics["seconds"] = elapsed_before + time.perf_counter() - t0
            history.append(metrics)
            is_best = score < best
            if is_best:
                best, best_metrics = score, metrics
            run = {}
            if info.is_main:
                shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if v is not None and (k in ("psnr", "ssim") or k.startswith("dice_")))
                bar.console.print(f"epoch {epoch + 1}/{train_cfg.epochs}  loss {score:.4f}  {shown}")
                save_checkpoint(out_dir / "last.safetensors", ae.state_dict(), {**config, "metrics": metrics})
                if is_best:
                    save_checkpoint(best_path, ae.state_dict(), {**config, "metrics": metrics})
                atomic_write_text(out_dir / "history.json", json.dumps(history, indent=2))
                write_state(complete=step >= total_steps or halt_reason == "time")
                last_save = time.perf_counter()
            if halt_reason:
                if halt_reason == "time":
                    bar.console.print(f"stopping: --max-minutes {train_cfg.max_minutes} reached")
                break
    in_sync = finish(info, ae, stop, halt_reason == "signal", step, total_steps, out_dir)
    elapsed = time.perf_counter() - t0
    if info.is_main:  # config.json beside the weights describes the best checkpoint
        write_config_json(out_dir, {**config, "metrics": best_metrics})
    return AETrainResult(best_path, best_metrics, history, seen / elapsed, **result_args, in_sync=in_sync)
