"""Training of LSSDM on stays (self-supervised: part of the observed values is hidden and reconstructed)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmtool.config import to_dict
from ldmtool.diffusion.samplers import training_scheduler
from ldmtool.errors import LdmError
from ldmtool.series.config import SeriesModelConfig, SeriesTrainConfig
from ldmtool.series.descriptors import descriptor_model
from ldmtool.series.model import LSSDM, UNKNOWN_OUTCOME, variable_graph
from ldmtool.series.prepare import normalisation, to_tensors
from ldmtool.series.reader import SeriesData
from ldmtool.train.common import make_ema
from ldmtool.train.distributed import DistInfo, StopFlag
from ldmtool.train.loop import Trainer, TrainResult, run_training
from ldmtool.train.state import step_generator

KIND = "series-lssdm"


def split_stays(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a seeded permutation, `val_fraction` held out (none below 10 stays)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction)) if n >= 10 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def observation_rates(data: SeriesData) -> list:
    """(2, T, V) fraction of stays with an observation in each cell, per outcome (0, 1); both rows the
    overall rate where outcomes are unknown. Synthetic stays may take their observation pattern from it."""
    obs = data.observed.astype(float)
    overall = obs.mean(0)
    rows = []
    for k in (0, 1):
        sel = np.zeros(len(obs), bool) if data.outcome is None else data.outcome == k
        rows.append(obs[sel].mean(0) if sel.sum() >= 5 else overall)
    return np.stack(rows).round(4).tolist()


def hide_masks(m: torch.Tensor, cfg: SeriesTrainConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(given, hidden) split of the observed cells `m` (B, T, V): each stay hides a fraction drawn
    from [hide_min, hide_max] of its observed values; `generate_fraction` of the stays hide them all."""
    b = m.shape[0]
    rate = cfg.hide_min + (cfg.hide_max - cfg.hide_min) * torch.rand(b, 1, 1, generator=g)
    rate = torch.where(torch.rand(b, 1, 1, generator=g) < cfg.generate_fraction, torch.ones_like(rate), rate)
    hidden = m & (torch.rand(m.shape, generator=g) < rate.to(m.device))
    return m & ~hidden, hidden


