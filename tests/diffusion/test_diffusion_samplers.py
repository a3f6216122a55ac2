"""Samplers: the shared contract, determinism, and convergence on a data distribution whose exact
denoiser is known in closed form (per-element Gaussian data)."""

import pytest
import torch

from ldmtool.config import DenoiserConfig
from ldmtool.diffusion.samplers import (
    DIFFUSION_SAMPLERS,
    MULTISTEP_SPACING,
    SAMPLERS,
    SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPPSampler,
    EulerFlowSampler,
    UniPCSampler,
    make_sampler,
    timestep_grid,
    training_scheduler,
)
from ldmtool.errors import LdmError

SHAPES = {"2d": (2, 3, 6, 6), "3d": (2, 4, 3, 6, 6)}


def _cfg(**kw) -> DenoiserConfig:
    return DenoiserConfig(channels=(8, 16), norm_num_groups=4, **kw)


def _cfg_for(name: str, objective: str = "eps") -> DenoiserConfig:
    return _cfg(objective="flow" if name == "euler" else objective)


def flow_model(mu: float, s: float, T: int = 1000):
    """Exact E[x0 - noise | x_t] under MONAI's rectified flow x_t = tau x0 + (1 - tau) noise,
    tau = 1 - t/T, when every element of x0 is N(mu, s^2)."""

    def model(x, t):
        tau = (1 - t.double() / T).view(-1, *[1] * (x.dim() - 1))
        xd = x.double()
        var = tau**2 * s * s + (1 - tau) ** 2
        centred = xd - tau * mu
        x0 = mu + tau * s * s / var * centred
        noise = (1 - tau) / var * centred
        return (x0 - noise).to(x.dtype)

    return model


def oracle(name: str, smp, mu: float, s: float, objective: str = "eps"):
    """The exact model for Gaussian data in the sampler's own objective."""
    if name == "euler":
        return flow_model(mu, s)
    return gaussian_model(smp.alphas_cumprod, mu, s, objective)


def gaussian_model(alphas_cumprod: torch.Tensor, mu: float, s: float, objective: str = "eps"):
    """Exact E[eps | x_t] (or E[v | x_t]) when every element of x0 is N(mu, s^2).

    x_t = sqrt(a) x0 + sqrt(1 - a) eps  =>  E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
    """
    ac = alphas_cumprod.double()

    def model(x, t):
        a = ac[t].view(-1, *[1] * (x.dim() - 1))
        xd = x.double()
        eps = (1 - a).sqrt() * (xd - a.sqrt() * mu) / (a * s * s + 1 - a)
        if objective == "eps":
            return eps.to(x.dtype)
        x0 = (xd - (1 - a).sqrt() * eps) / a.sqrt()
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).to(x.dtype)

    return model


def point_mass_model(alphas_cumprod: torch.Tensor, mu: float, calls: list | None = None):
    """Exact eps-prediction when the data is the constant mu."""
    ac = alphas_cumprod.double()

    def model(x, t):
        a = ac[t].view(-1, *[1] * (x.dim() - 1))
        eps = (x.double() - a.sqrt() * mu) / (1 - a).sqrt()
        if calls is not None:
            calls.append(eps.clone())
        return eps.float()

    return model


def _noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_output_shape_and_model_calls(name, dims):
    shape = SHAPES[dims]
    smp = make_sampler(name, _cfg_for(name), 4)
    assert smp.name == name and smp.steps == 4
    seen_t, cb = [], []

    def model(x, t):
        assert x.shape == shape
        assert t.shape == (shape[0],) and t.dtype == torch.long
        seen_t.append(int(t[0]))
        return 0.1 * x

    out = smp(
        model,
        _noise(shape),
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x, x0: cb.append((i, t, x.shape, x0.shape)),
    )
    assert out.shape == shape and torch.isfinite(out).all()
    assert len(seen_t) == 4
    assert all(a > b for a, b in zip(seen_t, seen_t[1:]))  # timesteps strictly decrease
    assert seen_t == smp.timesteps
    assert seen_t[0] >= 999 and seen_t[-1] <= 1000 // 4 + 1  # from pure noise to within one stride of clean
    assert [c[0] for c in cb] == [0, 1, 2, 3] and [c[1] for c in cb] == seen_t
    assert all(c[2] == shape and c[3] == shape for c in cb)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("dims", sorted(SHAPES))
