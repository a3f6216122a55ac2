"""Training of the 3D latent denoiser (the second stage of SBLDM)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmtool.config import DenoiserConfig, TrainConfig, to_dict
from ldmtool.data.lesions import ATTRIBUTES, lesion_attributes, lesion_class
from ldmtool.data.prepared import PreparedData, slices_to_volume
from ldmtool.diffusion.pipeline import encode_volume
from ldmtool.diffusion.samplers import training_scheduler
from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_path, atomic_write_text
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.denoiser import LatentDenoiser
from ldmtool.models.checkpoint import file_sha256, save_checkpoint, write_config_json
from ldmtool.runtime import autocast, progress
from ldmtool.train.common import count_parameters, grad_scaler, optimizer_step, make_ema, warmup_cosine
from ldmtool.train.distributed import DistInfo, StopFlag, barrier, finish, step_sync, wrap_ddp
from ldmtool.train.state import previous_run, restore, save_state, step_generator


@dataclass
class LDMTrainResult:
    path: Path
    history: list[dict[str, float]]
    volumes_per_second: float
    parameters: int
    latent_shape: tuple[int, ...]
    world_size: int = 1
    effective_batch_size: int = 0
    lr: float = 0.0
    resumed_from: int | None = None  # the step a resumed run went on from
    in_sync: bool | None = None  # every rank ended with the same weights (None: one process)
    already_complete: bool = False


def lesion_latent_mask(labels: torch.Tensor, lesion_value: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(N, D, H, W) label maps → (N, 1, D, h, w) uint8: 1 where a latent voxel covers lesion voxels,
    grown by one latent voxel in-plane (the lesion's rim and the tissue around it)."""
    n, d, hh, ww = labels.shape
    out = []
    for i in range(n):  # one case at a time: the float copy of a whole large data set is not needed
        les = (labels[i] == lesion_value).float()[:, None]  # (D, 1, H, W)
        m = torch.nn.functional.adaptive_max_pool2d(les, latent_hw)
        m = torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)
        out.append(m[:, 0].to(torch.uint8))
    return torch.stack(out)[:, None]


def encode_dataset(ae: SliceAutoencoder, data: PreparedData, cache: Path | None, ae_hash: str, console=None) -> torch.Tensor:
    """Latent volumes (N, L, D, h, w) of every case, cached in `cache` (safetensors) by AE hash and cases."""
    from safetensors.torch import load_file, save_file

    key = json.dumps({"ae": ae_hash, "cases": data.case_ids, "shape": list(data.images.shape),
                      "observed": None if data.observed is None else int(data.observed.sum())})
    if cache is not None and cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return load_file(str(cache))["latents"]
    out = []
    with progress(console, transient=True) as bar:
        task = bar.add_task("encoding volumes", total=len(data.case_ids), rate="", info="")
        for i in range(len(data.case_ids)):
            label = None if data.labels is None else data.labels[i]
            obs = None if data.observed is None else data.observed[i]
            out.append(encode_volume(ae, data.images[i], label, observed=obs).cpu())
            bar.advance(task)
    latents = torch.stack(out)
    if cache is not None:
        with atomic_path(cache) as tmp:
            save_file({"latents": latents}, str(tmp), metadata={"key": key})
    return latents


def dataset_attributes(data: PreparedData) -> np.ndarray:
    """(N, A) lesion attributes of every case (see `ldmtool.data.lesions`)."""
    value = lesion_class(data.label_names)
    rows = []
    for i in range(len(data.case_ids)):
        spacing = tuple(np.linalg.norm(np.asarray(data.affines[i])[:3, :3], axis=0))
        rows.append(lesion_attributes(slices_to_volume(data.labels[i].numpy()), value, spacing))
    return np.stack(rows)


