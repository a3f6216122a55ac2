"""Training of the 3D latent denoiser (the second stage of SBLDM)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmtool.config import DenoiserConfig, LDMTrainConfig, to_dict
from ldmtool.data.covariates import read_class_column, read_covariates
from ldmtool.data.lesions import ATTRIBUTES, lesion_attributes, lesion_class
from ldmtool.data.prepared import PreparedData, slices_to_volume, split_case_indices
from ldmtool.diffusion.pipeline import encode_volume
from ldmtool.diffusion.samplers import training_scheduler
from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_path
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import file_sha256
from ldmtool.models.denoiser import LatentDenoiser, check_label_detail, label_grid
from ldmtool.models.loaders import map_transfer_note, read_denoiser, source_map, transfer_weights
from ldmtool.runtime import autocast, progress
from ldmtool.train.common import make_ema
from ldmtool.train.distributed import DistInfo, StopFlag, barrier
from ldmtool.train.loop import Trainer, TrainResult, run_training
from ldmtool.train.state import step_generator


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


def encode_dataset(
    ae: SliceAutoencoder, data: PreparedData, cache: Path | None, ae_hash: str, console=None
) -> torch.Tensor:
    """Latent volumes (N, L, D, h, w) of every case, cached in `cache` (safetensors) by AE hash and cases."""
    from safetensors.torch import load_file, save_file

    key = json.dumps(
        {
            "ae": ae_hash,
            "cases": data.case_ids,
            "shape": list(data.images.shape),
            "observed": None if data.observed is None else int(data.observed.sum()),
        }
    )
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


def standardised_latents(
    latents: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, mean, std): latents standardised per channel (latent channels differ a lot in spread,
    one scalar is not enough); `stats`: a given (mean, std), e.g. those of the model fine-tuned from."""
    if stats is not None:
        mean, std = (torch.as_tensor(v, dtype=latents.dtype) for v in stats)
    else:
        mean = latents.mean(dim=(0, 2, 3, 4))
        std = latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)
    return (latents - mean[None, :, None, None, None]) / std[None, :, None, None, None], mean, std


def standardised_attributes(data: PreparedData) -> tuple[torch.Tensor, dict[str, Any]]:
    """(N, A) standardised lesion attributes and the conditioning record of the checkpoint."""
    raw = dataset_attributes(data)
    a_mean, a_std = raw.mean(0), raw.std(0) + 1e-6
    record = {
        "attributes": list(ATTRIBUTES),
        "mean": a_mean.tolist(),
        "std": a_std.tolist(),
        "lesion_class": lesion_class(data.label_names),
        "train_range": [raw.min(0).tolist(), raw.max(0).tolist()],
    }
    return torch.from_numpy((raw - a_mean) / a_std).float(), record


