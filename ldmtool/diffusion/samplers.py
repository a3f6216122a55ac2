"""Samplers behind one signature: `sampler(model, x_T, generator=None, callback=None) -> x_0`.

`model(x_t, t)` returns the denoiser's output in the schedule's prediction type (ε or v); it is
any callable (a bare UNet, or a wrapper adding conditioning and classifier-free guidance), so
guidance is a property of the model function, not a new sampler. Samplers hold no weights.

The noise schedule (ᾱ_t) is MONAI's (`monai.networks.schedulers`). The update rule is written
out here because MONAI's `step` draws the noise of a whole batch from one generator; per-sample
generators (a list, one per row) are what make a sample independent of the batch it ran in.
Notation (DDIM paper, Song et al. 2021): ᾱ_t = alphas_cumprod[t], x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from ldmtool.config import DenoiserConfig
from ldmtool.errors import LdmError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step index, t, x_t, x0_hat)
Generators = torch.Generator | Sequence[torch.Generator] | None

SAMPLERS = ("ddim", "ddpm")


class Sampler(Protocol):
    name: str
    steps: int

    def __call__(self, model: ModelFn, x: torch.Tensor, generator: Generators = None,
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


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append singleton dims so a per-sample value broadcasts over (B, ...) of rank `ndim`."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def randn_like_rows(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like x; row b from generator[b] when a list is given.

    Noise is drawn on each generator's own device and moved to x's, so CPU generators give the
    same numbers whatever device the sampler runs on."""
    if generator is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device).to(x)
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device) for g in generator]).to(x)


def uniform_timesteps(num_train: int, steps: int) -> list[int]:
    """Evenly spaced timesteps from the last training timestep down ("trailing" spacing):
    T−1, T−1−Δ, ..., with Δ = T // steps, so the first step starts from pure noise."""
    delta = num_train // steps
    return [num_train - 1 - i * delta for i in range(steps)]


class DDIMSampler:
    """DDIM (Song et al. 2021). eta=0: deterministic; eta=1: ancestral sampling whose variance is
    DDPM's posterior variance β̃_t, i.e. DDPM (Ho et al. 2020) on the chosen timestep grid."""

    name = "ddim"

    def __init__(self, cfg: DenoiserConfig, steps: int, eta: float = 0.0):
        self.steps = steps
        self.eta = float(eta)
        self.prediction = cfg.prediction_type
        self.alphas_cumprod = training_scheduler(cfg).alphas_cumprod.double()
        self.timesteps = uniform_timesteps(cfg.num_train_timesteps, steps)

    def __call__(self, model: ModelFn, x: torch.Tensor, generator: Generators = None,
                 callback: Callback | None = None) -> torch.Tensor:
        ac = self.alphas_cumprod.to(x.device)
        for i, t in enumerate(self.timesteps):
            t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
            # 1. ᾱ_t and ᾱ_{t-1} (ᾱ = 1 before the first training step)
            a_t = ac[t].float()
            a_prev = ac[t_prev].float() if t_prev >= 0 else torch.tensor(1.0, device=x.device)
            # 2. model output → predicted noise ε̂ and clean sample x̂_0
            out = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
            if self.prediction == "epsilon":
                eps = out
                x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            else:  # v-prediction: v = √ᾱ ε − √(1−ᾱ) x_0
                x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
                eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
            # 3. σ_t = η √((1−ᾱ_{t-1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t-1})   (eq. 16)
            sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
            # 4. x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1−ᾱ_{t-1}−σ²) ε̂ + σ z   (eq. 12)
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if self.eta > 0 and t_prev >= 0:
                x = x + sigma * randn_like_rows(x, generator)
            if callback is not None:
                callback(i, t, x, x0)
        return x


class DDPMSampler(DDIMSampler):
    """Ancestral DDPM: DDIM with eta=1 (same posterior mean and variance β̃_t as Ho et al.)."""

    name = "ddpm"

    def __init__(self, cfg: DenoiserConfig, steps: int, eta: float = 1.0):
        super().__init__(cfg, steps, eta=1.0)


def make_sampler(name: str, cfg: DenoiserConfig, steps: int, eta: float = 0.0) -> Sampler:
    """Build a sampler by name ('ddim' uses `eta`; 'ddpm' is always ancestral)."""
    if steps < 1 or steps > cfg.num_train_timesteps:
        raise LdmError(f"--steps must be between 1 and {cfg.num_train_timesteps}; got {steps}")
    if not 0.0 <= eta <= 1.0:
        raise LdmError(f"--eta must be between 0 and 1; got {eta}")
    table = {"ddim": DDIMSampler, "ddpm": DDPMSampler}
    if name not in table:
        raise LdmError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    return table[name](cfg, steps, eta)