def test_deterministic_under_fixed_seed(name, dims):
    shape = SHAPES[dims]
    model = oracle(name, make_sampler(name, _cfg_for(name), 5), 0.3, 0.8)
    x = _noise(shape)

    def run(seed):
        smp = make_sampler(name, _cfg_for(name), 5)
        return smp(model, x.clone(), generator=None if seed is None else torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    if name != "ddpm":  # deterministic samplers: no noise is drawn, the generator does not matter
        torch.testing.assert_close(a, c, atol=0, rtol=0)
        torch.testing.assert_close(a, run(None), atol=0, rtol=0)
    else:  # ancestral: fresh noise at every step
        assert (a - c).abs().max() > 1e-3


def test_ddim_eta_one_is_stochastic():
    ac = make_sampler("ddim", _cfg(), 5).alphas_cumprod
    model = gaussian_model(ac, 0.3, 0.8)
    x = _noise((1, 2, 8, 8))
    smp = make_sampler("ddim", _cfg(), 5, eta=1.0)
    a = smp(model, x.clone(), generator=torch.Generator().manual_seed(0))
    b = smp(model, x.clone(), generator=torch.Generator().manual_seed(1))
    assert (a - b).abs().max() > 1e-3


def _moment_errors(name, steps, objective, mu=0.7, s=0.5, n=4000, spacing="trailing"):
    smp = make_sampler(name, _cfg_for(name, objective), steps, spacing=spacing)
    model = oracle(name, smp, mu, s, objective)
    x = _noise((n, 1, 1, 1), seed=0)
    out = smp(model, x, generator=torch.Generator().manual_seed(1))
    return abs(float(out.mean()) - mu), abs(float(out.std()) - s)


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_gaussian_data_moments_converge(name, objective):
    if name == "euler" and objective == "v":
        pytest.skip("euler samples flow denoisers only")
    coarse = _moment_errors(name, 10, objective)
    fine = _moment_errors(name, 200, objective)
    # more steps: no worse (small slack for the Monte-Carlo error of 4000 samples) ...
    assert fine[0] <= coarse[0] + 0.02
    assert fine[1] <= coarse[1] + 0.01
    # ... and close to the data distribution N(0.7, 0.5^2)
    assert fine[0] < 0.04, fine
    assert fine[1] < 0.04, fine


def test_full_ddpm_matches_gaussian_data():
    cfg = _cfg()
    smp = make_sampler("ddpm", cfg, cfg.num_train_timesteps)
    assert isinstance(smp, DDPMSampler) and smp.name == "ddpm"
    model = gaussian_model(smp.alphas_cumprod, 0.7, 0.5)
    out = smp(model, _noise((4000, 1, 1, 1)), generator=torch.Generator().manual_seed(1))
    assert abs(float(out.mean()) - 0.7) < 0.03
    assert abs(float(out.std()) - 0.5) < 0.03


@pytest.mark.parametrize(
    "name,steps",
    [("ddim", 3), ("ddim", 25), ("ddpm", 7), ("ddpm", 1000), ("dpmpp2m", 3), ("dpmpp2m", 20)]
    + [(n, k) for n in ("dpmpp3m", "unipc2", "unipc3") for k in (3, 10)],
)
def test_point_mass_data_is_recovered_exactly(name, steps):
    smp = make_sampler(name, _cfg(), steps)
    model = point_mass_model(smp.alphas_cumprod, 0.42)
    out = smp(model, _noise((3, 2, 4, 4)), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full_like(out, 0.42), atol=1e-4, rtol=0)


@pytest.mark.parametrize("steps", [3, 10])
def test_ddim_trajectory_stays_on_the_timestep_grid(steps):
    # For constant data, deterministic DDIM keeps x_t = sqrt(a_t) mu + sqrt(1 - a_t) eps with the
    # same eps at every timestep it visits, so the exact model predicts the same eps at every call.
    smp = make_sampler("ddim", _cfg(), steps)
    calls: list[torch.Tensor] = []
    smp(point_mass_model(smp.alphas_cumprod, 0.42, calls), _noise((2, 1, 4, 4)))
    assert len(calls) == steps
    for eps in calls[1:]:
        torch.testing.assert_close(eps, calls[0], atol=1e-3, rtol=1e-3)


def test_make_sampler_kinds():
    cfg = _cfg()
    assert isinstance(make_sampler("ddim", cfg, 10), DDIMSampler)
    fast_ddpm = make_sampler("ddpm", cfg, 10)
    assert isinstance(fast_ddpm, DDPMSampler) and fast_ddpm.name == "ddpm" and fast_ddpm.eta == 1.0
    assert make_sampler("ddim", cfg, 10, eta=0.5).eta == 0.5
    assert make_sampler("ddim", cfg, cfg.num_train_timesteps).steps == cfg.num_train_timesteps
    assert make_sampler("ddim", _cfg(objective="v"), 3).prediction == "v_prediction"
    assert training_scheduler(cfg).prediction_type == "epsilon"
    torch.testing.assert_close(
        training_scheduler(cfg).alphas_cumprod.double(), make_sampler("ddim", cfg, 3).alphas_cumprod
    )
    # trailing grid: starts at the last training timestep, evenly spaced
    assert make_sampler("ddim", cfg, 4).timesteps == [999, 749, 499, 249]


@pytest.mark.parametrize(
    "name,steps", [("bogus", 10), ("DDIM ", 10), ("ddim", 0), ("ddpm", 0), ("ddim", -1), ("ddim", 1001), ("ddpm", 1001)]
)
def test_make_sampler_errors(name, steps):
    with pytest.raises(LdmError) as err:
        make_sampler(name, _cfg(), steps)
    assert "\n" not in str(err.value)
    assert ("--steps" in str(err.value)) or ("--sampler" in str(err.value))


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", DIFFUSION_SAMPLERS)
def test_every_spacing_converges_with_steps(name, spacing):
    coarse = _moment_errors(name, 10, "eps", spacing=spacing)
    fine = _moment_errors(name, 200, "eps", spacing=spacing)
    assert fine[0] < 0.04 and fine[1] < 0.04, (coarse, fine)


def test_timestep_grids():
    ac = training_scheduler(_cfg()).alphas_cumprod
    assert timestep_grid(1000, 4, "trailing") == [999, 749, 499, 249]
    assert timestep_grid(1000, 4, "leading") == [750, 500, 250, 0]
    assert timestep_grid(1000, 4, "linspace") == [999, 666, 333, 0]
    for spacing in SPACINGS:
        for steps in (1, 7, 50, 999, 1000):
            grid = timestep_grid(1000, steps, spacing, alphas_cumprod=ac)
            assert len(grid) == steps and all(a > b for a, b in zip(grid, grid[1:]))
            assert 0 <= grid[-1] and grid[0] <= 999
    # the few-step regime: only trailing starts from pure noise
    assert timestep_grid(1000, 5, "trailing")[0] == 999 and timestep_grid(1000, 5, "leading")[0] == 800
    # a later start: the same grid over [0, start]
    assert timestep_grid(1000, 2, "trailing", start=966) == [966, 483]
    assert timestep_grid(1000, 1, "trailing", start=966) == [966]
    with pytest.raises(LdmError, match="first timestep"):
        timestep_grid(1000, 2, start=1000)
    # noise-level grids: from pure noise to the cleanest training step; logsnr evenly spaced in λ
    for spacing in ("logsnr", "karras"):
        grid = timestep_grid(1000, 6, spacing, alphas_cumprod=ac)
        assert grid[0] == 999 and grid[-1] == 0
    assert timestep_grid(1000, 6, "logsnr", alphas_cumprod=ac) == [999, 821, 571, 212, 19, 0]
    lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))
    steps = torch.diff(lam[timestep_grid(1000, 20, "logsnr", alphas_cumprod=ac)].double())
    # (the last steps cover few integer timesteps: rounding moves them most)
    assert float((steps[:-2] - steps.mean()).abs().max()) < 0.1 * float(steps.mean())
    assert timestep_grid(1000, 3, "logsnr", start=500, alphas_cumprod=ac)[0] == 500


