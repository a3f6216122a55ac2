"""A loaded LSSDM: `SeriesModel.load(path)` then `.impute(data, samples=K)` or `.synthesise(n)`.

Sampling: the shared DDPM/DDIM samplers (`ldmtool.diffusion.samplers`) on the model's noise
schedule; the model function closes over the observed values, their mask, the coarse
reconstruction and the condition. Every (stay, sample) row draws its noise from its own generator
seeded by (seed, row), so results do not depend on the batch size or on which stays run together.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmtool.diffusion.samplers import (
    DDIMSampler,
    eps_to_output,
    initial_noise,
    output_to_eps_x0,
    sample_generators,
    sample_seed,
)
from ldmtool.errors import LdmError
from ldmtool.models.checkpoint import load_checkpoint
from ldmtool.runtime import progress
from ldmtool.series.config import SeriesModelConfig
from ldmtool.series.model import LSSDM, UNKNOWN_OUTCOME
from ldmtool.series.prepare import to_tensors
from ldmtool.series.reader import Grid, SeriesData, read_table
from ldmtool.series.train import KIND

# Ancestral steps of a draw unless --steps says otherwise. On PhysioNet 2012 (benchmarks/series.py),
# 10 of the 50 training timesteps gave medians as close to the hidden values as 2 steps where few are
# hidden and better calibrated draws (CRPS) there; where most are hidden 2 steps did better. All 50
# were slower and further off in runs outside it (README, "Clinical time series").
DEFAULT_STEPS = 10


@dataclass
class SeriesModel:
    """Weights (EMA), config and device of a trained LSSDM."""

    model: LSSDM
    config: dict[str, Any]
    device: torch.device
    path: Path | None = None

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> SeriesModel:
        tensors, config = load_checkpoint(path, kind=KIND)
        from ldmtool.config import from_dict

        cfg = from_dict(SeriesModelConfig, config["model"], section="model")
        g = config["grid"]
        model = LSSDM(cfg, len(config["variables"]), int(g["steps"]), len(config["static_names"]), tensors["adjacency"])
        try:
            model.load_state_dict(tensors)
        except RuntimeError:
            raise LdmError(
                f"{path}: its weights do not fit this version's LSSDM (an earlier layout, or a damaged file); "
                "train the model again with train-series"
            ) from None
        device = torch.device(device)
        return cls(model.to(device).eval(), config, device, Path(path))

    @property
    def grid(self) -> Grid:
        return Grid(self.config["grid"]["steps"], self.config["grid"]["step_hours"])

    def read(self, path: Path, *, skip_empty: bool = False, outcomes: Path | None = None) -> SeriesData:
        """A table read with this model's variables, descriptors and grid."""
        return read_table(
            path,
            variables=self.config["variables"],
            static_names=tuple(self.config["static_names"]),
            grid=self.grid,
            skip_empty=skip_empty,
            outcomes=outcomes,
            outcome_column=self.config.get("outcome") or "In-hospital_death",
        )

    def sampling_steps(self, steps: int | None) -> int:
        """The ancestral steps a draw takes: `steps`, or DEFAULT_STEPS of the training timesteps."""
        total = self.model.cfg.num_train_timesteps
        steps = min(DEFAULT_STEPS, total) if steps is None else steps
        if not 1 <= steps <= total:
            raise LdmError(f"--steps must be between 1 and {total}; got {steps}")
        return steps

    def sampler(self, steps: int | None, eta: float = 1.0) -> DDIMSampler:
        return DDIMSampler(self.model.cfg.schedule(), self.sampling_steps(steps), eta)

    @torch.no_grad()
    def _draw(
        self,
        x,
        m,
        static,
        known,
        y,
        rows: torch.Tensor,
        seeds: list[int],
        sampler: DDIMSampler,
        guidance: float = 1.0,
        share_first: bool = True,
    ) -> torch.Tensor:
        """Normalised samples (B, T, V), row b a draw of stay `rows[b]` of the given stays: observed
        cells as given, the others the coarse reconstruction plus a residual drawn by the diffusion
        model. The condition and the coarse reconstruction (deterministic: the VGAE's mean latent)
        are computed once per stay, not once per draw, and so is the first step's network call
        (`share_first`, see `_shared_first_step`).

        `guidance` w ≠ 1 is classifier-free guidance on the outcome: coarse reconstruction and
        network output are u + w (c − u), c conditioned on each stay's outcome, u on "not given"
        (the outcome dropout of training); w = 0 ignores the outcome, w < 1 weakens its effect,
        w > 1 strengthens it. Stays without an outcome are unaffected."""
        dev = self.device
        x, m, static, known, y = (t.to(dev) for t in (x, m, static, known, y))
        cond = self.model.condition(static, known, y)
        coarse, _, _ = self.model.coarse(x, m, cond)
        if guidance != 1.0:  # both branches, each with its condition and coarse reconstruction, in one batch
            cond_u = self.model.condition(static, known, torch.full_like(y, UNKNOWN_OUTCOME))
            coarse_u, _, _ = self.model.coarse(x, m, cond_u)
            per_stay = (x.repeat(2, 1, 1), m.repeat(2, 1, 1), torch.cat([coarse, coarse_u]), torch.cat([cond, cond_u]))
            mix = lambda c, u: u + guidance * (c - u)
            net = lambda z, t, a: mix(*self.model.denoise(z.repeat(2, 1, 1), t.repeat(2), *a).chunk(2))
            take = lambda sel: torch.cat([sel, sel + len(x)])
            coarse = mix(coarse, coarse_u)
        else:
            per_stay = (x, m, coarse, cond)
            net = lambda z, t, a: self.model.denoise(z, t, *a)
            take = lambda sel: sel
        rows = rows.to(dev)
        per_row = tuple(p[take(rows)] for p in per_stay)  # indexed once, not at every step
        fn = lambda z, t: net(z, t, per_row)
        if share_first:
            fn = self._shared_first_step(fn, lambda z, t: net(z, t, per_stay), len(x), rows, sampler)
        gens = sample_generators(seeds)
        r_t = initial_noise(tuple(x.shape[1:]), gens).to(dev)
        out = coarse[rows] + sampler(fn, r_t, generator=gens)
        return torch.where(m[rows], x[rows], out).cpu()

    def _shared_first_step(self, fn, stay_fn, n_stays: int, rows: torch.Tensor, sampler: DDIMSampler):
        """`fn` (the model function of the draws) whose output at the sampler's first (noisiest)
        timestep comes from one call of `stay_fn` (the same function on the stays) per stay.

        There the noisy residual carries almost nothing of the data (√ᾱ_T ≈ 0.006 with the default
        schedule), so what a trained network predicts of the clean residual is its estimate given
        the stay alone, the same for every draw. It is taken at the noise's mean (zero input) and
        handed to each draw as the output that gives that prediction at the draw's own noise; the
        draws then differ from the second step on. A K-draw, S-step imputation pays K (S − 1) + 1
        network calls per stay instead of K S. The sampler's first call is at its first timestep,
        so the timestep tensor is never read back (no device sync in the step loop)."""
        t0 = int(sampler.timesteps[0])
        a0 = sampler.alphas_cumprod[t0].float().to(self.device)
        zero = torch.zeros((n_stays, self.model.n_steps, self.model.n_vars), device=self.device)
        first = stay_fn(zero, torch.full((n_stays,), t0, dtype=torch.long, device=self.device)).float()
        x0 = output_to_eps_x0(first, zero, a0, sampler.prediction)[1][rows]
        pending = [True]

        def shared(z, t):
            if not pending:
                return fn(z, t)
            pending.clear()
            eps = (z - a0.sqrt() * x0) / (1 - a0).sqrt()
            return eps_to_output(eps, z, a0, sampler.prediction)

        return shared

    def _denormalise(self, z: np.ndarray) -> np.ndarray:
        n = self.config["normalisation"]
        v = z * np.asarray(n["std"]) + np.asarray(n["mean"])
        return np.clip(v, np.asarray(n["min"]), np.asarray(n["max"]))

    def impute(
        self,
        data: SeriesData,
        *,
        samples: int = 10,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        guidance: float = 1.0,
        console=None,
    ) -> np.ndarray:
        """(N, K, T, V) imputations of `data` in its units: observed cells equal `data.values`
        exactly, the others K draws each (clipped to the training range of their variable).
        Draw j of a stay is seeded by (seed, stay id, j): the same whatever else is in the table.
        `guidance`: classifier-free guidance on the stays' outcomes (see `_draw`; 1: none)."""
        if samples < 1:
            raise LdmError(f"--samples must be at least 1; got {samples}")
        if not guidance >= 0:
            raise LdmError(f"--guidance must be 0 or more; got {guidance}")
        tens = to_tensors(data, self.config["normalisation"])
        sampler = self.sampler(steps)
        n, k = len(data.ids), samples
        keys = [zlib.crc32(sid.encode()) for sid in data.ids]  # a stay's draws depend on its id, not its row
        rows = [(i, j) for i in range(n) for j in range(k)]
        out = np.empty((n, k, *data.values.shape[1:]))
        with progress(console, transient=True) as bar:
            task = bar.add_task("impute-series", total=len(rows), rate="", info=f"{n} stays × {k} samples")
            for s in range(0, len(rows), batch_size):
                chunk = rows[s : s + batch_size]
                stays, rows_of = torch.tensor([i for i, _ in chunk]).unique(return_inverse=True)
                seeds = [sample_seed(seed, keys[i], j) for i, j in chunk]
                z = self._denormalise(
                    self._draw(
                        *(t[stays] for t in (tens.x, tens.m, tens.static, tens.known, tens.outcome)),
                        rows_of,
                        seeds,
                        sampler,
                        guidance,
                    )
                    .double()
                    .numpy()
                )
                for r, (i, j) in enumerate(chunk):
                    out[i, j] = z[r]
                bar.advance(task, len(chunk))
        return np.where(data.observed[:, None], data.values[:, None], out)

    def expected(self, data: SeriesData, *, seed: int = 0, batch_size: int = 64, console=None) -> np.ndarray:
        """(N, T, V) the model's expected value of every unobserved cell given the stay (observed
        cells exact): the score network's prediction of the clean residual at the noisiest step, where
        the noisy input carries almost nothing (ᾱ_T ≈ 3e-5 with the default schedule): what the
        network learnt as the mean of the missing values given the stay (the least-squares estimate,
        as far as it is trained), in one network call, where the median of K draws pays K × steps
        calls and the draws' own noise."""
        return self.impute(data, samples=1, steps=1, seed=seed, batch_size=batch_size, console=console)[:, 0]

    def synthesise(
        self,
        n: int,
        *,
        outcome: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int = 64,
        sparse: bool = False,
        guidance: float = 1.0,
        console=None,
    ) -> SeriesData:
        """`n` synthetic stays on the model's grid: descriptors drawn from the training stays'
        distribution (a Gaussian copula, see ldmtool.series.descriptors; of the same outcome when
        conditioned), values drawn by the diffusion model with nothing observed.

        Args:
            outcome: 0 or 1 conditions every stay on it; None draws it at the training rate
                (or leaves it unknown when the model was trained without outcomes).
            sparse: keep each value with the training probability of an observation in its cell
                and outcome, so the stays look like recorded ones; otherwise every cell is filled.
                A model that stores the joint copula of descriptors and per-variable observed
                fractions (`observation`) draws each stay's measurement intensity with its
                descriptors: a stay with hourly labs and one with a single draw, as recorded stays
                differ, instead of every stay at the average rate; the stay then has that many
                observations of the variable (`observation_mask`).
            guidance: classifier-free guidance on the outcome (see `_draw`): 1 draws from the
                model's conditional distribution; below 1 the outcome's effect on the values is
                weakened (toward 0, where the values ignore it), above 1 strengthened.
        """
        cfg, rng = self.config, np.random.default_rng(seed)
        if guidance != 1.0 and cfg.get("outcome") is None:
            raise LdmError("--guidance needs a model trained with outcomes (train-series --outcomes)")
        y = self._outcomes(n, outcome, rng)
        joint = cfg.get("observation") if sparse else None
        if joint is None:
            static, fractions = self._descriptors(y, rng), None
        else:
            from ldmtool.series.descriptors import draw_descriptors

            drawn = draw_descriptors(joint, y, rng)
            static, fractions = drawn[:, : len(cfg["static_names"])], drawn[:, len(cfg["static_names"]) :]
        t, v = cfg["grid"]["steps"], len(cfg["variables"])
        empty = SeriesData(
            [f"synthetic-{i:05d}" for i in range(n)],
            list(cfg["variables"]),
            np.full((n, t, v), np.nan),
            list(cfg["static_names"]),
            static,
            self.grid,
            {"format": cfg.get("source_format") or "long-csv", "time_style": cfg.get("source_time_style", "hours")},
            None if np.isnan(y).all() else y,
        )
        values = self.impute(
            empty, samples=1, steps=steps, seed=seed, batch_size=batch_size, guidance=guidance, console=console
        )[:, 0]
        if sparse:
            keep = observation_mask(np.asarray(cfg["observation_rates"]), y, fractions, rng)
            values = np.where(keep, values, np.nan)
        empty.values = values
        return empty

    def _outcomes(self, n: int, outcome: int | None, rng: np.random.Generator) -> np.ndarray:
        if outcome is not None:
            if self.config.get("outcome") is None:
                raise LdmError("this model was trained without outcomes; train it with --outcomes to condition on one")
            if outcome not in (0, 1):
                raise LdmError(f"--outcome must be 0 or 1; got {outcome}")
            return np.full(n, float(outcome))
        rate = self.config.get("outcome_rate")
        return np.full(n, np.nan) if rate is None else (rng.random(n) < rate).astype(float)

    def _descriptors(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, S) descriptors drawn from the stored copula (of the same outcome where known)."""
        from ldmtool.series.descriptors import draw_descriptors

        return draw_descriptors(self.config["descriptors"], y, rng)


def observation_mask(
    rates: np.ndarray, y: np.ndarray, fractions: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """(n, T, V) which cells of synthetic stays keep their value. `rates` (2, T, V): the training
    chance of an observation in each cell per outcome (outcome 0 where unknown).

    Without `fractions`, each cell is kept independently with its chance. With `fractions` (n, V),
    the observed fraction of each stay and variable drawn with its descriptors, the stay gets that
    many observations of the variable (fraction × T, rounded up or down at random so that the
    expected count is exact), at cells drawn without replacement with the chances as weights (the
    Gumbel top-k draw): the time pattern of the training stays, and a stay whose lab is drawn
    twice gets two values. Independent coin flips at a chance of 2/T would leave such a stay
    without any value of the variable about one time in eight, where recorded stays almost never
    lack their daily labs."""
    chance = rates[np.nan_to_num(y, nan=0).astype(int)]
    if fractions is None:
        return rng.random(chance.shape) < chance
    c = np.clip(np.nan_to_num(fractions), 0.0, 1.0) * chance.shape[1]
    count = np.floor(c) + (rng.random(c.shape) < c - np.floor(c))
    count = np.minimum(count, (chance > 0).sum(1))  # never at a cell the variable never had in training
    with np.errstate(divide="ignore"):
        keys = np.log(chance) + rng.gumbel(size=chance.shape)  # −inf where the chance is 0
    order = np.argsort(-keys, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(chance.shape[1])[None, :, None], axis=1)
    return rank < count[:, None, :]
