"""Training of the slice autoencoder (the first stage of SBLDM)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldmtool.config import AELossConfig, AETrainConfig, AutoencoderConfig, to_dict
from ldmtool.data.prepared import PreparedData
from ldmtool.diffusion.pipeline import decode_latents, encode_volume
from ldmtool.errors import LdmError
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.position import slice_positions
from ldmtool.runtime import autocast, class_index
from ldmtool.train.distributed import DistInfo, StopFlag
from ldmtool.train.loop import LoopState, Trainer, TrainResult, run_training
from ldmtool.train.state import step_generator


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


def fill_missing(target: torch.Tensor, pred: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
    """`target` with its missing voxels (observed 0) taken from `pred` (detached): they add no error."""
    return target if observed is None else torch.where(observed.bool(), target, pred.detach())


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
        self.dice_ce = (
            DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True) if num_classes else None
        )
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0) if cfg.ssim_weight > 0 else None

    def forward(
        self, image, logits, target_image, target_label, z_mu, z_sigma, observed=None
    ) -> tuple[torch.Tensor, dict]:
        parts = {"l1": masked_l1(image, target_image, observed)}
        if self.dice_ce is not None:
            parts["label"] = self.cfg.label_weight * self.dice_ce(logits, target_label[:, None].long())
        if self.ssim is not None:
            target = fill_missing(target_image, image, observed)
            parts["ssim"] = self.cfg.ssim_weight * self.ssim(image.clamp(0, 1), target.clamp(0, 1))
        parts["kl"] = self.cfg.kl_weight * kl_loss(z_mu, z_sigma)
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


class PatchAdversary:
    """The optional adversarial term of the autoencoder: MONAI's PatchDiscriminator on the image
    channels of slices, MONAI's PatchAdversarialLoss (least squares), as in MONAI's generative
    tutorials. L1 and SSIM reward the mean of the plausible slices, which blurs fine structure; the
    discriminator judges local patches, which rewards their texture. Its own AdamW steps once after
    every autoencoder step (`update`); with several processes its gradients are averaged here, as
    it lives outside the autoencoder's DDP wrapper."""

    def __init__(self, channels: int, slice_shape: tuple[int, int], lr: float, weight_decay: float, info: DistInfo):
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        # three stride-2 layers on slices of 32+ voxels, fewer on smaller ones (its last two 4×4
        # convolutions need ≥ 4 voxels left on each side)
        layers = max(1, min(3, int(math.log2(max(min(slice_shape) // 4, 1)))))
        self.net = PatchDiscriminator(spatial_dims=2, channels=32, in_channels=channels, num_layers_d=layers)
        self.net.to(info.device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.loss = PatchAdversarialLoss(criterion="least_squares")
        self.info = info
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def _logits(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        # fp16 would need a grad scaler of its own; the small discriminator runs in fp32 then
        with autocast(self.info.device, "fp32" if precision == "fp16" else precision):
            return self.net(x)[-1].float()

    def generator_term(self, fake: torch.Tensor, real: torch.Tensor, precision: str) -> torch.Tensor:
        """The autoencoder's term (its slices judged real); keeps both for the discriminator's step.
        The discriminator's weights take no gradient from it."""
        self.net.requires_grad_(False)
        try:
            term = self.loss(self._logits(fake, precision), target_is_real=True, for_discriminator=False)
        finally:
            self.net.requires_grad_(True)
        self.pending = (fake.detach(), real.detach())
        return term

    def update(self, precision: str) -> float | None:
        """One step of the discriminator on the last batch (reconstructions fake, inputs real)."""
        if self.pending is None:
            return None
        fake, real = self.pending
        self.pending = None
        loss = 0.5 * (
            self.loss(self._logits(fake, precision), target_is_real=False, for_discriminator=True)
            + self.loss(self._logits(real, precision), target_is_real=True, for_discriminator=True)
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.info.enabled:
            import torch.distributed as dist

            for p in self.net.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.info.world
        self.opt.step()
        return float(loss.detach())


class SliceSampler:
    """Random (case, slice) batches; a fraction drawn from slices holding the rarest label.

    Small lesions occupy few slices; drawing part of each batch from those slices is what lets the
    mask channel be learned at all (a plain loss collapses it to background).

    The plain part walks through a DistributedSampler over all slices (one shuffled order per
    epoch, seeded by seed + epoch; with several processes each rank gets its own share); the
    lesion part is drawn from a generator seeded by (seed, rank, epoch). An epoch's batches are a
    function of (seed, rank, epoch) only, which is what lets a resumed run go on mid-epoch.
    """

    def __init__(
        self, data: PreparedData, batch_size: int, rare_fraction: float, seed: int = 0, rank: int = 0, world: int = 1
    ):
        from torch.utils.data import DistributedSampler

        n, d = data.images.shape[:2]
        if n * d < world:
            raise LdmError(f"{n * d} slices cannot be shared by {world} processes")
        self.plain = DistributedSampler(
            range(n * d), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
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
def validate_autoencoder(
    ae: SliceAutoencoder, data: PreparedData, loss_fn: AELoss, batch: int = 64
) -> dict[str, float]:
    """Held-out PSNR/SSIM on the image, Dice per foreground class on the mask, and the loss.
    Incomplete cases: PSNR over observed voxels, SSIM with missing voxels counted as exact."""
    from monai.metrics import DiceMetric, PSNRMetric, SSIMMetric

    ae.eval()
    # MONAI's 11-voxel window, narrowed (odd) along axes of thin volumes, which it could not slide over
    window = tuple(min(11, n - 1 + n % 2) for n in data.grid)
    psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=3, data_range=1.0, win_size=window)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    losses, psnr_obs = [], []
    device = next(ae.parameters()).device
    for i in range(len(data.case_ids)):
        image = data.case(i)  # (D, C, H, W)
        label = None if data.labels is None else data.labels[i]
        obs = data.case(i, observed=True)
        z = encode_volume(ae, image, label, batch, observed=obs)
        rec, probs = decode_latents(ae, z[None], batch)
        # (1, C, D, H, W) for the metrics, channels as MONAI's channel axis
        target = image.transpose(0, 1)[None].float()
        rec = rec.reshape(1, *image.shape).transpose(1, 2).clamp(0, 1)
        if obs is None:
            psnr(rec, target)
        else:  # incomplete: PSNR over the observed voxels; SSIM with missing voxels set to the target's
            keep = obs.transpose(0, 1)[None].bool()
            mse = float(((rec - target)[keep] ** 2).mean())
            psnr_obs.append(10 * math.log10(1.0 / max(mse, 1e-12)))
            rec = torch.where(keep, rec, target)
        ssim(rec, target)
        if probs is not None:
            k = probs.shape[1]
            pred = F.one_hot(class_index(probs, 1), k).permute(0, 4, 1, 2, 3)
            gt = F.one_hot(label[None].long(), k).permute(0, 4, 1, 2, 3)
            dice(pred, gt)
        # loss on this case's slices (posterior mean, deterministic)
        pos = slice_positions(image.shape[0], device)
        obs_in = None if obs is None else obs.to(device, torch.float32)
        x = ae.make_input(image.to(device), None if label is None else label.to(device), obs_in)
        z_mu, z_sigma = ae.encode(x, pos)
        img, logits = ae.split(ae.decode(z_mu, pos))
        loss, _ = loss_fn(
            img, logits, image.to(device), None if label is None else label.to(device), z_mu, z_sigma, obs_in
        )
        losses.append(float(loss))
    out = {
        "val_loss": float(np.mean(losses)),
        "psnr": float(np.mean(psnr_obs)) if psnr_obs else float(psnr.aggregate()),
        "ssim": float(ssim.aggregate()),
    }
    if data.labels is not None:
        per_case = dice.aggregate()  # (cases, classes-1), NaN where a class is absent from both
        names = {v: k for k, v in data.label_names.items()}
        for c in range(per_case.shape[1]):
            col = per_case[:, c]
            col = col[~torch.isnan(col)]
            out[f"dice_{names.get(c + 1, c + 1)}"] = float(col.mean()) if len(col) else None  # absent class
    return out


class AutoencoderTrainer(Trainer):
    """The slice autoencoder for `run_training`: batches of slices, L1 + label + KL (+ SSIM, +
    adversarial) loss, validation on held-out volumes; best checkpoint: the lowest held-out loss
    (without held-out cases: the lowest training L1 + label loss of an epoch). Also keeps
    last.safetensors. With `adversarial_weight` > 0 the discriminator and its optimiser are part of
    the resumable state, not of the checkpoints."""

    kind, label, unit = "autoencoder", "train-ae", "slices"
    best_key, best_mode, keep_last, clip_grad = "val_loss", "min", True, None

    def __init__(
        self,
        data: PreparedData,
        *,
        model_cfg: AutoencoderConfig,
        loss_cfg: AELossConfig,
        train_cfg: AETrainConfig,
        preprocess: dict,
        info: DistInfo,
        seed: int = 0,
        missing_rate: float = 0.0,
        modality: str = "OT",
    ) -> None:
        self.cfg, self.info, self.seed, self.loss_cfg = train_cfg, info, seed, loss_cfg
        device = info.device
        torch.manual_seed(seed)
        self.train, self.val = data.split(train_cfg.val_fraction, seed)
        self.model = SliceAutoencoder(model_cfg, image_channels=data.channels, num_classes=data.num_classes).to(device)
        self.loss_fn = AELoss(loss_cfg, data.num_classes).to(device)
        self.sampler = SliceSampler(
            self.train, train_cfg.batch_size, loss_cfg.lesion_oversample, seed, info.rank, info.world
        )
        self.steps_per_epoch = len(self.sampler)
        self.depth = data.grid[0]
        self.adversary = None
        if loss_cfg.adversarial_weight > 0:
            self.adversary = PatchAdversary(data.channels, data.grid[1:], train_cfg.lr, train_cfg.weight_decay, info)
        self.config = self._checkpoint_config(data, model_cfg, preprocess, missing_rate)
        self.config["modality"] = modality  # of the training data: what synthetic DICOM is written as
        if data.image_dims == 2:  # 2D images: the denoiser is 2D and samples are written as images
            self.config.update(image_dims=2, image_format=data.image_format, image_dtype=data.image_dtype)
        self.settings = {
            "model": to_dict(model_cfg),
            "loss": to_dict(loss_cfg),
            "preprocess": preprocess,
            "cases": data.case_ids,
            "seed": seed,
            "shape": list(data.images.shape),
            "world": info.world,
            "missing": data.missing_fraction,
        }

    def _checkpoint_config(
        self, data: PreparedData, model_cfg: AutoencoderConfig, preprocess: dict, missing_rate: float
    ) -> dict:
        d, h, w = data.grid
        ranges = data.intensity_ranges
        channels = {  # several contrasts: their names and each one's intensity range
            "image_channels": data.channels,
            "channel_names": list(data.channel_names),
            **({"channel_intensity_ranges": data.channel_intensity_ranges()} if data.channels > 1 and ranges else {}),
        }
        return {
            "kind": self.kind,
            "model": to_dict(model_cfg),
            "loss": to_dict(self.loss_cfg),
            "train": to_dict(self.cfg),
            "preprocess": preprocess,
            "num_classes": data.num_classes,
            "label_names": data.label_names,
            "slice_shape": [h, w],
            "depth": d,
            "volume_shape": list(data.volume_shape),
            "reference_affine": np.asarray(data.affines[0]).tolist(),
            "intensity_range": list(data.channel_intensity_ranges()[0]) if ranges else None,
            "missing_fraction": data.missing_fraction,
            "missing_rate": missing_rate,  # simulated MCAR rate (train-ldm draws the same masks by default)
            "train_cases": self.train.case_ids,
            "val_cases": [] if self.val is None else self.val.case_ids,
            "seed": self.seed,
            **channels,
        }

    def epoch_batches(self, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        return list(self.sampler)

    def train_step(self, net, batch, step):
        case_idx, slice_idx = batch
        ae, train, device = self.model, self.train, self.info.device
        ae.train()
        image = train.slices(case_idx, slice_idx).to(device)  # (B, C, H, W)
        label = None if train.labels is None else train.labels[case_idx, slice_idx].to(device)
        obs = train.slices(case_idx, slice_idx, observed=True)
        obs = None if obs is None else obs.to(device, torch.float32)
        pos = (slice_idx.float() / max(self.depth - 1, 1)).to(device)
        with autocast(device, self.cfg.precision):
            out, z_mu, z_sigma = net(ae.make_input(image, label, obs), pos, self.loss_cfg.latent_noise)
        img, logits = ae.split(out.float())
        loss, parts = self.loss_fn(img, logits, image, label, z_mu.float(), z_sigma.float(), obs)
        if self.adversary is not None and step >= self.loss_cfg.adversarial_start:
            # missing voxels of incomplete inputs take the reconstruction's values (as for SSIM)
            real = fill_missing(image, img, obs)
            term = self.loss_cfg.adversarial_weight * self.adversary.generator_term(img, real, self.cfg.precision)
            loss = loss + term
            parts["adv"] = float(term.detach())
        return loss, parts, len(slice_idx)

    def after_step(self, step: int) -> dict[str, float]:
        if self.adversary is None:
            return {}
        d_loss = self.adversary.update(self.cfg.precision)
        return {} if d_loss is None else {"disc": d_loss}

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {} if self.adversary is None else {"discriminator": self.adversary.opt}

    def state_modules(self) -> dict[str, torch.nn.Module]:
        modules = super().state_modules()
        return modules if self.adversary is None else {**modules, "discriminator": self.adversary.net}

    def train_metrics(self, loop: LoopState) -> dict[str, float]:
        return {f"train_{k}": v / self.steps_per_epoch for k, v in loop.epoch_sums.items()}

    def validation_step(self) -> dict[str, float]:
        # every rank validates (MONAI's metrics all-gather when a process group exists)
        return {} if self.val is None else validate_autoencoder(self.model, self.val, self.loss_fn)

    def score(self, row: dict[str, Any]) -> float:
        return row["val_loss"] if "val_loss" in row else row.get("train_l1", 0.0) + row.get("train_label", 0.0)

    def report(self, row: dict[str, Any]) -> str:
        shown = "  ".join(
            f"{k} {v:.3f}" for k, v in row.items() if v is not None and (k in ("psnr", "ssim") or k.startswith("dice_"))
        )
        return f"epoch {row['epoch']}  loss {self.score(row):.4f}  {shown}"


def train_autoencoder(
    data: PreparedData,
    out_dir: Path,
    *,
    model_cfg: AutoencoderConfig,
    loss_cfg: AELossConfig,
    train_cfg: AETrainConfig,
    preprocess: dict,
    device: torch.device,
    seed: int = 0,
    console=None,
    dist: DistInfo | None = None,
    resume: str = "never",
    stop: StopFlag | None = None,
    missing_rate: float = 0.0,
    modality: str = "OT",
) -> TrainResult:
    """Fit the slice autoencoder; model.safetensors is the checkpoint of the lowest held-out loss.

    `dist`: the torchrun process group (`batch_size` slices per process and step, DDP gradients,
    rank 0 writes); `resume` and `stop` as in `run_training`. `modality` (CT, MR or OT) is that
    of the training data, recorded in the checkpoint for synthetic DICOM."""
    info = dist or DistInfo(device=device)
    trainer = AutoencoderTrainer(
        data,
        model_cfg=model_cfg,
        loss_cfg=loss_cfg,
        train_cfg=train_cfg,
        preprocess=preprocess,
        info=info,
        seed=seed,
        missing_rate=missing_rate,
        modality=modality,
    )
    return run_training(trainer, out_dir, resume=resume, stop=stop, console=console)