def test_auto_spacing():
    cfg = _cfg()
    assert make_sampler("ddim", cfg, 10).spacing == "trailing"
    assert make_sampler("ddpm", cfg, 10).spacing == "trailing"
    for name in ("dpmpp2m", "dpmpp3m", "unipc2", "unipc3"):
        assert make_sampler(name, cfg, 10).spacing == MULTISTEP_SPACING
        assert make_sampler(name, cfg, 10, spacing="linspace").spacing == "linspace"
    assert isinstance(make_sampler("unipc2", cfg, 4), UniPCSampler) and make_sampler("unipc2", cfg, 4).order == 2
    assert make_sampler("dpmpp3m", cfg, 4).order == 3 and make_sampler("unipc3", cfg, 4).name == "unipc3"


# diffusers 0.42.1's DPMSolverMultistepScheduler (algorithm_type dpmsolver++) and
# UniPCMultistepScheduler (bh2) with solver_order 2 / 3, final_sigmas_type "zero", this package's
# betas and the 6-step logsnr grid [999, 821, 571, 212, 19, 0], on the exact ε model of N(0.7, 0.5²)
# data, from x_T = -2.5, -1.5, ..., 2.5 (float64).
DIFFUSERS_REFERENCE = {
    "dpmpp2m": [-0.48334, -0.01158, 0.46018, 0.93194, 1.4037, 1.87546],
    "dpmpp3m": [-0.70149, -0.14276, 0.41597, 0.9747, 1.53343, 2.09216],
    "unipc2": [-0.53682, -0.04374, 0.44934, 0.94242, 1.4355, 1.92858],
    "unipc3": [-0.76112, -0.17861, 0.40389, 0.98639, 1.56889, 2.15139],
}


