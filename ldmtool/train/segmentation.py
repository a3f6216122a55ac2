"""Training and inference of the segmenters: LDSeg (latent diffusion) and the UNet baseline.

Both train on the same data with the same loss terms and schedule:
L = CE + γ·Dice (on the decoded label probabilities) [+ λ·MSE(ε̂, ε) for LDSeg], AdamW with warmup
and cosine decay, batches of slices (2D, a share drawn from slices holding the rarest class) or of
volumes (3D). Validation Dice per class on held-out cases after every epoch; the best checkpoint
is kept. Volumes of different shapes train in their own voxel grids: each batch is zero-padded to
its largest member (rounded up to the network's size multiple), 2D batches draw only slices that
exist, and the checkpoint records the largest training size as `patch_size` (segment tiles larger
inputs with windows of that size). The run is resumable like the other trainers (train_state.safetensors + state.json).

LDSeg's clean-latent estimate fed to the label decoder in training is, by default, the x0 formula
ẑ_0 = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, clamped to ±5 (`decoder_input: x0`): exactly what the DDIM sampler
hands the decoder at inference. The paper's ẑ_0 = z_t − ε̂ (`decoder_input: paper`) is kept as an
option; on the phantoms it trained a decoder that does not fit DDIM's output, lesion Dice near
zero (benchmarks/results/unstamped_runs.md, "LDSeg decoder input").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldmtool.config import SegLossConfig, SegModelConfig, SegTrainConfig, to_dict
from ldmtool.data.prepared import PreparedData
from ldmtool.errors import LdmError
from ldmtool.models.ldseg import LDSeg, build_segmenter, seg_schedule, size_multiple
from ldmtool.pipelines.segmenter import DEFAULT_STEPS, LATENT_CLIP, pad_to_multiple, predict_volume
from ldmtool.runtime import autocast, class_index
from ldmtool.train.autoencoder import SliceSampler
from ldmtool.train.distributed import DistInfo, StopFlag
from ldmtool.train.loop import LoopState, Trainer, TrainResult, run_training
from ldmtool.train.state import step_generator

KIND = "segmenter"


def dice_per_class(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each foreground class between two (D, H, W) label maps (a class absent from both
    counts as 1, absent from one as 0)."""
    from ldmtool.metrics import segmentation_metrics

    return segmentation_metrics(pred, truth, num_classes, metrics=("dice",))["dice"]


# ------------------------------------------------------------------------------------------------
# training


def _loss_fn(cfg: SegLossConfig):
    from monai.losses import DiceCELoss

    # batch=True: Dice over the whole batch, so slices without a small class do not dominate
    return DiceCELoss(
        to_onehot_y=True, softmax=True, include_background=False, batch=True, lambda_dice=cfg.dice_weight, lambda_ce=1.0
    )


def check_segmentation_data(data: PreparedData, model_cfg: SegModelConfig) -> None:
    """One-line errors for data a segmenter cannot train on (no labels, too small for the model)."""
    if data.labels is None:
        raise LdmError("train-seg needs labels (imagesTr/ + labelsTr/)")
    if data.num_classes < 2:
        raise LdmError("train-seg needs at least one foreground class (dataset.json labels or --labels)")
    mult = size_multiple(model_cfg)
    d, h, w = data.grid
    if model_cfg.dims == 3 and min(d, h, w) < mult:
        raise LdmError(
            f"volumes of {d}×{h}×{w} (slices × rows × columns) are too small for this 3D model "
            f"(it downsamples by {mult}); use --dims 2 or fewer --channels levels"
        )
    if model_cfg.dims == 2 and min(h, w) < mult:
        raise LdmError(
            f"slices of {h}×{w} are too small for this model (it downsamples by {mult}); use fewer --channels levels"
        )


class _ValidSliceSampler(SliceSampler):
    """SliceSampler over the slices that exist where cases of different depths share the arrays."""

    def __init__(self, data: PreparedData, batch_size: int, rare_fraction: float, seed: int = 0):
        super().__init__(data, batch_size, rare_fraction, seed)
        d = data.images.shape[1]
        exists = torch.zeros(len(data.case_ids), d, dtype=torch.bool)
        for i in range(len(data.case_ids)):
            exists[i, : data.case_size(i)[0]] = True
        self.valid = torch.nonzero(exists.flatten()).flatten()  # flat (case, slice) indices that exist
        self.plain = type(self.plain)(
            range(len(self.valid)), num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True
        )
        self.rare = self.rare[exists.flatten()[self.rare]] if len(self.rare) else self.rare

    def __iter__(self):
        for cases, slices in super().__iter__():
            flat = cases * self.depth + slices
            plain = flat[: self.batch_size - self.n_rare]  # positions into self.valid
            flat = torch.cat([self.valid[plain], flat[len(plain) :]])
            yield flat // self.depth, flat % self.depth


