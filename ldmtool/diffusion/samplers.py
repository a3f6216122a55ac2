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
  independent of the batch it ran in; RePaint's resampling (`DDIMSampler(resample=R)`, for
  inpainting) is part of that loop, as MONAI has no RePaint (diffusers' RePaintScheduler would bring
  the dependencies named below);
- the multistep solvers DPM-Solver++(2M, 3M) and UniPC-bh2 (orders 2, 3) are written out here
  because MONAI has none. diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler would
  fit (deterministic solvers draw no per-sample noise), but they bring diffusers and
  huggingface_hub as dependencies and their import into every `sample` run, for about a hundred
  lines of update formulas; these reproduce diffusers' results on the same timesteps to float32
  precision (tests/diffusion/test_diffusion_samplers.py holds diffusers' numbers).
Notation (DDIM paper, Song et al. 2021): ᾱ_t = alphas_cumprod[t], x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from ldmtool.config import DenoiserConfig
from ldmtool.errors import LdmError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step index, t, x_t, x0_hat)
Generators = torch.Generator | Sequence[torch.Generator] | None

DIFFUSION_SAMPLERS = ("ddim", "ddpm", "dpmpp2m", "dpmpp3m", "unipc2", "unipc3")  # for ε / v denoisers
FLOW_SAMPLERS = ("euler",)  # for rectified-flow denoisers
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS
SPACINGS = ("trailing", "leading", "linspace", "logsnr", "karras")
# "auto": each sampler's own spacing. Multistep solvers need steps near the clean end: on trailing
# grids their last step is a first-order jump from t = T/N − 1 to the data, which caps their accuracy
# at DDIM's (tests/diffusion/test_diffusion_samplers.py, the Gaussian closed form).
DEFAULT_SPACING = {"ddim": "trailing", "ddpm": "trailing", "euler": "trailing"}
MULTISTEP_SPACING = "logsnr"


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
    sched = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,  # latents are not bounded to [-1, 1]
        **cfg.schedule_args(),
    )
    if getattr(cfg, "zero_terminal_snr", False):
        rescale_zero_terminal_snr(sched)
    return sched


# ᾱ_T after the rescaling: not exactly 0, so that ε = (x − √ᾱ x̂_0)/√(1−ᾱ) and its inverse stay
# finite at t = T for the guidance hooks; √ᾱ_T = 3e-5 is below the cosine schedule's last step.
ZERO_SNR_FLOOR = 1e-9


def rescale_zero_terminal_snr(sched) -> None:
    """Shift and scale √ᾱ_t of a MONAI DDPMScheduler so that √ᾱ_0 is unchanged and √ᾱ_T is (nearly) 0
    (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", Algorithm 1),
    in place: `alphas_cumprod`, `alphas` and `betas` stay consistent. MONAI has no such option;
    diffusers' `rescale_zero_terminal_snr` is the same few lines on a schedule of its own."""
    root = sched.alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    ac = (root**2).clamp(min=ZERO_SNR_FLOOR)
    alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    sched.alphas_cumprod = ac.to(sched.alphas_cumprod.dtype)
    sched.alphas = alphas.to(sched.alphas.dtype)
    sched.betas = (1 - alphas).to(sched.betas.dtype)


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