@pytest.mark.parametrize("name", sorted(DIFFUSERS_REFERENCE))
def test_multistep_solvers_match_diffusers(name):
    smp = make_sampler(name, _cfg(), 6, spacing="logsnr")
    out = smp(gaussian_model(smp.alphas_cumprod, 0.7, 0.5), torch.linspace(-2.5, 2.5, 6).reshape(6, 1, 1, 1))
    torch.testing.assert_close(out.flatten(), torch.tensor(DIFFUSERS_REFERENCE[name]), atol=2e-4, rtol=0)


def _ode_error(name: str, steps: int, mu: float = 1.5, s: float = 0.2) -> float:
    """Largest error of the state at the cleanest grid timestep (t = 0 on the logsnr grid) against
    the exact probability-flow ODE solution for N(mu, s²) data: along the ODE,
    (x_t − √ᾱ_t mu)/√(ᾱ_t s² + 1 − ᾱ_t) is constant."""
    smp = make_sampler(name, _cfg(), steps, spacing="logsnr")
    ac = smp.alphas_cumprod
    x_T = _noise((2000, 1, 1, 1), seed=3).double()
    z = (x_T - ac[999].sqrt() * mu) / (ac[999] * s * s + 1 - ac[999]).sqrt()
    states = []
    smp(gaussian_model(ac, mu, s), x_T.float(), callback=lambda i, t, x, x0: states.append(x.double()))
    exact = ac[0].sqrt() * mu + (ac[0] * s * s + 1 - ac[0]).sqrt() * z
    return float((states[-2] - exact).abs().max())