class SeriesTrainer(Trainer):
    """LSSDM for `run_training`: batches of stays, the four losses, an EMA of the weights.
    Best checkpoint: the lowest held-out loss of the EMA weights (hidden 10% of observed values)."""

    kind, label, unit = KIND, "train-series", "stays"
    best_key, best_mode = "val_loss", "min"

    def __init__(
        self, data: SeriesData, *, model_cfg: SeriesModelConfig, train_cfg: SeriesTrainConfig, info: DistInfo, seed: int
    ) -> None:
        self.cfg, self.info, self.seed, self.model_cfg = train_cfg, info, seed, model_cfg
        train_idx, self.val_idx = split_stays(len(data.ids), train_cfg.val_fraction, seed)
        if len(train_idx) < train_cfg.batch_size:
            raise LdmError(
                f"{len(train_idx)} training stays are fewer than a batch ({train_cfg.batch_size}); lower --batch-size"
            )
        train = data.subset(train_idx)
        self.norm = normalisation(train)
        self.tensors = to_tensors(data, self.norm)
        mean, std = np.asarray(self.norm["mean"]), np.asarray(self.norm["std"])
        adjacency = variable_graph((train.values - mean) / std, model_cfg.neighbours)
        self.train_idx = torch.from_numpy(train_idx)
        shape = data.values.shape
        self.model = LSSDM(model_cfg, shape[2], shape[1], len(data.static_names), torch.from_numpy(adjacency)).to(
            info.device
        )
        self.ema = make_ema(self.model, train_cfg.ema_decay)
        self.sched = training_scheduler(model_cfg.schedule())
        self.steps_per_epoch = max(1, len(train_idx) // train_cfg.batch_size)
        ids_hash = hashlib.sha256("\n".join(data.ids).encode()).hexdigest()[:16]
        self.settings = {"model": to_dict(model_cfg), "stays": ids_hash, "variables": data.variables, "seed": seed}
        self.config = {
            "kind": KIND,
            "model": to_dict(model_cfg),
            "train": to_dict(train_cfg),
            "variables": data.variables,
            "static_names": data.static_names,
            "grid": {"steps": data.grid.steps, "step_hours": data.grid.step_hours},
            "normalisation": self.norm,
            "outcome": None if data.outcome is None else data.source.get("outcome_column", "outcome"),
            "outcome_rate": None if data.outcome is None else float(np.nanmean(train.outcome)),
            "observation_rates": observation_rates(train),
            "descriptors": descriptor_model(train.static, train.outcome),
            # descriptors and each variable's observed fraction of a stay, drawn together for sparse synthesis
            "observation": descriptor_model(np.concatenate([train.static, train.observed.mean(1)], 1), train.outcome),
            "source_format": data.source.get("format"),
            "source_time_style": data.source.get("time_style", "hours"),
            "stays": {"train": len(train_idx), "validation": len(self.val_idx), "sha256": ids_hash},
            "graph_edges": int(adjacency.sum() // 2),
            "seed": seed,
        }

    def losses(self, idx: torch.Tensor, net, g: torch.Generator, outcome_dropout: float) -> dict[str, torch.Tensor]:
        """The four losses of the stays `idx`, every random draw from `g`."""
        device = self.info.device
        x, m, static, known, y = self.tensors.rows(idx, device)
        given, hidden = hide_masks(m, self.cfg, g)
        drop = (torch.rand(len(idx), generator=g) < outcome_dropout).to(device)
        y = torch.where(drop, torch.full_like(y, UNKNOWN_OUTCOME), y)
        z_noise = torch.randn((len(idx), self.model.n_vars, self.model_cfg.latent_dim), generator=g).to(device)
        eps = torch.randn(x.shape, generator=g).to(device)
        t = torch.randint(0, self.model_cfg.num_train_timesteps, (len(idx),), generator=g).to(device)
        a_t = self.sched.alphas_cumprod[t.cpu()].to(device)
        return net(x, given, hidden, static, known, y, z_noise, a_t, t, eps)

    def total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.cfg
        return (
            parts["diffusion"]
            + c.coarse_weight * parts["coarse"]
            + c.kl_weight * parts["kl"]
            + c.graph_weight * parts["graph"]
        )

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=g)]
        bs = self.cfg.batch_size
        return [order[s * bs : (s + 1) * bs] for s in range(self.steps_per_epoch)]

    def train_step(self, net, batch, step):
        self.model.train()
        parts = self.losses(batch, net, step_generator(self.seed, self.info.rank, step), self.cfg.outcome_dropout)
        return self.total(parts), {k: float(v.detach()) for k, v in parts.items()}, len(batch)

    def validation_step(self) -> dict[str, float]:
        if not len(self.val_idx):
            return {}
        with torch.no_grad():
            parts = self.losses(
                torch.from_numpy(self.val_idx), self.ema.module.eval(), torch.Generator().manual_seed(1234), 0.0
            )
        return {"val_loss": float(self.total(parts)), **{f"val_{k}": float(v) for k, v in parts.items()}}

    def eval_every(self, total: int) -> int:
        return max(1, min(total // 10 if total >= 10 else 1, 500))

    def report(self, row: dict[str, Any]) -> str:
        return f"step {row['step']}: held-out loss {row['val_loss']:.4f}" if "val_loss" in row else ""

    def weights(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def summary(self) -> dict[str, Any]:
        return {"stays": len(self.train_idx), "variables": self.model.n_vars, "graph_edges": self.config["graph_edges"]}


def train_series(
    data: SeriesData,
    out_dir: Path,
    *,
    model_cfg: SeriesModelConfig,
    train_cfg: SeriesTrainConfig,
    device: torch.device,
    seed: int = 0,
    console=None,
    dist: DistInfo | None = None,
    resume: str = "never",
    stop: StopFlag | None = None,
) -> TrainResult:
    """Fit LSSDM to `data` into `out_dir` (model.safetensors = best EMA weights + config)."""
    torch.manual_seed(seed)
    trainer = SeriesTrainer(
        data, model_cfg=model_cfg, train_cfg=train_cfg, info=dist or DistInfo(device=device), seed=seed
    )
    return run_training(trainer, Path(out_dir), resume=resume, stop=stop, console=console)
