"""Samplers behind one signature: `sampler(model, x_T, generator=None, callback=None) -> x_0`.

`model(x_t, t)` returns the denoiser's output in the scheduler's prediction type (ε or v); it is
any callable (a bare UNet, or a wrapper adding conditioning and classifier-free guidance), so
guidance is a property of the model function, not a new sampler. Samplers hold no weights.
Noise schedules and update rules are MONAI's (`monai.networks.schedulers`).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ldmtool.config import DenoiserConfig
from ldmtool.errors import LdmError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step index, t, x_t, x0_hat)


class Sampler(Protocol):
    name: str
    steps: int

    def __call__(self, model: ModelFn, x: torch.Tensor, generator: torch.Generator | None = None,
                 callback: Callback | None = None) -> torch.Tensor: ...


def training_scheduler(cfg: DenoiserConfig):
    """The forward (noising) process used in training: MONAI's DDPMScheduler."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,  # latents are not bounded to [-1, 1]
        **cfg.schedule_args(),
    )


class _SchedulerSampler:
    """Runs a MONAI scheduler's `step` over its inference timesteps."""

    name = "base"

    def __init__(self, scheduler, steps: int, step_kwargs: dict | None = None):
        self.scheduler = scheduler
        self.steps = steps
        self.step_kwargs = step_kwargs or {}

    def __call__(self, model: ModelFn, x: torch.Tensor, generator: torch.Generator | None = None,
                 callback: Callback | None = None) -> torch.Tensor:
        self.scheduler.set_timesteps(self.steps, device=x.device)
        for i, t in enumerate(self.scheduler.timesteps):
            t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            out = model(x, t_batch).float()
            x, x0 = self.scheduler.step(out, int(t), x, generator=generator, **self.step_kwargs)
            if callback is not None:
                callback(i, int(t), x, x0)
        return x


class DDIMSampler(_SchedulerSampler):
    """DDIM (Song et al. 2021); eta=0 is deterministic, eta=1 is ancestral (DDPM-like) sampling."""

    name = "ddim"

    def __init__(self, cfg: DenoiserConfig, steps: int, eta: float = 0.0):
        from monai.networks.schedulers import DDIMScheduler

        sched = DDIMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            schedule=cfg.schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=False,  # MONAI's default clips x0 to [-1, 1]: wrong for latents
            set_alpha_to_one=True,
            **cfg.schedule_args(),
        )
        super().__init__(sched, steps, {"eta": eta})


class DDPMSampler(_SchedulerSampler):
    """Ancestral DDPM (Ho et al. 2020) over all training timesteps, MONAI's DDPMScheduler."""

    name = "ddpm"

    def __init__(self, cfg: DenoiserConfig, steps: int):
        from monai.networks.schedulers import DDPMScheduler

        sched = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            schedule=cfg.schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=False,
            **cfg.schedule_args(),
        )
        super().__init__(sched, steps)


def make_sampler(name: str, cfg: DenoiserConfig, steps: int, eta: float = 0.0) -> Sampler:
    """Build a sampler by name.

    'ddpm' with fewer steps than training timesteps runs DDIM with eta=1, which is ancestral DDPM
    on the strided timestep grid (MONAI's DDPMScheduler.step assumes consecutive timesteps).
    """
    if steps < 1 or steps > cfg.num_train_timesteps:
        raise LdmError(f"--steps must be between 1 and {cfg.num_train_timesteps}; got {steps}")
    if name == "ddim":
        return DDIMSampler(cfg, steps, eta)
    if name == "ddpm":
        if steps == cfg.num_train_timesteps:
            return DDPMSampler(cfg, steps)
        sampler = DDIMSampler(cfg, steps, eta=1.0)
        sampler.name = "ddpm"
        return sampler
    raise LdmError(f"--sampler must be one of ddim, ddpm; got {name!r}")


SAMPLERS = ("ddim", "ddpm")