def timestep_grid(
    num_train: int,
    steps: int,
    spacing: str = "trailing",
    start: int | None = None,
    alphas_cumprod: torch.Tensor | None = None,
) -> list[int]:
    """Descending inference timesteps (the conventions of Lin et al. 2024, "Common diffusion noise
    schedules and sample steps are flawed", Table 2, and two noise-level spacings):

    - trailing: round(T, T − T/N, ...) − 1: the first step starts at the last training timestep
      (pure noise); the right choice for few steps.
    - leading: 0, T//N, 2·T//N, ... reversed (MONAI's DDIMScheduler with steps_offset=0): the
      first step starts below T − 1, so few-step samples start from noise the model never saw.
    - linspace: N points evenly spaced over [0, T−1], reversed.
    - logsnr: N points evenly spaced in λ = log(α/σ) from t = T−1 to t = 0 (Lu et al. 2022,
      DPM-Solver's "logSNR" grid); needs `alphas_cumprod`.
    - karras: σ = √((1−ᾱ)/ᾱ) on Karras et al. 2022's ρ = 7 ramp from t = T−1 to t = 0 (diffusers'
      `use_karras_sigmas`); needs `alphas_cumprod`.

    `start` < T − 1 puts the grid on the timesteps [0, start] instead (the first step at `start`).
    """
    if start is not None:
        if not 0 <= start < num_train:
            raise LdmError(f"the first timestep must lie in [0, {num_train - 1}]; got {start}")
        ac = None if alphas_cumprod is None else alphas_cumprod[: start + 1]
        return timestep_grid(start + 1, steps, spacing, alphas_cumprod=ac)
    if spacing == "trailing":
        grid = np.round(np.arange(num_train, 0, -num_train / steps)).astype(np.int64) - 1
    elif spacing == "leading":
        grid = (np.arange(steps) * (num_train // steps))[::-1]
    elif spacing == "linspace":
        grid = np.round(np.linspace(0, num_train - 1, steps))[::-1]
    elif spacing in ("logsnr", "karras"):
        if alphas_cumprod is None:
            raise ValueError(f"the {spacing} spacing needs the noise schedule (alphas_cumprod)")
        grid = _noise_level_grid(alphas_cumprod[:num_train].double().numpy(), steps, spacing)
    else:
        raise LdmError(f"--spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")
    return [int(t) for t in grid[:steps]]


def _noise_level_grid(ac: np.ndarray, steps: int, spacing: str) -> np.ndarray:
    """N descending integer timesteps at evenly spaced λ (logsnr) or on the Karras ρ = 7 ramp of σ
    (karras), from t = T−1 to t = 0; rounded to the training grid and kept strictly decreasing."""
    log_sigma = 0.5 * (np.log1p(-ac) - np.log(ac))  # log σ_t = −λ_t, increasing in t
    if spacing == "logsnr":
        targets = np.linspace(log_sigma[-1], log_sigma[0], steps)
    else:
        rho, s_min, s_max = 7.0, np.exp(log_sigma[0]), np.exp(log_sigma[-1])
        ramp = np.linspace(0, 1, steps)
        targets = np.log((s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho)
    grid = np.round(np.interp(targets, log_sigma, np.arange(len(ac)))).astype(np.int64)
    for k in range(steps - 2, -1, -1):  # duplicates after rounding: push earlier (noisier) steps up
        grid[k] = max(grid[k], grid[k + 1] + 1)
    return np.minimum(grid, len(ac) - 1 - np.arange(steps))


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
        self.timesteps = timestep_grid(cfg.num_train_timesteps, steps, spacing, start, self.alphas_cumprod)

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
    DDPM's posterior variance β̃_t, i.e. DDPM (Ho et al. 2020) on the chosen timestep grid.

    `resample` R > 1: RePaint's resampling (Lugmayr et al. 2022, jump length 1) for inpainting with
    a model function that replaces the known part of its input (`guidance.Replacement`): every step
    but the last is taken R times, the result noised back to the step's level in between
    (x_t ~ q(x_t | x_{t-1}) = N(√(ᾱ_t/ᾱ_{t-1}) x_{t-1}, (1 − ᾱ_t/ᾱ_{t-1}) I)), so that what is drawn
    in the unknown part follows what the known part has become. R model calls per step."""

    name = "ddim"

    def __init__(
        self,
        cfg: DenoiserConfig,
        steps: int,
        eta: float = 0.0,
        spacing: str = "trailing",
        clip: float | None = None,
        start: int | None = None,
        resample: int = 1,
    ):
        super().__init__(cfg, steps, spacing, clip, start)
        self.eta = float(eta)
        if resample < 1:
            raise LdmError(f"--resample must be at least 1; got {resample}")
        self.resample = int(resample)

    def __call__(
        self, model: ModelFn, x: torch.Tensor, generator: Generators = None, callback: Callback | None = None
    ) -> torch.Tensor:
        for i, t in enumerate(self.timesteps):
            t_prev = self._next(i)
            a_t, a_prev = self._ac(t, x.device), self._ac(t_prev, x.device)
            x_t = x
            for take in range(self.resample if t_prev >= 0 else 1):
                if take:  # back to level t from the x_{t-1} just drawn
                    x_t = (a_t / a_prev).sqrt() * x + (1 - a_t / a_prev).clamp_min(0).sqrt() * randn_like_rows(
                        x, generator
                    )
                x, x0 = self._step(model, x_t, t, t_prev, a_t, a_prev, generator)
            if callback is not None:
                callback(i, t, x, x0)
        return x

    def _step(self, model: ModelFn, x, t: int, t_prev: int, a_t, a_prev, generator: Generators):
        """(x_{t_prev}, x̂_0) from x_t."""
        eps, x0 = self._predict(model, x, t, a_t)
        # σ_t = η √((1−ᾱ_{t-1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t-1})   (eq. 16)
        sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
        # x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1−ᾱ_{t-1}−σ²) ε̂ + σ z   (eq. 12)
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        if self.eta > 0 and t_prev >= 0:
            x = x + sigma * randn_like_rows(x, generator)
        return x, x0


class DDPMSampler(DDIMSampler):
    """Ancestral DDPM: DDIM with eta=1 (same posterior mean and variance β̃_t as Ho et al.)."""

    name = "ddpm"

    def __init__(
        self,
        cfg: DenoiserConfig,
        steps: int,
        eta: float = 1.0,
        spacing: str = "trailing",
        start: int | None = None,
        resample: int = 1,
    ):
        super().__init__(cfg, steps, eta=1.0, spacing=spacing, start=start, resample=resample)


class _MultistepSampler(_DiffusionSampler):
    """Deterministic multistep solvers of the probability-flow ODE in data-prediction form (one
    model call per step, the x̂_0 of earlier steps reused). Every coefficient is a Python float
    computed from the schedule on the host, so the step loop never waits on the device.

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ) at the grid points t_0 > ... > t_{N−1} and the clean end
    t_N (α = 1, σ = 0, λ = ∞), step i runs at order min(order, i + 1, N − i): lower order while
    the history fills up and towards the end ("lower order final"); the last step, to σ = 0,
    is first order, x_N = x̂0_{N−1}.
    """

    order = 2
    eta = 0.0

    def _schedule(self) -> tuple[list[float], list[float], list[float]]:
        """(α, σ, λ) at the N grid points and at the clean end, as Python floats."""
        ac = self.alphas_cumprod[self.timesteps]
        lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))
        return ac.sqrt().tolist() + [1.0], (1 - ac).sqrt().tolist() + [0.0], lam.tolist() + [math.inf]

    def _order(self, i: int) -> int:
        return min(self.order, i + 1, len(self.timesteps) - i)


class DPMSolverPPSampler(_MultistepSampler):
    """DPM-Solver++(2M) and (3M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its third-order
    multistep form as in the authors' code). With h_i = λ_{i+1} − λ_i, r_k = h_{i−k}/h_i and
    m_k = x̂0_{i−k}:
        x_{i+1} = (σ_{i+1}/σ_i) x_i − α_{i+1} φ D_0 + α_{i+1} (φ/h + 1) D_1 − α_{i+1} ((φ + h)/h² − ½) D_2,
    φ = e^{−h} − 1. Order 1: D_0 = m_0 (a DDIM step). Order 2: D_0 = m_0 + (m_0 − m_1)/(2 r_1), no
    D_1, D_2. Order 3: D_0 = m_0, Δ_0 = (m_0 − m_1)/r_1, Δ_1 = (m_1 − m_2)/r_2,
    D_1 = Δ_0 + r_1/(r_1 + r_2) (Δ_0 − Δ_1), D_2 = (Δ_0 − Δ_1)/(r_1 + r_2).
    """

    def __init__(
        self,
        cfg: DenoiserConfig,
        steps: int,
        spacing: str = "trailing",
        clip: float | None = None,
        start: int | None = None,
        order: int = 2,
    ):
        super().__init__(cfg, steps, spacing, clip, start)
        self.order = order
        self.name = f"dpmpp{order}m"

    def __call__(
        self, model: ModelFn, x: torch.Tensor, generator: Generators = None, callback: Callback | None = None
    ) -> torch.Tensor:
        ac = self.alphas_cumprod
        lam = lambda t: 0.5 * (torch.log(ac[t]) - torch.log1p(-ac[t]))  # noqa: E731  λ = log α − log σ
        x0s: list[torch.Tensor] = []  # x̂_0 of this and earlier steps, most recent first
        hs: list[float] = []  # step sizes in λ of earlier steps, most recent first
        for i, t in enumerate(self.timesteps):
            t_next = self._next(i)
            eps, x0 = self._predict(model, x, t, self._ac(t, x.device))
            x0s = [x0] + x0s[: self.order - 1]
            if t_next < 0:
                x = x0
            else:
                h = float(lam(t_next) - lam(t))
                sigma_ratio = float(((1 - ac[t_next]) / (1 - ac[t])).sqrt())
                alpha_next = float(ac[t_next].sqrt())
                order = self._order(i)
                if order == 1:
                    d = x0
                elif order == 2:
                    r = hs[0] / h
                    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0s[1]
                if order < 3:
                    x = sigma_ratio * x - alpha_next * float(np.expm1(-h)) * d
                else:
                    x = sigma_ratio * x + self._third_order(x0s, h, hs[0] / h, hs[1] / h, alpha_next)
                hs = [h] + hs[: self.order - 1]
            if callback is not None:
                callback(i, t, x, x0)
        return x

    @staticmethod
    def _third_order(m: list[torch.Tensor], h: float, r0: float, r1: float, alpha: float) -> torch.Tensor:
        """The x̂_0 part of the third-order update (everything but (σ_{i+1}/σ_i) x_i)."""
        phi = math.expm1(-h)
        d1_0, d1_1 = (m[0] - m[1]) / r0, (m[1] - m[2]) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return -alpha * phi * m[0] + alpha * (phi / h + 1) * d1 - alpha * ((phi + h) / h**2 - 0.5) * d2


def _unipc_weights(h: float, rks: list[float], corrector: bool) -> list[float]:
    """UniPC-bh2 weights ρ (Zhao et al. 2023, "UniPC", Algorithms 1-2, B(h) = e^{−h} − 1, data
    prediction) of the differences (m_k − m_0)/r_k, k = 1..p−1 (and, for the corrector, of
    m_t − m_0): the solution of R ρ = b, R_{jk} = r_k^{j−1}, b_j = j! (−h) φ_{j+1}(−h) / B(h) with
    the φ-functions of exponential integrators, r_p = 1 (the predictor drops the last row and
    column); order 2's predictor and order 1's corrector use ρ = ½."""
    p = len(rks) + 1
    if not corrector and p == 1:
        return []
    if (corrector and p == 1) or (not corrector and p == 2):
        return [0.5]
    hh = -h
    rk = np.array(rks + [1.0])
    h_phi_k, factorial = math.expm1(hh) / hh - 1, 1
    rows, b = [], []
    for j in range(1, p + 1):
        rows.append(rk ** (j - 1))
        b.append(h_phi_k * factorial / math.expm1(hh))
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.stack(rows), np.array(b)
    return (np.linalg.solve(R, b) if corrector else np.linalg.solve(R[:-1, :-1], b[:-1])).tolist()


class UniPCSampler(_MultistepSampler):
    """UniPC (Zhao et al. 2023) with the bh2 variant, data prediction, order 2 or 3: a multistep
    predictor (UniP) and a corrector (UniC) that refines x_i with the model output already computed
    at x_i, so the corrector costs no extra model call. As in the authors' code and diffusers'
    UniPCMultistepScheduler, x̂_0 is computed at the predicted x_i and no correction follows the
    last call."""

    def __init__(
        self,
        cfg: DenoiserConfig,
        steps: int,
        spacing: str = "trailing",
        clip: float | None = None,
        start: int | None = None,
        order: int = 3,
    ):
        super().__init__(cfg, steps, spacing, clip, start)
        self.order = order
        self.name = f"unipc{order}"

    def _update(self, j: int, x: torch.Tensor, m: list[torch.Tensor], order: int, m_t: torch.Tensor | None = None):
        """From grid point j to j+1 with x̂_0 history m (m[0] at j, m[1] at j−1, ...); with m_t (the
        x̂_0 at j+1) this is the corrector, else the predictor."""
        alpha, sigma, lam = self._asl
        h = lam[j + 1] - lam[j]
        rks = [(lam[j - k] - lam[j]) / h for k in range(1, order)]
        rhos = _unipc_weights(h, rks, corrector=m_t is not None)
        coef = alpha[j + 1] * math.expm1(-h)
        x = (sigma[j + 1] / sigma[j]) * x - coef * m[0]
        diffs = [(m[k] - m[0]) / rks[k - 1] for k in range(1, order)]
        if m_t is not None:
            diffs.append(m_t - m[0])
        for rho, d in zip(rhos, diffs):
            x = x - (coef * rho) * d
        return x

    def __call__(
        self, model: ModelFn, x: torch.Tensor, generator: Generators = None, callback: Callback | None = None
    ) -> torch.Tensor:
        self._asl = self._schedule()
        last = len(self.timesteps) - 1
        x0s: list[torch.Tensor] = []  # x̂_0 of earlier steps, most recent first
        x_prev = x
        for i, t in enumerate(self.timesteps):
            _, x0 = self._predict(model, x, t, self._ac(t, x.device))
            if 0 < i < last:  # UniC: re-do step i−1 with x̂_0 at x_i too
                x = self._update(i - 1, x_prev, x0s, self._order(i - 1), m_t=x0)
            x0s = [x0] + x0s[: self.order - 1]
            x_prev = x
            x = x0 if i == last else self._update(i, x, x0s, self._order(i))
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


def make_sampler(
    name: str,
    cfg: DenoiserConfig,
    steps: int,
    eta: float = 0.0,
    spacing: str = "auto",
    start: int | None = None,
    resample: int = 1,
) -> Sampler:
    """Build a sampler by name. 'ddim' uses `eta`; 'ddpm' is always ancestral; 'dpmpp2m',
    'dpmpp3m', 'unipc2' and 'unipc3' are deterministic multistep solvers; 'euler' is the sampler of
    flow-objective denoisers. `spacing` "auto" picks the sampler's own (DEFAULT_SPACING). `start`:
    the first timestep, below T − 1 to run from a partly noised sample (ε/v samplers only).
    `resample` > 1: RePaint's resampling (`DDIMSampler`; ddim and ddpm only)."""
    if steps < 1 or steps > cfg.num_train_timesteps:
        raise LdmError(f"--steps must be between 1 and {cfg.num_train_timesteps}; got {steps}")
    if not 0.0 <= eta <= 1.0:
        raise LdmError(f"--eta must be between 0 and 1; got {eta}")
    if spacing != "auto" and spacing not in SPACINGS:
        raise LdmError(f"--spacing must be one of auto, {', '.join(SPACINGS)}; got {spacing!r}")
    if name not in SAMPLERS:
        raise LdmError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    if resample != 1 and name not in ("ddim", "ddpm"):
        raise LdmError(f"--resample {resample} needs --sampler ddim or ddpm (it steps back and forth); got {name}")
    if spacing == "auto":
        spacing = DEFAULT_SPACING.get(name, MULTISTEP_SPACING)
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
        return DDIMSampler(cfg, steps, eta, spacing, start=start, resample=resample)
    if name == "ddpm":
        return DDPMSampler(cfg, steps, spacing=spacing, start=start, resample=resample)
    if name.startswith("unipc"):
        return UniPCSampler(cfg, steps, spacing, start=start, order=int(name[-1]))
    return DPMSolverPPSampler(cfg, steps, spacing, start=start, order=int(name[-2]))
