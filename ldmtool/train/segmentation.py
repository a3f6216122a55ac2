"""Training and inference of the segmenters: LDSeg (latent diffusion) and the UNet baseline.

Both train on the same data with the same loss terms and schedule:
L = CE + γ·Dice (on the decoded label probabilities) [+ λ·MSE(ε̂, ε) for LDSeg], AdamW with warmup
and cosine decay, batches of slices (2D, a share drawn from slices holding the rarest class) or of
volumes (3D). Validation Dice per class on held-out cases after every epoch; the best checkpoint
is kept. The run is resumable like the other trainers (train_state.safetensors + state.json).

LDSeg's clean-latent estimate fed to the label decoder in training is, by default, the x0 formula
ẑ_0 = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, clamped to ±5 (`decoder_input: x0`): exactly what the DDIM sampler
hands the decoder at inference. The paper's ẑ_0 = z_t − ε̂ (`decoder_input: paper`) is kept as an
option; on the phantoms it trained a decoder that does not fit DDIM's output (300 steps, 12
volumes of 48×48×24, 2 DDIM steps: Dice head / lesion 0.89 / 0.04 with `paper`, 0.96 / 0.84 with `x0`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldmtool.config import SegLossConfig, SegModelConfig, TrainConfig, to_dict
from ldmtool.data.prepared import PreparedData
from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_write_text
from ldmtool.pipelines.segmenter import DEFAULT_STEPS, LATENT_CLIP, pad_to_multiple, predict_volume
from ldmtool.models.ldseg import LDSeg, build_segmenter, seg_schedule, size_multiple
from ldmtool.models.checkpoint import save_checkpoint, write_config_json
from ldmtool.runtime import autocast, progress
from ldmtool.train.common import count_parameters, grad_scaler, optimizer_step, warmup_cosine
from ldmtool.train.state import previous_run, restore, save_state, step_generator

KIND = "segmenter"
@dataclass
class SegTrainResult:
    path: Path
    history: list[dict[str, float]]
    parameters: int
    seconds: float
    best: dict[str, float]
    resumed_from: int | None = None
    already_complete: bool = False


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
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                      lambda_dice=cfg.dice_weight, lambda_ce=1.0)


def train_segmenter(
    data: PreparedData,
    out_dir: Path,
    model_cfg: SegModelConfig,
    loss_cfg: SegLossConfig,
    train_cfg: TrainConfig,
    preprocess: dict[str, Any],
    device: torch.device,
    *,
    seed: int = 0,
    console=None,
    resume: str = "never",
    stop=None,
    val_steps: int = DEFAULT_STEPS,
) -> SegTrainResult:
    """Fit a segmenter to `data` (labels required); best checkpoint (mean validation Dice) in `out_dir`."""
    from ldmtool.train.autoencoder import SliceSampler
    from ldmtool.train.distributed import DistInfo, finish

    if data.labels is None:
        raise LdmError("train-seg needs labels (imagesTr/ + labelsTr/ + dataset.json)")
    num_classes = data.num_classes
    if num_classes < 2:
        raise LdmError("train-seg needs at least one foreground class in dataset.json")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_idx, val_idx = data.split_indices(train_cfg.val_fraction, seed)
    train = data.subset(train_idx)
    val = data.subset(val_idx) if val_idx else None
    mult = size_multiple(model_cfg)
    d, h, w = data.images.shape[1:]
    if model_cfg.dims == 3 and min(d, h, w) < mult:
        raise LdmError(f"volumes of {d}×{h}×{w} (slices × rows × columns) are too small for this 3D model "
                       f"(it downsamples by {mult}); use --dims 2 or fewer --channels levels")
    if model_cfg.dims == 2 and min(h, w) < mult:
        raise LdmError(f"slices of {h}×{w} are too small for this model (it downsamples by {mult}); use fewer --channels levels")

    model = build_segmenter(model_cfg, num_classes).to(device)
    ldseg = isinstance(model, LDSeg)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    if model_cfg.dims == 2:
        sampler = SliceSampler(train, train_cfg.batch_size, loss_cfg.oversample, seed)
        steps_per_epoch = len(sampler)
    else:
        sampler = None
        steps_per_epoch = max(1, len(train_idx) // train_cfg.batch_size)
    total = train_cfg.steps or steps_per_epoch * train_cfg.epochs
    previous, settings, elapsed_before = previous_run(out_dir, resume, {
        "kind": KIND, "model": to_dict(model_cfg), "loss": to_dict(loss_cfg), "cases": data.case_ids, "seed": seed,
        "preprocess": preprocess,
    }, to_dict(train_cfg))
    sched = warmup_cosine(opt, train_cfg.warmup_steps, total, train_cfg.max_minutes, elapsed_before)
    scaler = grad_scaler(device, train_cfg.precision)
    loss_fn = _loss_fn(loss_cfg)
    noise_sched = None
    if ldseg:
        from ldmtool.diffusion.samplers import training_scheduler

        noise_sched = training_scheduler(seg_schedule(model_cfg))
        alphas = noise_sched.alphas_cumprod.to(device)

    config = {
        "kind": KIND,
        "model": to_dict(model_cfg),
        "loss": to_dict(loss_cfg),
        "train": to_dict(train_cfg),
        "preprocess": preprocess,
        "label_names": data.label_names,
        "num_classes": num_classes,
        "train_cases": [data.case_ids[i] for i in train_idx],
        "val_cases": [data.case_ids[i] for i in val_idx],
        "seed": seed,
    }

    def epoch_batches(epoch: int) -> list[tuple[torch.Tensor, ...]]:
        """The epoch's batches as index tuples into the training arrays: (case, slice) indices in
        2D, case indices in 3D; a function of (seed, epoch), so a resumed run sees the same ones."""
        if sampler is not None:
            sampler.set_epoch(epoch)
            return list(sampler)
        order = torch.randperm(len(train_idx), generator=step_generator(seed, 0, epoch, 0x3D))
        bs = train_cfg.batch_size
        return [(order[s : s + bs],) for s in range(0, steps_per_epoch * bs, bs)]

    def batch_of(sel: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = pad_to_multiple(train.images[sel][:, None], mult, model_cfg.dims)
        y, _ = pad_to_multiple(train.labels[sel], mult, model_cfg.dims)
        return x.to(device), y.to(device)

    def loss_on(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(device, train_cfg.precision):
            if not ldseg:
                logits = model(x)
                parts = {}
            else:
                z_label = model.encode_label(y)
                z_image = model.encode_image(x)
                noise = torch.randn(z_label.shape, generator=g).to(device)
                t = torch.randint(0, model_cfg.num_train_timesteps, (x.shape[0],), generator=g).to(device)
                z_t = noise_sched.add_noise(z_label, noise, t)
                eps = model.predict_noise(z_t, t, z_image)
                if model_cfg.decoder_input == "paper":
                    z0 = z_t - eps
                else:
                    a = alphas[t].reshape(-1, *([1] * (z_t.ndim - 1)))
                    z0 = ((z_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-LATENT_CLIP, LATENT_CLIP)
                logits = model.decode(z0)
                parts = {"mse": loss_cfg.mse_weight * F.mse_loss(eps.float(), noise)}
        parts["dice_ce"] = loss_fn(logits.float(), y[:, None].long())
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}

    def validate() -> dict[str, float]:
        if val is None:
            return {}
        model.eval()
        scores = []
        for i in range(len(val.case_ids)):
            g = torch.Generator().manual_seed(seed + i)
            probs, _ = predict_volume(model, model_cfg, val.images[i], steps=val_steps, generator=g, device=device,
                                      precision=train_cfg.precision)
            scores.append(dice_per_class(probs.argmax(0), val.labels[i], num_classes))
        mean = np.mean(scores, axis=0)
        names = {v: k for k, v in data.label_names.items()}
        out = {f"dice_{names.get(c, c)}": float(mean[c - 1]) for c in range(1, num_classes)}
        out["dice_mean"] = float(mean.mean())
        return out

    history: list[dict[str, float]] = []
    step, running, best = 0, 0.0, {}
    if previous is not None:
        restore(previous, modules={"model": model}, optimizer=opt, scheduler=sched, scaler=scaler)
        step, running = previous.step, float(previous.meta["running_loss"])
        history = list(previous.meta.get("history", []))
        best = dict(previous.meta.get("best", {}))
    resumed_from = step if previous is not None else None
    budget = None if train_cfg.max_minutes is None else 60 * train_cfg.max_minutes
    path = out_dir / "model.safetensors"
    if step >= total or (budget is not None and elapsed_before >= budget):
        return SegTrainResult(path, history, count_parameters(model), 0.0, best, resumed_from, already_complete=True)

    def write_state(complete: bool) -> None:
        save_state(out_dir, modules={"model": model}, optimizer=opt, scheduler=sched, scaler=scaler, meta={
            "kind": KIND, "settings": settings, "step": step, "total_steps": total, "running_loss": running,
            "history": history, "best": best, "elapsed_seconds": elapsed_before + time.perf_counter() - t0,
            "complete": complete, "world_size": 1, "effective_batch_size": train_cfg.batch_size,
        })

    t0 = time.perf_counter()
    last_save = t0
    halt = ""
    epoch, position = divmod(step, steps_per_epoch)
    unit = "slices" if model_cfg.dims == 2 else "volumes"
    with progress(console) as bar:
        task = bar.add_task("train-seg", total=total, completed=step, rate="", info="")
        while step < total and not halt:
            batches = epoch_batches(epoch)
            for b in range(position, steps_per_epoch):
                model.train()
                x, y = batch_of(batches[b])
                loss, parts = loss_on(x, y, step_generator(seed, 0, step))
                optimizer_step(loss, model, opt, scaler, sched)
                step += 1
                lv = float(loss.detach())
                running = 0.98 * running + 0.02 * lv if step > 1 else lv
                elapsed = time.perf_counter() - t0
                rate = (step - (resumed_from or 0)) * x.shape[0] / max(elapsed, 1e-9)
                bar.update(task, advance=1, rate=f"{rate:.1f} {unit}/s", info=f"epoch {epoch + 1} loss {running:.4f}")
                if budget is not None and elapsed_before + elapsed > budget:
                    halt = "time"
                elif stop is not None and stop.requested:
                    halt = "signal"
                end_of_epoch = b == steps_per_epoch - 1
                final = step >= total or bool(halt)
                since_save = time.perf_counter() - last_save
                if end_of_epoch or final:
                    row = {"epoch": epoch + 1, "step": step, "train_loss": running, **validate(),
                           "seconds": elapsed_before + time.perf_counter() - t0}
                    history.append(row)
                    shown = "  ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("dice_"))
                    bar.console.print(f"epoch {epoch + 1}  loss {running:.4f}  {shown}")
                    score = row.get("dice_mean", -running)  # no validation cases: lowest training loss
                    if not best or score >= best.get("score", -np.inf):
                        best = {"score": score, **{k: v for k, v in row.items() if k != "seconds"}}
                        save_checkpoint(path, model.state_dict(), {**config, "metrics": row})
                    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=2))
                # the resumable state: at the end, every checkpoint_every steps or checkpoint_minutes,
                # and at an epoch's end unless the last one is under a minute old (tiny data sets
                # have epochs of a few steps: one state write each would dominate the run)
                if final or (train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0) \
                        or since_save > 60 * train_cfg.checkpoint_minutes or (end_of_epoch and since_save > 60):
                    write_state(complete=step >= total or halt == "time")
                    last_save = time.perf_counter()
                if final:
                    break
            epoch, position = epoch + 1, 0
        if halt == "time":
            bar.console.print(f"stopping: --max-minutes {train_cfg.max_minutes} reached at step {step}")
    finish(DistInfo(device=device), model, stop, halt == "signal", step, total, out_dir)
    write_config_json(out_dir, {**config, "metrics": best})
    return SegTrainResult(path, history, count_parameters(model), time.perf_counter() - t0, best, resumed_from)
