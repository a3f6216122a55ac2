"""Samplers behind one signature: `sampler(model, x_T, generator=None, callback=None) -> x_0`.

`model(x_t, t)` returns the denoiser's output in the objective it was trained with (ε, v or, for
rectified flow, the velocity x_0 − noise); it is any callable (a bare UNet, or a wrapper adding
conditioning and classifier-free guidance), so guidance is a property of the model function, not a
new sampler. Samplers hold no weights.

What comes from MONAI (`monai.networks.schedulers`) and what is written here:
- the diffusion noise schedule ᾱ_t is MONAI's DDPMScheduler's;
- the rectified-flow interpolation, its inference grid and its Euler step are MONAI's
  RFlowScheduler's (used as is by `EulerFlowSampler`);
- the DDIM/DDPM update is written out here because MONAI's `step` draws the noise of a whole batch
  from one generator; per-sample generators (a list, one per row) are what make a sample
  independent of the batch it ran in;
- DPM-Solver++(2M) is written out here because MONAI has no DPM-Solver.
Notation (DDIM paper, Song et al. 2021): ᾱ_t = alphas_cumprod[t], x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from ldmtool.config import DenoiserConfig
from ldmtool.errors import LdmError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step index, t, x_t, x0_hat)
Generators = torch.Generator | Sequence[torch.Generator] | None

DIFFUSION_SAMPLERS = ("ddim", "ddpm", "dpmpp2m")  # for ε / v denoisers
FLOW_SAMPLERS = ("euler",)  # for rectified-flow denoisers
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS
SPACINGS = ("trailing", "leading", "linspace")


def sample_seed(base_seed: int, index: int, attempt: int = 0) -> int:
    """Seed of sample `index`: independent of batching and sharding. `attempt` > 0 gives the
    replacement candidates of a sample rejected as a near-copy of a training volume."""
    entropy = [int(base_seed), int(index)] + ([int(attempt)] if attempt else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample: it draws the sample's initial noise, then any noise a
    stochastic sampler adds, so a sample depends on its own seed only (not on batch or device)."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def initial_noise(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    """(B, *shape) standard normal noise, row b drawn from generators[b]."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


class Sampler(Protocol):
    name: str
    steps: int
    timesteps: list[int]

    def __call__(
        self, model: ModelFn, x: torch.Tensor, generator: Generators = None, callback: Callback | None = None
    ) -> torch.Tensor: ...


def training_scheduler(cfg: DenoiserConfig):
    """The forward (noising) process used in training: MONAI's DDPMScheduler for ε/v, MONAI's
    RFlowScheduler (x_t = (1−t/T) x_0 + (t/T) noise, target x_0 − noise) for flow."""
    from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

    if cfg.objective == "flow":
        return RFlowScheduler(num_train_timesteps=cfg.num_train_timesteps, use_discrete_timesteps=True)
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


