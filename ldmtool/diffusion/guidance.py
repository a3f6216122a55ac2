"""Imputation hooks: model functions that steer any sampler towards observed data.

Both hooks wrap a denoiser `model(x_t, t)` into another `model(x_t, t)` (the samplers' signature),
so DDIM, DDPM and DPM-Solver++ impute without knowing it:

- `SelfGuidance` (LDMiss, Estad et al.): at each reverse step estimate the clean sample x̂_0 by
  Tweedie's formula, map it to data space (`render`: the autoencoder's decoder in latent space,
  the identity in pixel space), measure the squared error E on the observed voxels, take ∇_{x_t} E
  through the denoiser and `render`, and move the score against it with the score's own norm:
      s = −ε̂/√(1−ᾱ_t),   s' = s − w · (‖s‖/‖∇E‖) · ∇E
  so the guidance has equal strength at every step (w = `scale`, the `--guidance` multiplier).
- `Replacement` (RePaint-style, pixel space): before each step the observed part of x_t is
  replaced by the observation noised to level t, x_t ← m ⊙ (√ᾱ_t y + √(1−ᾱ_t) z) + (1 − m) ⊙ x_t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldmtool.diffusion.samplers import ModelFn, append_dims, eps_to_output, output_to_eps_x0

# ᾱ_t below which `SelfGuidance` leaves a step unguided: the first step of a zero-terminal-SNR
# schedule (ᾱ_T = 1e-9), where x_t holds nothing of the data and a change of ε̂ would move x̂_0 by
# 1/√ᾱ_T ≈ 3e4 times as much; the default schedules' last step (ᾱ_T ≈ 1e-4) is still guided.
NO_SIGNAL = 1e-6

# (x̂_0 batch) → (E, ∂E/∂x̂_0): the observed-voxel error of a clean-sample estimate and its gradient
ErrorGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


Chunk = tuple[tuple[slice, ...], tuple[slice, ...]]  # (index into x̂_0, index into the data)


def observed_error(
    render: Callable[[torch.Tensor, tuple[slice, ...]], torch.Tensor],
    observed: torch.Tensor,
    mask: torch.Tensor,
    chunks: Callable[[torch.Tensor], list[Chunk]] | None = None,
) -> ErrorGrad:
    """E(x̂_0) = Σ mask · (render(x̂_0) − observed)² per sample, and ∂E/∂x̂_0.

    `render(piece, index)` maps a piece of x̂_0 (`x̂_0[index]`) to data space. `chunks(x̂_0)` may
    split x̂_0 into pieces whose renders are independent (the slices of a latent volume decode one
    by one), as (index into x̂_0, index into observed/mask) pairs: each piece's gradient is taken
    alone, so memory holds one piece's decoder activations, never the whole volume's."""

    def fn(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = x0.detach()
        everything = (slice(None),)
        parts = [(everything, everything)] if chunks is None else chunks(x0)
        grad = torch.zeros_like(x0)
        total = torch.zeros(x0.shape[0], device=x0.device)
        for idx, data_idx in parts:
            piece = x0[idx].clone().requires_grad_(True)
            with torch.enable_grad():
                pred = render(piece, idx)
                err = (mask[data_idx] * (pred.float() - observed[data_idx]).pow(2)).flatten(1).sum(1)
                (g,) = torch.autograd.grad(err.sum(), piece)
            grad[idx] = g
            total += err.detach()
        return total, grad

    return fn


def slice_chunks(size: int) -> Callable[[torch.Tensor], list[Chunk]]:
    """Pieces of `size` slices of (B, L, D, h, w) latent volumes whose data are (B, D, H, W)."""

    def fn(x0: torch.Tensor) -> list[Chunk]:
        depth = x0.shape[2]
        out = []
        for s in range(0, depth, size):
            span = slice(s, min(s + size, depth))
            out.append(((slice(None), slice(None), span), (slice(None), span)))
        return out

    return fn


class SelfGuidance:
    """Self-guided imputation as a model function (see the module docstring).

    Args:
        model: the denoiser, `model(x_t, t)` → ε or v.
        alphas_cumprod: ᾱ of the denoiser's training schedule (indexed by t).
        prediction: "epsilon" or "v_prediction".
        error: `observed_error(...)`: the error of x̂_0 on the observed voxels and its gradient.
        scale: the guidance multiplier w (0 = unconditional sampling).
    The last step's error is kept in `last_error` (per sample), for progress reports and tests.
    """

    def __init__(
        self, model: ModelFn, alphas_cumprod: torch.Tensor, prediction: str, error: ErrorGrad, scale: float = 1.0
    ):
        self.model, self.prediction, self.error, self.scale = model, prediction, error, float(scale)
        self.alphas_cumprod = alphas_cumprod.double()
        self.last_error: torch.Tensor | None = None

    def score_and_gradient(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unconditional ε̂, ∇_{x_t} E, ᾱ_t broadcast to x) at x_t."""
        a = append_dims(self.alphas_cumprod.to(x.device)[t].float(), x.ndim)
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            eps, x0 = output_to_eps_x0(self.model(xg, t).float(), xg, a, self.prediction)
            err, d_x0 = self.error(x0)
            (grad,) = torch.autograd.grad(x0, xg, grad_outputs=d_x0)
        self.last_error = err
        return eps.detach(), grad, a

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if float(self.alphas_cumprod[t.cpu()].max()) < NO_SIGNAL:  # x_t is pure noise: nothing of the data to steer
            with torch.no_grad():
                return self.model(x, t)
        eps, grad, a = self.score_and_gradient(x, t)
        sigma = (1 - a).sqrt()
        score = -eps / sigma
        ratio = score.flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1).clamp_min(1e-20)
        guided = score - self.scale * append_dims(ratio, x.ndim) * grad
        return eps_to_output(-sigma * guided, x.float(), a, self.prediction)


class Replacement:
    """RePaint-style replacement as a model function: the observed part of x_t is replaced by the
    observation noised to level t before the denoiser sees it (noise from `generator`)."""

    def __init__(
        self,
        model: ModelFn,
        alphas_cumprod: torch.Tensor,
        prediction: str,
        observed: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ):
        self.model, self.prediction, self.observed, self.mask = model, prediction, observed, mask
        self.alphas_cumprod = alphas_cumprod.double()
        self.generator = generator

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = append_dims(self.alphas_cumprod.to(x.device)[t].float(), x.ndim)
        z = torch.randn(
            x.shape, generator=self.generator, device=self.generator.device if self.generator else x.device
        ).to(x)
        noised = a.sqrt() * self.observed + (1 - a).sqrt() * z
        x_in = self.mask * noised + (1 - self.mask) * x
        eps_in, x0 = output_to_eps_x0(self.model(x_in, t).float(), x_in, a, self.prediction)
        # the sampler converts with the x_t it holds; hand it the ε that gives the same x̂_0 from
        # that x_t (different only where x_t is replaced again at the next step anyway)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps_to_output(eps, x.float(), a, self.prediction)