def test_multistep_solvers_solve_the_ode_accurately():
    # Every solver converges as the steps quadruple (DDIM at first order); the multistep solvers are
    # at least twice as close to the exact ODE solution as DDIM on the same grid at 8 calls and ten
    # times as close at 32.
    errors = {n: [_ode_error(n, k) for k in (8, 32)] for n in ("ddim", "dpmpp2m", "dpmpp3m", "unipc2", "unipc3")}
    for name, (e8, e32) in errors.items():
        assert e32 < e8 / 3.5, errors
        if name != "ddim":
            assert e8 < errors["ddim"][0] / 2 and e32 < errors["ddim"][1] / 10, errors


def test_dpmsolver_beats_ddim_at_few_steps():
    # Second order: at 8 steps its moment error is smaller than first-order DDIM's.
    ddim = sum(_moment_errors("ddim", 8, "eps", mu=1.5, s=0.2))
    dpm = sum(_moment_errors("dpmpp2m", 8, "eps", mu=1.5, s=0.2))
    assert dpm < ddim, (dpm, ddim)


def test_euler_flow_uses_monai_rflow_grid():
    smp = make_sampler("euler", _cfg(objective="flow"), 4)
    assert isinstance(smp, EulerFlowSampler)
    assert smp.timesteps == [1000, 750, 500, 250]
    assert type(smp.scheduler).__name__ == "RFlowScheduler"
    assert isinstance(make_sampler("dpmpp2m", _cfg(), 4), DPMSolverPPSampler)
    assert make_sampler("euler", _cfg(objective="flow"), 4, spacing="auto").timesteps == [1000, 750, 500, 250]


@pytest.mark.parametrize(
    "name,objective", [("euler", "eps"), ("euler", "v"), ("ddim", "flow"), ("dpmpp2m", "flow"), ("unipc3", "flow")]
)
def test_sampler_objective_mismatch_is_a_clear_error(name, objective):
    with pytest.raises(LdmError) as err:
        make_sampler(name, _cfg(objective=objective), 10)
    assert "--sampler" in str(err.value) and "\n" not in str(err.value)


def test_bad_spacing():
    with pytest.raises(LdmError, match="--spacing"):
        make_sampler("ddim", _cfg(), 10, spacing="uniform")


def test_zero_terminal_snr_schedule():
    plain = training_scheduler(_cfg(objective="v"))
    sched = training_scheduler(_cfg(objective="v", zero_terminal_snr=True))
    ac, ac0 = sched.alphas_cumprod.double(), plain.alphas_cumprod.double()
    assert float(ac0[-1]) > 1e-4  # the scaled linear schedule leaves a trace of the data at t = T
    assert float(ac[-1]) == pytest.approx(1e-9, rel=1e-3) and float(ac[0]) == pytest.approx(float(ac0[0]))
    assert bool((ac[1:] < ac[:-1]).all())
    # betas, alphas and their cumulative product stay one schedule (MONAI's step reads all three)
    torch.testing.assert_close(torch.cumprod(sched.alphas.double(), 0), ac, rtol=1e-4, atol=1e-12)
    assert sched.alphas_cumprod.dtype == plain.alphas_cumprod.dtype
    torch.testing.assert_close(sched.betas.double(), 1 - sched.alphas.double())
    # the shift is that of √ᾱ: the same at every t
    shift = (ac0.sqrt() - ac.sqrt())[1:-1]
    assert float(shift.min()) > 0 and float(shift.max()) < 0.013
    assert (
        "zero_terminal_snr" not in _cfg().to_dict()
        and _cfg(objective="v", zero_terminal_snr=True).to_dict()["zero_terminal_snr"]
    )
    with pytest.raises(LdmError, match="zero_terminal_snr needs objective v"):
        _cfg(zero_terminal_snr=True)


