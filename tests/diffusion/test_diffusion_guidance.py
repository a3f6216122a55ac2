"""Imputation hooks: self-guidance on analytic cases, replacement, chunked error gradients."""

import math

import pytest
import torch

from ldmtool.diffusion.guidance import Replacement, SelfGuidance, observed_error, slice_chunks
from ldmtool.diffusion.samplers import DDIMSampler, eps_to_output, output_to_eps_x0
from tests.conftest import tiny_denoiser_config

ALPHAS = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)


def identity(piece, _index):
    return piece


def test_gradient_of_the_observed_error_on_an_analytic_case():
    """ε̂(x) = c·x: x̂_0 = x (1 − √(1−ᾱ) c)/√ᾱ, so ∇_x Σ m (x̂_0 − y)² = 2 m (x̂_0 − y) k, k = ∂x̂_0/∂x."""
    torch.manual_seed(0)
    c = 0.3
    x = torch.randn(2, 1, 4, 4)
    y = torch.randn(2, 1, 4, 4)
    m = (torch.rand(2, 1, 4, 4) > 0.5).float()
    t = torch.tensor([400, 700])
    hook = SelfGuidance(lambda z, _t: c * z, ALPHAS, "epsilon", observed_error(identity, y, m))
    eps, grad, a = hook.score_and_gradient(x, t)
    a = ALPHAS[t].float().view(2, 1, 1, 1)
    k = (1 - (1 - a).sqrt() * c) / a.sqrt()
    x0 = x * k
    torch.testing.assert_close(eps, c * x)
    torch.testing.assert_close(grad, 2 * m * (x0 - y) * k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hook.last_error, (m * (x0 - y) ** 2).flatten(1).sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_guidance_moves_the_estimate_towards_the_observation_at_the_score_norm(prediction):
    torch.manual_seed(1)
    x = torch.randn(3, 2, 5, 5)
    y = torch.randn(3, 2, 5, 5)
    m = torch.ones_like(y)
    m[:, :, :2] = 0  # part unobserved
    t = torch.tensor([100, 500, 900])
    model = lambda z, _t: 0.5 * torch.tanh(z)  # noqa: E731  any smooth denoiser
    err = observed_error(identity, y, m)
    plain = SelfGuidance(model, ALPHAS, prediction, err, scale=0.0)
    small = SelfGuidance(model, ALPHAS, prediction, err, scale=1e-3)  # first order: the direction
    hook = SelfGuidance(model, ALPHAS, prediction, err, scale=0.5)
    a = ALPHAS[t].float().view(3, 1, 1, 1)
    eps0, x00 = output_to_eps_x0(plain(x, t), x, a, prediction)
    _, x0s = output_to_eps_x0(small(x, t), x, a, prediction)
    eps1, _ = output_to_eps_x0(hook(x, t), x, a, prediction)
    torch.testing.assert_close(x00, output_to_eps_x0(model(x, t), x, a, prediction)[1])  # scale 0: unchanged
    before = (m * (x00 - y) ** 2).flatten(1).sum(1)
    after = (m * (x0s - y) ** 2).flatten(1).sum(1)
    assert (after < before).all()
    # the change of the score is the gradient direction at `scale` times the score's norm
    s0, s1 = -eps0 / (1 - a).sqrt(), -eps1 / (1 - a).sqrt()
    ratio = (s1 - s0).flatten(1).norm(dim=1) / s0.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, torch.full((3,), 0.5), rtol=1e-4, atol=1e-5)


def test_eps_and_v_conversions_invert_each_other():
    x, out = torch.randn(4, 3), torch.randn(4, 3)
    a = torch.tensor(0.37)
    for prediction in ("epsilon", "v_prediction"):
        eps, x0 = output_to_eps_x0(out, x, a, prediction)
        torch.testing.assert_close(eps_to_output(eps, x, a, prediction), out)
        torch.testing.assert_close(x0, (x - (1 - a).sqrt() * eps) / a.sqrt())


def test_chunked_error_gradient_equals_the_whole_one():
    torch.manual_seed(2)
    x0 = torch.randn(2, 3, 6, 4, 4)  # (B, L, D, h, w)
    w = torch.randn(3)
    obs = torch.randn(2, 6, 4, 4)
    mask = (torch.rand(2, 6, 4, 4) > 0.3).float()

    def render(piece, _index):  # per-slice: a channel mix, squared (non-linear)
        return torch.einsum("bcdhw,c->bdhw", piece, w) ** 2

    e1, g1 = observed_error(render, obs, mask)(x0)
    e2, g2 = observed_error(render, obs, mask, slice_chunks(4))(x0)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(g1, g2)


def test_replacement_hands_the_sampler_the_estimate_of_the_replaced_input():
    """With a denoiser that knows the clean signal exactly (ε̂ = (x − √ᾱ s)/√(1−ᾱ)), the x̂_0 the
    sampler derives from the replaced input is s everywhere, even where x_t was far off."""
    torch.manual_seed(3)
    s = torch.randn(1, 1, 8, 8)
    alphas = DDIMSampler(tiny_denoiser_config(), 5).alphas_cumprod

    def oracle(x, t):
        a = alphas[t].float().view(-1, 1, 1, 1)
        return (x - a.sqrt() * s) / (1 - a).sqrt()

    mask = torch.zeros_like(s)
    mask[..., :4] = 1
    hook = Replacement(oracle, alphas, "epsilon", s * mask, mask, torch.Generator().manual_seed(0))
    x = torch.randn(1, 1, 8, 8) * 5
    t = torch.tensor([600])
    a = alphas[t].float().view(-1, 1, 1, 1)
    _, x0 = output_to_eps_x0(hook(x, t), x, a, "epsilon")
    torch.testing.assert_close(x0, s, rtol=1e-4, atol=1e-4)


def test_self_guided_ddim_recovers_a_gaussian_signal():
    """Prior N(0, I) (exact ε̂ = √(1−ᾱ) x for unit-variance data); half the entries observed:
    guided DDIM reproduces the observed half closely, and leaves the other half near the prior."""
    cfg = tiny_denoiser_config()
    smp = DDIMSampler(cfg, 50)
    alphas = smp.alphas_cumprod

    def prior(x, t):
        a = alphas[t].float().view(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * x

    torch.manual_seed(4)
    y = torch.randn(1, 64)
    m = torch.zeros_like(y)
    m[:, :32] = 1
    hook = SelfGuidance(prior, alphas, "epsilon", observed_error(identity, y * m, m), scale=1.0)
    out = smp(hook, torch.randn(1, 64))
    plain = smp(prior, torch.randn(1, 64))
    err = float(((out - y)[:, :32] ** 2).mean())
    err_plain = float(((plain - y)[:, :32] ** 2).mean())
    assert err < 0.25 * err_plain
    assert math.isfinite(float(out.abs().max()))