def patch_size(data: PreparedData, dims: int, multiple: int) -> list[int]:
    """The largest training input, (H, W) in 2D or (D, H, W) in 3D, rounded up to `multiple`."""
    sizes = [data.case_size(i) for i in range(len(data.case_ids))]
    largest = [max(s[k] for s in sizes) for k in range(3)][-dims:]
    return [n + (-n) % multiple for n in largest]


class SegmenterTrainer(Trainer):
    """LDSeg or the UNet baseline for `run_training` (one process): batches of slices (2D, a share
    from slices holding the rarest class) or volumes (3D); validation Dice per class on held-out
    cases at every epoch end. Best checkpoint: the highest mean held-out Dice (without held-out
    cases: the lowest running training loss)."""

    kind, label = KIND, "train-seg"
    best_key, best_mode = "dice_mean", "max"

    def __init__(
        self,
        data: PreparedData,
        *,
        model_cfg: SegModelConfig,
        loss_cfg: SegLossConfig,
        train_cfg: SegTrainConfig,
        preprocess: dict[str, Any],
        device: torch.device,
        seed: int = 0,
        val_steps: int = DEFAULT_STEPS,
    ) -> None:
        check_segmentation_data(data, model_cfg)
        self.cfg, self.info, self.seed = train_cfg, DistInfo(device=device), seed
        self.model_cfg, self.loss_cfg, self.val_steps = model_cfg, loss_cfg, val_steps
        self.num_classes, self.label_names = data.num_classes, data.label_names
        torch.manual_seed(seed)
        train_idx, val_idx = data.split_indices(train_cfg.val_fraction, seed)
        self.train, self.n_train = data.subset(train_idx), len(train_idx)
        self.val = data.subset(val_idx) if val_idx else None
        self.mult = size_multiple(model_cfg)
        self.model = build_segmenter(model_cfg, data.num_classes, data.channels).to(device)
        self.ldseg = isinstance(self.model, LDSeg)
        self.unit = "slices" if model_cfg.dims == 2 else "volumes"
        sampler = SliceSampler if data.shapes is None else _ValidSliceSampler
        self.sampler = (
            sampler(self.train, train_cfg.batch_size, loss_cfg.oversample, seed) if model_cfg.dims == 2 else None
        )
        self.steps_per_epoch = (
            len(self.sampler) if self.sampler is not None else max(1, self.n_train // train_cfg.batch_size)
        )
        self.loss_fn = _loss_fn(loss_cfg)
        if self.ldseg:
            from ldmtool.diffusion.samplers import training_scheduler

            self.noise_sched = training_scheduler(seg_schedule(model_cfg))
            self.alphas = self.noise_sched.alphas_cumprod.to(device)
        self.settings = {
            "kind": KIND,
            "model": to_dict(model_cfg),
            "loss": to_dict(loss_cfg),
            "cases": data.case_ids,
            "seed": seed,
            "preprocess": preprocess,
        }
        self.config = {
            "kind": KIND,
            "model": to_dict(model_cfg),
            "loss": to_dict(loss_cfg),
            "train": to_dict(train_cfg),
            "preprocess": preprocess,
            "label_names": data.label_names,
            "num_classes": data.num_classes,
            "patch_size": patch_size(data, model_cfg.dims, self.mult),
            "train_cases": [data.case_ids[i] for i in train_idx],
            "val_cases": [data.case_ids[i] for i in val_idx],
            "seed": seed,
            "image_channels": data.channels,  # the contrasts read together, in this order
            "channel_names": list(data.channel_names),
        }

    def epoch_batches(self, epoch: int) -> list[tuple[torch.Tensor, ...]]:
        """Index tuples into the training arrays: (case, slice) in 2D, (case,) in 3D."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            return list(self.sampler)
        order = torch.randperm(self.n_train, generator=step_generator(self.seed, 0, epoch, 0x3D))
        bs = self.cfg.batch_size
        return [(order[s : s + bs],) for s in range(0, self.steps_per_epoch * bs, bs)]

    def train_step(self, net, batch, step):
        self.model.train()
        dims, device = self.model_cfg.dims, self.info.device
        crop = (...,) + self.batch_extent(batch[0])
        x, _ = pad_to_multiple(self.network_input(self.train.images[batch])[crop], self.mult, dims)
        y, _ = pad_to_multiple(self.train.labels[batch][crop], self.mult, dims)
        loss, parts = self.loss_on(x.to(device), y.to(device), step_generator(self.seed, 0, step))
        return loss, parts, x.shape[0]

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """Indexed training images → the network's (B, C, H, W) slices or (B, C, D, H, W) volumes."""
        if self.train.images.ndim == 4:  # one channel
            return images[:, None]
        return images if self.model_cfg.dims == 2 else images.transpose(1, 2)  # (B, D, C, ...) → (B, C, D, ...)

    def batch_extent(self, cases: torch.Tensor) -> tuple[slice, ...]:
        """Slices of the last `dims` axes holding the largest of these cases (all of them when the
        cases share one shape)."""
        if self.train.shapes is None:
            return ()
        sizes = [self.train.shapes[int(c)] for c in cases.reshape(-1)]
        largest = [max(s[k] for s in sizes) for k in range(3)]
        return tuple(slice(0, n) for n in largest[-self.model_cfg.dims :])

    def loss_on(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """CE + γ·Dice on the (decoded) logits, + λ·MSE on the noise for LDSeg."""
        model, cfg, device = self.model, self.model_cfg, self.info.device
        with autocast(device, self.cfg.precision):
            if not self.ldseg:
                logits = model(x)
                parts = {}
            else:
                z_label = model.encode_label(y)
                z_image = model.encode_image(x)
                noise = torch.randn(z_label.shape, generator=g).to(device)
                t = torch.randint(0, cfg.num_train_timesteps, (x.shape[0],), generator=g).to(device)
                z_t = self.noise_sched.add_noise(z_label, noise, t)
                eps = model.predict_noise(z_t, t, z_image)
                if cfg.decoder_input == "paper":
                    z0 = z_t - eps
                else:
                    a = self.alphas[t].reshape(-1, *([1] * (z_t.ndim - 1)))
                    z0 = ((z_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-LATENT_CLIP, LATENT_CLIP)
                logits = model.decode(z0)
                parts = {"mse": self.loss_cfg.mse_weight * F.mse_loss(eps.float(), noise)}
        parts["dice_ce"] = self.loss_fn(logits.float(), y[:, None].long())
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}

    def validation_step(self) -> dict[str, float]:
        """Dice per foreground class on the held-out volumes (DDIM with `val_steps` steps), and their mean."""
        if self.val is None:
            return {}
        self.model.eval()
        scores = []
        for i in range(len(self.val.case_ids)):
            g = torch.Generator().manual_seed(self.seed + i)
            d, h, w = self.val.case_size(i)
            probs, _ = predict_volume(
                self.model,
                self.model_cfg,
                self.val.case(i)[:d, :, :h, :w],
                steps=self.val_steps,
                generator=g,
                device=self.info.device,
                precision=self.cfg.precision,
            )
            scores.append(dice_per_class(class_index(probs, 0), self.val.labels[i][:d, :h, :w], self.num_classes))
        mean = np.mean(scores, axis=0)
        names = {v: k for k, v in self.label_names.items()}
        out = {f"dice_{names.get(c, c)}": float(mean[c - 1]) for c in range(1, self.num_classes)}
        out["dice_mean"] = float(mean.mean())
        return out

    def train_metrics(self, loop: LoopState) -> dict[str, float]:
        return {"train_loss": loop.running_loss}

    def score(self, row: dict[str, Any]) -> float:
        return row.get("dice_mean", -row["train_loss"])  # no held-out cases: the lowest training loss

    def report(self, row: dict[str, Any]) -> str:
        shown = "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("dice_"))
        return f"epoch {row['epoch']}  loss {row['train_loss']:.4f}  {shown}"


def train_segmenter(
    data: PreparedData,
    out_dir: Path,
    model_cfg: SegModelConfig,
    loss_cfg: SegLossConfig,
    train_cfg: SegTrainConfig,
    preprocess: dict[str, Any],
    device: torch.device,
    *,
    seed: int = 0,
    console=None,
    resume: str = "never",
    stop: StopFlag | None = None,
    val_steps: int = DEFAULT_STEPS,
) -> TrainResult:
    """Fit a segmenter to `data` (labels required) in one process; model.safetensors in `out_dir`
    is the checkpoint of the highest mean held-out Dice. `resume` and `stop` as in `run_training`."""
    trainer = SegmenterTrainer(
        data,
        model_cfg=model_cfg,
        loss_cfg=loss_cfg,
        train_cfg=train_cfg,
        preprocess=preprocess,
        device=device,
        seed=seed,
        val_steps=val_steps,
    )
    return run_training(trainer, out_dir, resume=resume, stop=stop, console=console)