@pytest.mark.parametrize("name", DIFFUSION_SAMPLERS)
def test_zero_terminal_snr_samples_from_pure_noise(name):
    """Every ε/v sampler starts at t = T of the rescaled schedule and, given the exact v-model of
    Gaussian data, ends at the data distribution."""
    smp = make_sampler(name, _cfg(objective="v", zero_terminal_snr=True), 200)
    assert smp.timesteps[0] == 999 and float(smp.alphas_cumprod[999]) < 1e-8
    model = gaussian_model(smp.alphas_cumprod, 0.7, 0.5, "v")
    out = smp(model, _noise((4000, 1, 1, 1)), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all()
    assert abs(float(out.mean()) - 0.7) < 0.04 and abs(float(out.std()) - 0.5) < 0.04


def _repaint_conditional(sampler: str, resample: int, rho: float = 0.9, known: float = 1.5) -> torch.Tensor:
    """RePaint (`guidance.Replacement`) on 2-element Gaussian data, unit variances, correlation
    `rho`, with its exact ε-denoiser (x_t = √ᾱ x0 + √(1−ᾱ) ε ⇒ E[ε | x_t] = √(1−ᾱ) C⁻¹ x_t, C =
    ᾱΣ + (1−ᾱ)I): the first element known, the second drawn; 4,000 draws of the second."""
    from ldmtool.diffusion.guidance import Replacement

    smp = make_sampler(sampler, _cfg(), 50, resample=resample)
    ac = smp.alphas_cumprod.double()
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)

    def model(x, t):
        a = float(ac[int(t[0])])
        return ((1 - a) ** 0.5 * x.double() @ torch.linalg.inv(a * cov + (1 - a) * torch.eye(2))).float()

    n = 4000
    mask = torch.zeros(n, 2)
    mask[:, 0] = 1
    hook = Replacement(model, smp.alphas_cumprod, "epsilon", known * mask, mask, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    out = smp(hook, torch.randn(n, 2, generator=gen), generator=gen)
    return out[:, 1]  # (the known element is put back afterwards: `inpaint_latents`)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_repaint_resampling_draws_the_unknown_part_from_its_conditional(sampler):
    """Plain replacement leaves the drawn element far from x2 | x1 ~ N(ρ x1, 1 − ρ²) (it never sees
    how the known element shaped the rest): RePaint's resampling brings mean and spread near it."""
    want_mean, want_std = 0.9 * 1.5, (1 - 0.9**2) ** 0.5
    plain, resampled = _repaint_conditional(sampler, 1), _repaint_conditional(sampler, 10)
    assert abs(float(plain.mean()) - want_mean) > 0.4
    assert abs(float(resampled.mean()) - want_mean) < 0.4 * abs(float(plain.mean()) - want_mean)
    assert abs(float(resampled.std()) - want_std) < 0.05


def test_resample_one_is_the_plain_sampler_and_more_takes_call_the_model_more():
    shape = SHAPES["3d"]
    for name in ("ddim", "ddpm"):
        calls: dict[int, list[int]] = {1: [], 3: []}
        outs = {}
        for r in (1, 3):

            def model(x, t, seen=calls[r]):
                seen.append(int(t[0]))
                return 0.1 * x

            outs[r] = make_sampler(name, _cfg(), 4, resample=r)(model, _noise(shape), torch.Generator().manual_seed(2))
        base = make_sampler(name, _cfg(), 4)(lambda x, t: 0.1 * x, _noise(shape), torch.Generator().manual_seed(2))
        torch.testing.assert_close(outs[1], base, atol=0, rtol=0)
        ts = make_sampler(name, _cfg(), 4).timesteps
        assert calls[1] == ts and calls[3] == [t for t in ts[:-1] for _ in range(3)] + [ts[-1]]  # the last step once


@pytest.mark.parametrize("name", ["dpmpp2m", "unipc2"])
def test_resample_needs_ddim_or_ddpm(name):
    with pytest.raises(LdmError, match="--resample 2 needs --sampler ddim or ddpm"):
        make_sampler(name, _cfg(), 10, resample=2)
    with pytest.raises(LdmError, match="--resample must be at least 1"):
        make_sampler("ddim", _cfg(), 10, resample=0)