def covariate_attributes(
    data: PreparedData, columns: list[str], table: Path, console=None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(N, A) standardised covariates (0 where missing), their (N, A) 0/1 availability and the
    conditioning record (mean/std, two-level columns' levels, range, the table and its missing counts).

    A case without a value of a column is trained unconditioned on it (its mask entry is 0)."""
    raw, names, levels = read_covariates(table, data.case_ids, columns)
    known = ~np.isnan(raw)
    missing = {n: int((~known[:, a]).sum()) for a, n in enumerate(names)}
    if any(missing.values()) and console is not None:
        counts = ", ".join(f"{n} for {k}" for n, k in missing.items() if k)
        console.print(
            f"[yellow]warning:[/] {Path(table).name} has no value of {counts} of the {len(data.case_ids)} "
            "cases; they are trained unconditioned on that column",
            highlight=False,
        )
    mean, std = np.nanmean(raw, 0), np.nanstd(raw, 0) + 1e-6
    record = {
        "attributes": names,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "train_range": [np.nanmin(raw, 0).tolist(), np.nanmax(raw, 0).tolist()],
        "levels": levels,
        "covariates": {"table": str(table), "sha256": file_sha256(Path(table)), "missing": missing},
    }
    z = np.where(known, (raw - mean) / std, 0.0)
    return torch.from_numpy(z).float(), torch.from_numpy(known).float(), record


def check_condition_inputs(names: tuple[str, ...], covariates: Path | None) -> list[str]:
    """The covariate columns among `condition_on` names; an error when they and the table do not go together.
    ("class" is not one: its classes come from class folders, or else the table's `class` column.)"""
    columns = [n for n in names if n not in ("lesion", "labels", "class")]
    if columns and covariates is None:
        raise LdmError(f"--condition-on {','.join(columns)} needs --covariates TABLE (a CSV with those columns)")
    if covariates is not None and not columns and "class" not in names:
        raise LdmError("--covariates needs --condition-on naming its columns, e.g. --condition-on age,sex")
    return columns


def conditioning_inputs(
    data: PreparedData, names: tuple[str, ...], covariates: Path | None, console=None
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """(attributes (N, A), availability (N, A) or None when every value is known, checkpoint record)
    for `condition_on` names: "lesion" (the lesion attributes, first) and columns of the `covariates` table."""
    columns = check_condition_inputs(names, covariates)
    record = {"label_channels": data.num_classes} if "labels" in names else {}
    names = tuple(n for n in names if n != "labels")
    if not names:
        return None, None, record
    attrs, known, rec = _attribute_inputs(data, names, columns, covariates, console)
    return attrs, known, {**rec, **record}


def class_attributes(
    data: PreparedData, covariates: Path | None, console=None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(N, K) one-hot classes, their (N, K) availability and the conditioning record, for
    `--condition-on class`: the class folders of 2D images (DATA/CLASS/*.png), else the `class`
    column of the covariates table (any number of levels). A case without a class is trained
    unconditioned on it."""
    if data.classes is not None:
        per_case, source = list(data.classes), "folders"
    elif covariates is not None:
        per_case, source = read_class_column(covariates, data.case_ids), str(covariates)
    else:
        raise LdmError(
            "--condition-on class needs class folders (DATA/CLASS/IMAGE) or --covariates TABLE with a class column"
        )
    names = sorted({c for c in per_case if c is not None})
    if len(names) < 2:
        raise LdmError(f"--condition-on class needs two classes at least; the data have {', '.join(names) or 'none'}")
    onehot = np.zeros((len(per_case), len(names)), dtype=np.float32)
    for i, c in enumerate(per_case):
        if c is not None:
            onehot[i, names.index(c)] = 1.0
    known = np.repeat(np.array([[c is not None] for c in per_case], dtype=np.float32), len(names), axis=1)
    counts = {c: per_case.count(c) for c in names}
    if console is not None:
        console.print(f"classes ({source}): " + ", ".join(f"{c} {k}" for c, k in counts.items()), highlight=False)
    k = len(names)
    record = {
        "attributes": [f"class={c}" for c in names],
        "mean": [0.0] * k,
        "std": [1.0] * k,
        "train_range": [[0.0] * k, [1.0] * k],
        "classes": names,
        "class_counts": counts,
        "class_source": source,
    }
    return torch.from_numpy(onehot), torch.from_numpy(known), record


def _attribute_inputs(
    data: PreparedData, names: tuple[str, ...], columns: list[str], covariates: Path | None, console=None
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """`conditioning_inputs` for the attributes: the lesion attributes, the covariate columns and
    the classes, in that order."""
    parts = []
    if "lesion" in names:
        attrs, record = standardised_attributes(data)
        parts.append((attrs, None, record))
    if columns:
        parts.append(covariate_attributes(data, columns, covariates, console))
    if "class" in names:
        parts.append(class_attributes(data, covariates, console))
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for _, _, record in parts:
        merged.update(record)
    for key in ("attributes", "mean", "std"):
        merged[key] = [v for _, _, record in parts for v in record[key]]
    merged["train_range"] = [[v for _, _, r in parts for v in r["train_range"][i]] for i in (0, 1)]
    attrs = torch.cat([a for a, _, _ in parts], 1)
    known = torch.cat([torch.ones_like(a) if k is None else k for a, k, _ in parts], 1)
    return attrs, known, merged


class DenoiserTrainer(Trainer):
    """The 3D latent denoiser for `run_training`: batches of standardised latent volumes, the
    diffusion (or flow) loss with Min-SNR and lesion weights, an EMA of the weights.

    Checkpoint: the latest EMA weights by default (the held-out loss of the EMA is recorded in
    history.json); with `keep: best` the EMA weights of the evaluation with the lowest held-out loss,
    the latest beside them as last.safetensors. Evaluated every 10% of the run, at most 500 steps
    apart."""

    kind, label, unit = "latent-diffusion", "train-ldm", "vol"

    def __init__(
        self,
        data: PreparedData,
        latents: torch.Tensor,
        ae_config: dict[str, Any],
        ae_hash: str,
        *,
        model_cfg: DenoiserConfig,
        train_cfg: LDMTrainConfig,
        info: DistInfo,
        seed: int = 0,
        conditioning: tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]] | None = None,
        init: tuple[dict[str, torch.Tensor], Any, str, str] | None = None,
    ) -> None:
        """`conditioning`: what `conditioning_inputs` returns (computed here from the lesion
        attributes when None); `init`: (tensors, checked config, sha256, path) of a latent denoiser to
        start from (fine-tuning: its weights and its latent standardisation)."""
        from torch.utils.data import DistributedSampler

        self.cfg, self.info, self.seed, self.model_cfg = train_cfg, info, seed, model_cfg
        if train_cfg.keep == "best":
            self.best_key, self.best_mode, self.keep_last = "val_loss", "min", True
        device = info.device
        stats = None if init is None else (init[1].latent_mean, init[1].latent_std)
        self.z_all, mean, std = standardised_latents(latents, stats)  # (N, L, D, h, w)
        self.lesion_map = None  # (N, 1, D, h, w) uint8: latent voxels over a lesion, for the loss weight
        if train_cfg.lesion_weight > 0 and data.labels is not None and data.num_classes > 1:
            self.lesion_map = lesion_latent_mask(data.labels, lesion_class(data.label_names), tuple(latents.shape[-2:]))
        if conditioning is None:
            conditioning = conditioning_inputs(data, model_cfg.condition_names, None)
        self.attrs, self.known, cond_cfg = conditioning  # known: (N, A) 1 where a case has the value
        # with mirroring the first half are the cases, the second their mirrored copies: the split is
        # of the cases, a training case brings its copy, validation is on unmirrored cases only
        n_cases = len(data.case_ids) // 2 if train_cfg.mirror else len(data.case_ids)
        case_train, val_list = split_case_indices(n_cases, train_cfg.val_fraction, seed)
        train_list = case_train + [i + n_cases for i in case_train] if train_cfg.mirror else case_train
        train_idx, self.val_idx = (torch.tensor(i, dtype=torch.long) for i in (train_list, val_list))
        self.train_idx = train_idx
        n_attributes = len(cond_cfg.get("attributes", []))
        self.label_channels = int(cond_cfg.get("label_channels", 0))  # mask-to-image: the map as input channels
        self.labels = data.labels if self.label_channels else None  # (N, D, H, W) uint8
        self.latent_factor = data.images.shape[-1] // latents.shape[-1]
        if self.label_channels:  # before training starts, not at the first batch
            check_label_detail(model_cfg.label_detail, self.latent_factor)
        dims = int(ae_config.get("image_dims", 3) or 3)  # 2D images: a 2D UNet on (N, L, 1, h, w)
        self.model = LatentDenoiser(model_cfg, latents.shape[1], n_attributes, self.label_channels, spatial_dims=dims)
        if init is not None:
            transfer_weights(self.model, init[0], init[3], source_map(init[1]))
        self.model = self.model.to(device)
        self.ema = make_ema(self.model, train_cfg.ema_decay)
        if len(train_idx) < info.world:
            raise LdmError(f"{len(train_idx)} training volumes cannot be shared by {info.world} processes")
        # DistributedSampler: one shuffled order per epoch (seeded by seed + epoch), each rank its share
        self.sampler = DistributedSampler(
            range(len(train_idx)), num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.steps_per_epoch = max(1, len(self.sampler) // train_cfg.batch_size)
        self.noise_sched = training_scheduler(model_cfg)
        self.flow = model_cfg.objective == "flow"
        self.alphas_cumprod = None if self.flow else self.noise_sched.alphas_cumprod.to(device)
        self.latent_shape = tuple(latents.shape[1:])
        self.settings = {
            "model": to_dict(model_cfg),
            "ae": ae_hash,
            "cases": data.case_ids,
            "seed": seed,
            "world": info.world,
            **({} if init is None else {"init": init[2]}),
        }
        self.config = {
            "kind": self.kind,
            "model": to_dict(model_cfg),
            "train": to_dict(train_cfg),
            "latent_shape": list(self.latent_shape),
            "latent_mean": mean.tolist(),
            "latent_std": std.tolist(),
            "conditioning": cond_cfg,
            "autoencoder_sha256": ae_hash,
            "volume_shape": ae_config["volume_shape"],
            "reference_affine": ae_config["reference_affine"],
            "label_names": ae_config["label_names"],
            "train_cases": [data.case_ids[i] for i in case_train],
            "seed": seed,
            **({} if init is None else {"init_sha256": init[2]}),
            **({"image_dims": 2} if dims == 2 else {}),
        }

    def snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ weights: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v (1 when off, and
        for flow, whose velocity target already has unit scale at every t)."""
        gamma = self.cfg.min_snr_gamma
        if gamma is None or self.flow:
            return torch.ones_like(t, dtype=torch.float32)
        snr = self.alphas_cumprod[t] / (1 - self.alphas_cumprod[t])
        clipped = snr.clamp(max=gamma)
        return (clipped / snr if self.model_cfg.objective == "eps" else clipped / (snr + 1)).float()

    def draw_timesteps(self, b: int, g: torch.Generator | None) -> torch.Tensor:
        """Training times (b,) in [0, T): uniform, or for flow with `flow_timesteps: logit-normal`
        T·sigmoid(N(loc, scale)) made discrete as MONAI's RFlowScheduler makes its own. Drawn here
        from `g`, not by `RFlowScheduler.sample_timesteps`, which draws from the global RNG: the
        training run's draws stay seeded per step and identical on resume."""
        n = self.model_cfg.num_train_timesteps
        if self.flow and self.cfg.flow_timesteps == "logit-normal":
            loc, scale = self.cfg.flow_logit_normal
            u = torch.sigmoid(torch.randn(b, generator=g) * scale + loc)
            return (u * n).long().clamp_(0, n - 1)
        return torch.randint(0, n, (b,), generator=g)

    def loss_on(self, idx: torch.Tensor, net, g: torch.Generator | None) -> torch.Tensor:
        """The weighted denoising loss of the volumes `idx`, noise and times drawn from `g`."""
        device, sched, cfg = self.info.device, self.noise_sched, self.cfg
        z0 = self.z_all[idx].to(device)
        b = z0.shape[0]
        noise = torch.randn(z0.shape, generator=g).to(device)
        t = self.draw_timesteps(b, g).to(device)
        zt = sched.add_noise(z0, noise, t)
        if self.flow:  # MONAI RFlowScheduler: z_t = (1 − t/T) z_0 + (t/T) noise, velocity z_0 − noise
            target = z0 - noise
        elif self.model_cfg.objective == "eps":
            target = noise
        else:
            target = sched.get_velocity(z0, noise, t)
        a, m, lab = self.condition_batch(idx, g)
        with autocast(device, cfg.precision):
            pred = net(zt, t, a, m) if lab is None else net(zt, t, a, m, lab)
        return self.weighted_loss(idx, pred, target, self.snr_weight(t))

    def condition_batch(
        self, idx: torch.Tensor, g: torch.Generator | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(attributes, their mask, label map on the latent grid) of the volumes `idx`, with the
        training dropouts drawn from `g` (None where the model has no such condition)."""
        device, cfg, b = self.info.device, self.cfg, len(idx)
        a = m = None
        if self.attrs is not None:
            a = self.attrs[idx].to(device)
            # drop single attributes (partial conditioning) and, cfg_dropout of the time, all of them
            m = (torch.rand(a.shape, generator=g) > 0.3).float()
            m = m * (torch.rand(b, 1, generator=g) > cfg.cfg_dropout).float()
            if self.known is not None:  # a missing value is never given: unconditioned on it
                m = m * self.known[idx]
            m = m.to(device)
        lab = None
        if self.labels is not None:  # the label map on the latent grid, dropped cfg_dropout of the time
            lab = label_grid(
                self.labels[idx].to(device), self.label_channels, self.latent_factor, self.model_cfg.label_detail
            )
            lab = lab * (torch.rand(b, generator=g) > cfg.cfg_dropout).float().to(device)[:, None, None, None, None]
        return a, m, lab

    def weighted_loss(
        self, idx: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Mean over the batch of `weight` × the per-volume squared error (lesion voxels weighted up)."""
        device, cfg = self.info.device, self.cfg
        sq = (pred.float() - target).pow(2)
        if self.lesion_map is None:
            per_sample = sq.flatten(1).mean(1)
        else:  # weighted mean: lesion regions count 1 + lesion_weight times, the loss keeps its scale
            w = 1.0 + cfg.lesion_weight * self.lesion_map[idx].to(device, torch.float32)
            per_sample = (sq * w).flatten(1).sum(1) / (w.flatten(1).sum(1) * sq.shape[1])
        return (per_sample * weight).mean()

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        self.sampler.set_epoch(epoch)
        mine = self.train_idx[torch.tensor(list(self.sampler), dtype=torch.long)]
        bs, per_rank = self.cfg.batch_size, len(self.sampler)
        return [mine[s : s + bs] for s in range(0, max(per_rank - bs + 1, 1), bs)]

    def train_step(self, net, batch, step):
        self.model.train()
        return self.loss_on(batch, net, step_generator(self.seed, self.info.rank, step)), {}, len(batch)

    def validation_step(self) -> dict[str, float]:
        if not len(self.val_idx):
            return {}
        with torch.no_grad():
            vg = torch.Generator().manual_seed(1234)  # the same noise every time: comparable
            return {"val_loss": float(self.loss_on(self.val_idx, self.ema.module.eval(), vg))}

    def eval_every(self, total: int) -> int:
        return max(1, min(total // 10 if total >= 10 else 1, 500))

    def weights(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def summary(self) -> dict[str, Any]:
        return {"latent_shape": self.latent_shape}


def train_latent_diffusion(
    data: PreparedData,
    ae: SliceAutoencoder,
    ae_config: dict[str, Any],
    ae_path: Path,
    out_dir: Path,
    *,
    model_cfg: DenoiserConfig,
    train_cfg: LDMTrainConfig,
    device: torch.device,
    seed: int = 0,
    console=None,
    dist: DistInfo | None = None,
    resume: str = "never",
    stop: StopFlag | None = None,
    covariates: Path | None = None,
    init: Path | None = None,
) -> TrainResult:
    """Encode the data set slice by slice (cached in `out_dir`), then fit the 3D denoiser on the
    latent volumes; model.safetensors holds the latest EMA weights.

    `dist`: the torchrun process group (each process takes `batch_size` volumes of every step,
    gradients are all-reduced by DDP, rank 0 alone writes); `resume` and `stop` as in `run_training`;
    `covariates`: the table of the covariate columns among `model_cfg.condition_on`; `init`: a
    latent denoiser trained on the same autoencoder to start from (fine-tuning, e.g. a mask-to-image
    model from one trained on normal volumes, on a few annotated cases).
    """
    info = dist or DistInfo(device=device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if "labels" not in model_cfg.condition_names and model_cfg.label_detail != 1:
        model_cfg = dataclasses.replace(model_cfg, label_detail=1)  # no map: a config's setting means nothing
    for name in ("lesion", "labels"):
        if name in model_cfg.condition_names and data.labels is None:
            raise LdmError(f"--condition-on {name} needs labels (imagesTr/ + labelsTr/ + dataset.json)")
    conditioning = conditioning_inputs(
        data, model_cfg.condition_names, covariates, console if info.is_main else None
    )  # before encoding: a bad table fails at once
    if train_cfg.mirror:  # the mirrored copies follow the cases: N originals, then N mirrored
        data = data.concat(data.mirrored())
        if console is not None and info.is_main:
            console.print("mirror: every training volume also trained on mirrored left–right", highlight=False)
        conditioning = _mirrored_conditioning(data, model_cfg.condition_names, covariates, conditioning[2])
    ae_hash = file_sha256(ae_path)
    start = None if init is None else _init_model(init, ae_hash)
    if start is not None and console is not None and info.is_main:
        changed = noise_process_changes(start[1].model, model_cfg)
        if changed:
            console.print(
                f"[yellow]warning:[/] --init {init} was trained with {', '.join(changed)}: fine-tuning "
                "starts from a denoiser of another noise process and needs more steps to adapt",
                highlight=False,
            )
        labels_here = int(conditioning[2].get("label_channels", 0)) if "labels" in model_cfg.condition_names else 0
        note = map_transfer_note(
            source_map(start[1]),
            (labels_here, model_cfg.label_detail),
            start[1].model.label_branch,
            model_cfg.label_branch,
        )
        if note:
            console.print(f"[yellow]warning:[/] --init {init}: {note}", highlight=False)
    cache = out_dir / "latents.safetensors"
    if info.is_main:  # rank 0 encodes and writes the cache; the others then read it
        latents = encode_dataset(ae, data, cache, ae_hash, console)  # (N, L, D, h, w)
    barrier(info)
    if not info.is_main:
        latents = encode_dataset(ae, data, cache, ae_hash, None)
    if start is not None and list(start[1].latent_shape) != list(latents.shape[1:]):
        raise LdmError(
            f"--init {init} has latent volumes {tuple(start[1].latent_shape)} but these are {tuple(latents.shape[1:])}"
        )
    trainer = DenoiserTrainer(
        data,
        latents,
        ae_config,
        ae_hash,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        info=info,
        seed=seed,
        conditioning=conditioning,
        init=start,
    )
    return run_training(trainer, out_dir, resume=resume, stop=stop, console=console)


def _mirrored_conditioning(
    data: PreparedData, names: tuple[str, ...], covariates: Path | None, record: dict[str, Any]
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """`conditioning_inputs` of originals + mirrored copies (a mirrored lesion has its own position),
    its record keeping the originals' case counts."""
    attrs, known, both = conditioning_inputs(data, names, covariates, None)
    return attrs, known, {**both, **{k: record[k] for k in ("class_counts", "covariates") if k in record}}


NOISE_PROCESS = ("objective", "schedule", "beta_start", "beta_end", "num_train_timesteps", "zero_terminal_snr")


def noise_process_changes(before: DenoiserConfig, after: DenoiserConfig) -> list[str]:
    """'setting old (now new)' for each setting of the noise process that differs between an
    `--init` denoiser and the run's config (empty: the same process)."""
    return [
        f"{name} {getattr(before, name)} (now {getattr(after, name)})"
        for name in NOISE_PROCESS
        if getattr(before, name) != getattr(after, name)
    ]


def _init_model(path: Path, ae_hash: str) -> tuple[dict[str, torch.Tensor], Any, str, str]:
    """(tensors, checked config, sha256, path) of the `--init` denoiser; an error unless it was
    trained on this autoencoder."""
    from ldmtool.models.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(path)
    tensors, config = read_denoiser(path)
    if config.autoencoder_sha256 != ae_hash:
        raise LdmError(f"--init {path} was trained on another autoencoder; fine-tune on the one it was trained on")
    return tensors, config, file_sha256(path), str(path)