def train_latent_diffusion(
    data: PreparedData,
    ae: SliceAutoencoder,
    ae_config: dict[str, Any],
    ae_path: Path,
    out_dir: Path,
    *,
    model_cfg: DenoiserConfig,
    train_cfg: TrainConfig,
    device: torch.device,
    seed: int = 0,
    console=None,
    dist: DistInfo | None = None,
    resume: str = "never",
    stop: StopFlag | None = None,
) -> LDMTrainResult:
    """Encode the data set slice by slice, then fit the 3D denoiser on the latent volumes.

    `dist`: the torchrun process group (each process takes `batch_size` volumes of every step,
    gradients are all-reduced by DDP, rank 0 alone writes). `resume`: "never" starts afresh,
    "auto" goes on from a training state in `out_dir` when there is one, "must" requires one.
    `stop`: a StopFlag; when it is raised the run saves its state and raises `Preempted`.
    """
    from torch.utils.data import DistributedSampler

    info = dist or DistInfo(device=device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if model_cfg.condition_on == "lesion" and data.labels is None:
        raise LdmError("--condition-on lesion needs labels (imagesTr/ + labelsTr/ + dataset.json)")
    ae_hash = file_sha256(ae_path)
    cache = out_dir / "latents.safetensors"
    if info.is_main:  # rank 0 encodes and writes the cache; the others then read it
        latents = encode_dataset(ae, data, cache, ae_hash, console)  # (N, L, D, h, w)
    barrier(info)
    if not info.is_main:
        latents = encode_dataset(ae, data, cache, ae_hash, None)
    # Per-channel standardisation: latent channels differ a lot in spread (one scalar is not enough).
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)
    z_all = (latents - mean[None, :, None, None, None]) / std[None, :, None, None, None]

    lesion_map = None  # (N, 1, D, h, w) uint8: latent voxels over a lesion, for the loss weight
    if train_cfg.lesion_weight > 0 and data.labels is not None and data.num_classes > 1:
        lesion_map = lesion_latent_mask(data.labels, lesion_class(data.label_names), tuple(latents.shape[-2:]))

    attrs = None
    cond_cfg: dict[str, Any] = {}
    condition = model_cfg.condition_on == "lesion"
    if condition:
        raw = dataset_attributes(data)
        a_mean, a_std = raw.mean(0), raw.std(0) + 1e-6
        attrs = torch.from_numpy((raw - a_mean) / a_std).float()
        cond_cfg = {
            "attributes": list(ATTRIBUTES),
            "mean": a_mean.tolist(),
            "std": a_std.tolist(),
            "lesion_class": lesion_class(data.label_names),
            "train_range": [raw.min(0).tolist(), raw.max(0).tolist()],
        }

    train_idx, val_idx = (torch.tensor(i, dtype=torch.long) for i in data.split_indices(train_cfg.val_fraction, seed))
    model = LatentDenoiser(model_cfg, latents.shape[1], len(ATTRIBUTES) if condition else 0).to(device)
    ema = make_ema(model, train_cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    n_train = len(train_idx)
    if n_train < info.world:
        raise LdmError(f"{n_train} training volumes cannot be shared by {info.world} processes")
    # DistributedSampler: one shuffled order per epoch (seeded by seed + epoch), each rank its share
    sampler = DistributedSampler(range(n_train), num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
    bs = train_cfg.batch_size
    per_rank = len(sampler)
    steps_per_epoch = max(1, per_rank // bs)
    total = train_cfg.steps or steps_per_epoch * train_cfg.epochs
    previous, settings, elapsed_before = previous_run(out_dir, resume, {
        "model": to_dict(model_cfg), "ae": ae_hash, "cases": data.case_ids, "seed": seed, "world": info.world,
    }, to_dict(train_cfg))
    sched = warmup_cosine(opt, train_cfg.warmup_steps, total, train_cfg.max_minutes, elapsed_before)
    scaler = grad_scaler(device, train_cfg.precision)
    noise_sched = training_scheduler(model_cfg)
    T = model_cfg.num_train_timesteps

    config = {
        "kind": "latent-diffusion",
        "model": to_dict(model_cfg),
        "train": to_dict(train_cfg),
        "latent_shape": list(latents.shape[1:]),
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        "conditioning": cond_cfg,
        "autoencoder_sha256": ae_hash,
        "volume_shape": ae_config["volume_shape"],
        "reference_affine": ae_config["reference_affine"],
        "label_names": ae_config["label_names"],
        "train_cases": [data.case_ids[i] for i in train_idx],
        "seed": seed,
    }

    flow = model_cfg.objective == "flow"
    alphas_cumprod = None if flow else noise_sched.alphas_cumprod.to(device)

    def snr_weight(t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ weights: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v (1 when off, and
        for flow, whose velocity target already has unit scale at every t)."""
        if train_cfg.min_snr_gamma is None or flow:
            return torch.ones_like(t, dtype=torch.float32)
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        clipped = snr.clamp(max=train_cfg.min_snr_gamma)
        return (clipped / snr if model_cfg.objective == "eps" else clipped / (snr + 1)).float()

    def loss_on(idx: torch.Tensor, net, g: torch.Generator | None) -> torch.Tensor:
        z0 = z_all[idx].to(device)
        b = z0.shape[0]
        noise = torch.randn(z0.shape, generator=g).to(device)
        t = torch.randint(0, T, (b,), generator=g).to(device)
        zt = noise_sched.add_noise(z0, noise, t)
        if flow:  # MONAI RFlowScheduler: z_t = (1 − t/T) z_0 + (t/T) noise, velocity z_0 − noise
            target = z0 - noise
        elif model_cfg.objective == "eps":
            target = noise
        else:
            target = noise_sched.get_velocity(z0, noise, t)
        a = m = None
        if attrs is not None:
            a = attrs[idx].to(device)
            # drop single attributes (partial conditioning) and, cfg_dropout of the time, all of them
            m = (torch.rand(a.shape, generator=g) > 0.3).float()
            m = m * (torch.rand(b, 1, generator=g) > train_cfg.cfg_dropout).float()
            m = m.to(device)
        with autocast(device, train_cfg.precision):
            pred = net(zt, t, a, m)
        sq = (pred.float() - target).pow(2)
        if lesion_map is None:
            per_sample = sq.flatten(1).mean(1)
        else:  # weighted mean: lesion regions count 1 + lesion_weight times, the loss keeps its scale
            w = 1.0 + train_cfg.lesion_weight * lesion_map[idx].to(device, torch.float32)
            per_sample = (sq * w).flatten(1).sum(1) / (w.flatten(1).sum(1) * sq.shape[1])
        return (per_sample * snr_weight(t)).mean()

    history: list[dict[str, float]] = []
    step, seen, running = 0, 0, 0.0
    if previous is not None:
        restore(previous, modules={"model": model, "ema": ema}, optimizer=opt, scheduler=sched, scaler=scaler)
        step, seen, running = previous.step, int(previous.meta["seen"]), float(previous.meta["running_loss"])
        history = list(previous.meta.get("history", []))
    resumed_from = step if previous is not None else None
    budget = None if train_cfg.max_minutes is None else 60 * train_cfg.max_minutes
    path = out_dir / "model.safetensors"
    result_args = dict(parameters=count_parameters(model), latent_shape=tuple(latents.shape[1:]), world_size=info.world,
                       effective_batch_size=bs * info.world, lr=train_cfg.lr, resumed_from=resumed_from)
    if step >= total or (budget is not None and elapsed_before >= budget):
        return LDMTrainResult(path, history, 0.0, **result_args, already_complete=True)
    net = wrap_ddp(model, info)
    t0 = time.perf_counter()
    seen_here = 0
    eval_every = max(1, min(total // 10 if total >= 10 else 1, 500))
    save_every = train_cfg.checkpoint_every or eval_every
    last_save = time.perf_counter()

    def write_state(complete: bool) -> None:
        elapsed = elapsed_before + time.perf_counter() - t0
        save_state(out_dir, modules={"model": model, "ema": ema}, optimizer=opt, scheduler=sched, scaler=scaler, meta={
            "kind": "latent-diffusion", "settings": settings, "step": step, "total_steps": total, "seen": seen,
            "running_loss": running, "history": history, "elapsed_seconds": elapsed, "complete": complete,
            "world_size": info.world, "effective_batch_size": bs * info.world,
        })

    halt_reason = ""
    epoch, position = divmod(step, steps_per_epoch)
    with progress(console) as bar:
        task = bar.add_task("train-ldm", total=total, completed=step, rate="", info="")
        while step < total and not halt_reason:
            sampler.set_epoch(epoch)
            mine = train_idx[torch.tensor(list(sampler), dtype=torch.long)]
            batches = [mine[s : s + bs] for s in range(0, max(per_rank - bs + 1, 1), bs)]
            for idx in batches[position:]:
                model.train()
                loss = loss_on(idx, net, step_generator(seed, info.rank, step))
                optimizer_step(loss, model, opt, scaler, sched)
                ema.update_parameters(model)
                step += 1
                seen += len(idx) * info.world
                seen_here += len(idx) * info.world
                out_of_time = budget is not None and elapsed_before + time.perf_counter() - t0 > budget
                lv, (out_of_time, signalled) = step_sync(float(loss.detach()), [out_of_time, bool(stop and stop.requested)], info)
                running = 0.98 * running + 0.02 * lv if step > 1 else lv
                rate = seen_here / (time.perf_counter() - t0)
                bar.update(task, advance=1, rate=f"{rate:.1f} vol/s", info=f"loss {running:.4f}")
                halt_reason = "signal" if signalled else ("time" if out_of_time else "")
                evaluate = step % eval_every == 0 or step == total or halt_reason
                timed_save = time.perf_counter() - last_save > 60 * train_cfg.checkpoint_minutes
                if info.is_main and (evaluate or step % save_every == 0 or timed_save):
                    if evaluate:
                        row = {"step": step, "train_loss": running, "seconds": elapsed_before + time.perf_counter() - t0}
                        if len(val_idx):
                            with torch.no_grad():
                                vg = torch.Generator().manual_seed(1234)  # same noise every time: comparable
                                row["val_loss"] = float(loss_on(val_idx, ema.module.eval(), vg))
                        history.append(row)
                        save_checkpoint(path, ema.module.state_dict(), {**config, "step": step, "metrics": row})
                        atomic_write_text(out_dir / "history.json", json.dumps(history, indent=2))
                    write_state(complete=step >= total or halt_reason == "time")
                    last_save = time.perf_counter()
                if step >= total or halt_reason:
                    break
            epoch, position = epoch + 1, 0
        if halt_reason == "time":
            bar.console.print(f"stopping: --max-minutes {train_cfg.max_minutes} reached at step {step}")
    in_sync = finish(info, model, stop, halt_reason == "signal", step, total, out_dir)
    if info.is_main:
        write_config_json(out_dir, {**config, "step": step, "metrics": history[-1] if history else {}})
    elapsed = time.perf_counter() - t0
    return LDMTrainResult(path, history, seen_here / elapsed, **result_args, in_sync=in_sync)