def output_to_eps_x0(
    out: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor, prediction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A denoiser's ε or v output at x_t → (ε̂, x̂_0 by Tweedie's formula). `a_t` is ᾱ_t, a scalar
    or per-sample values broadcastable to x."""
    if prediction == "epsilon":
        return out, (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
    if prediction == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x_0
        return a_t.sqrt() * out + (1 - a_t).sqrt() * x, a_t.sqrt() * x - (1 - a_t).sqrt() * out
    raise LdmError(f"a {prediction} denoiser has no noise prediction; guidance needs an ε or v denoiser")


def eps_to_output(eps: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor, prediction: str) -> torch.Tensor:
    """The inverse of `output_to_eps_x0` for a given ε̂: the ε or v output whose conversion gives
    back ε̂ (and x̂_0 = (x − √(1−ᾱ) ε̂)/√ᾱ), so a hook can hand a modified ε̂ to any sampler."""
    if prediction == "epsilon":
        return eps
    return (eps - (1 - a_t).sqrt() * x) / a_t.sqrt()


def timestep_grid(num_train: int, steps: int, spacing: str = "trailing", start: int | None = None) -> list[int]:
    """Descending inference timesteps (the conventions of Lin et al. 2024, "Common diffusion noise
    schedules and sample steps are flawed", Table 2):

    - trailing: round(T, T − T/N, ...) − 1: the first step starts at the last training timestep
      (pure noise); the right choice for few steps.
    - leading: 0, T//N, 2·T//N, ... reversed (MONAI's DDIMScheduler with steps_offset=0): the
      first step starts below T − 1, so few-step samples start from noise the model never saw.
    - linspace: N points evenly spaced over [0, T−1], reversed.

    `start` < T − 1 puts the grid on the timesteps [0, start] instead (the first step at `start`).
    """
    if start is not None:
        if not 0 <= start < num_train:
            raise LdmError(f"the first timestep must lie in [0, {num_train - 1}]; got {start}")
        return timestep_grid(start + 1, steps, spacing)
    if spacing == "trailing":
        grid = np.round(np.arange(num_train, 0, -num_train / steps)).astype(np.int64) - 1
    elif spacing == "leading":
        grid = (np.arange(steps) * (num_train // steps))[::-1]
    elif spacing == "linspace":
        grid = np.round(np.linspace(0, num_train - 1, steps))[::-1]
    else:
        raise LdmError(f"--spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")
    return [int(t) for t in grid[:steps]]


class _DiffusionSampler:
    """Common parts of the ε/v samplers: schedule, grid and the conversion of the model output."""

    name = ""

    def __init__(
        self,
        cfg: DenoiserConfig,
        steps: int,
        spacing: str = "trailing",
        clip: float | None = None,
        start: int | None = None,
    ):
        self.steps = steps
        self.spacing = spacing
        self.clip = clip  # clamp x̂_0 to [−clip, clip] (and re-derive ε̂), for bounded targets
        self.prediction = cfg.prediction_type
        self.alphas_cumprod = training_scheduler(cfg).alphas_cumprod.double()
        self.timesteps = timestep_grid(cfg.num_train_timesteps, steps, spacing, start)

    def _ac(self, t: int, device) -> torch.Tensor:
        """ᾱ_t, with ᾱ = 1 before the first training step (t = −1, the clean end)."""
        return self.alphas_cumprod[t].float().to(device) if t >= 0 else torch.tensor(1.0, device=device)

    def _predict(self, model: ModelFn, x: torch.Tensor, t: int, a_t: torch.Tensor):
        """Model output → (predicted noise ε̂, predicted clean sample x̂_0)."""
        out = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
        eps, x0 = output_to_eps_x0(out, x, a_t, self.prediction)
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt().clamp_min(1e-8)
        return eps, x0

    def _next(self, i: int) -> int:
        return self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1


class DDIMSampler(_DiffusionSampler):
    """DDIM (Song et al. 2021). eta=0: deterministic; eta=1: ancestral sampling whose variance is
    DDPM's posterior variance β̃_t, i.e. DDPM (Ho et al. 2020) on the chosen timestep grid."""

    name = "ddim"

    def __init__(
        self,
        cfg: DenoiserConfig,
        steps: int,
        eta: float = 0.0,
        spacing: str = "trailing",
        clip: float | None = None,
        start: int | None = None,
    ):
        super().__init__(cfg, steps, spacing, clip, start)
        self.eta = float(eta)

    def __call__(
        self, model: ModelFn, x: torch.Tensor, generator: Generators = None, callback: Callback | None = None
    ) -> torch.Tensor:
        for i, t in enumerate(self.timesteps):
            t_prev = self._next(i)
            a_t, a_prev = self._ac(t, x.device), self._ac(t_prev, x.device)
            eps, x0 = self._predict(model, x, t, a_t)
            # σ_t = η √((1−ᾱ_{t-1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t-1})   (eq. 16)
            sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
            # x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1−ᾱ_{t-1}−σ²) ε̂ + σ z   (eq. 12)
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if self.eta > 0 and t_prev >= 0:
                x = x + sigma * randn_like_rows(x, generator)
            if callback is not None:
                callback(i, t, x, x0)
        return x


class DDPMSampler(DDIMSampler):
    """Ancestral DDPM: DDIM with eta=1 (same posterior mean and variance β̃_t as Ho et al.)."""

    name = "ddpm"

    def __init__(self, cfg: DenoiserConfig, steps: int, eta: float = 1.0, spacing: str = "trailing"):
        super().__init__(cfg, steps, eta=1.0, spacing=spacing)


class DPMSolverPP2MSampler(_DiffusionSampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a deterministic second-order multistep
    solver of the probability-flow ODE in data-prediction form; one model call per step.

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ), h_i = λ_{i+1} − λ_i and r = h_{i−1}/h_i:
        D_i = (1 + 1/(2r)) x̂0_i − 1/(2r) x̂0_{i−1}     (first step: D_0 = x̂0_0)
        x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} (e^{−h_i} − 1) D_i
    The last step goes to σ = 0, where the update is x = x̂0 (first order, as "lower order final").
    """

    name = "dpmpp2m"
    eta = 0.0

    def __call__(
        self, model: ModelFn, x: torch.Tensor, generator: Generators = None, callback: Callback | None = None
    ) -> torch.Tensor:
        ac = self.alphas_cumprod
        lam = lambda t: 0.5 * (torch.log(ac[t]) - torch.log1p(-ac[t]))  # noqa: E731  λ = log α − log σ
        x0_prev, h_prev = None, None
        for i, t in enumerate(self.timesteps):
            t_next = self._next(i)
            eps, x0 = self._predict(model, x, t, self._ac(t, x.device))
            if t_next < 0:
                x = x0
            else:
                h = float(lam(t_next) - lam(t))
                sigma_ratio = float(((1 - ac[t_next]) / (1 - ac[t])).sqrt())
                alpha_next = float(ac[t_next].sqrt())
                if x0_prev is None:
                    d = x0
                else:
                    r = h_prev / h
                    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
                x = sigma_ratio * x - alpha_next * float(np.expm1(-h)) * d
                x0_prev, h_prev = x0, h
            if callback is not None:
                callback(i, t, x, x0)
        return x


class EulerFlowSampler:
    """Euler integration of a rectified-flow ODE with MONAI's RFlowScheduler (its grid
    t = T(1 − i/N) and its `step`); deterministic. For denoisers trained with objective `flow`."""

    name = "euler"
    eta = 0.0

    def __init__(self, cfg: DenoiserConfig, steps: int, spacing: str = "trailing"):
        self.steps = steps
        self.spacing = "uniform"
        self.scheduler = training_scheduler(cfg)
        self.scheduler.set_timesteps(steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]

    def __call__(
        self, model: ModelFn, x: torch.Tensor, generator: Generators = None, callback: Callback | None = None
    ) -> torch.Tensor:
        for i, t in enumerate(self.timesteps):
            t_next = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else 0
            v = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
            x, x0 = self.scheduler.step(v, t, x, t_next)
            if callback is not None:
                callback(i, t, x, x0)
        return x


def make_sampler(name: str, cfg: DenoiserConfig, steps: int, eta: float = 0.0, spacing: str = "trailing") -> Sampler:
    """Build a sampler by name. 'ddim' uses `eta`; 'ddpm' is always ancestral; 'dpmpp2m' is
    deterministic; 'euler' is the sampler of flow-objective denoisers."""
    if steps < 1 or steps > cfg.num_train_timesteps:
        raise LdmError(f"--steps must be between 1 and {cfg.num_train_timesteps}; got {steps}")
    if not 0.0 <= eta <= 1.0:
        raise LdmError(f"--eta must be between 0 and 1; got {eta}")
    if spacing not in SPACINGS:
        raise LdmError(f"--spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")
    if name not in SAMPLERS:
        raise LdmError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    if cfg.objective == "flow":
        if name not in FLOW_SAMPLERS:
            raise LdmError(
                f"this denoiser was trained with the flow objective: use --sampler {' or '.join(FLOW_SAMPLERS)}"
            )
        return EulerFlowSampler(cfg, steps, spacing)
    if name in FLOW_SAMPLERS:
        raise LdmError(
            f"--sampler {name} needs a denoiser trained with --objective flow; "
            f"this one is {cfg.objective}: use {', '.join(DIFFUSION_SAMPLERS)}"
        )
    if name == "ddim":
        return DDIMSampler(cfg, steps, eta, spacing)
    if name == "ddpm":
        return DDPMSampler(cfg, steps, spacing=spacing)
    return DPMSolverPP2MSampler(cfg, steps, spacing)
