"""A trained latent diffusion model as one object: autoencoder + latent denoiser, ready to sample.

`LatentDiffusionPipeline.from_pretrained(ae, ldm)` loads both checkpoints, checks that the denoiser
was trained on this autoencoder, and keeps what inference needs (latent statistics, preprocessing,
reference affine, label names). Noise → sampler → slice-wise decode exists here only: `sample`,
`impute` and the benchmarks all go through these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldmtool.config import ImputeConfig, SampleConfig
from ldmtool.data.prepared import slices_to_volume
from ldmtool.data.preprocess import PreprocessConfig, denormalise
from ldmtool.diffusion.guidance import Replacement, SelfGuidance, observed_error, slice_chunks
from ldmtool.diffusion.pipeline import decode_latents, encode_volume, latent_renderer
from ldmtool.diffusion.samplers import (
    Sampler,
    initial_noise,
    make_sampler,
    sample_generators,
    sample_seed,
    training_scheduler,
)
from ldmtool.errors import LdmError
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import file_sha256, resolve_checkpoint
from ldmtool.models.checkpoint_config import (
    AutoencoderCheckpoint,
    LatentDiffusionCheckpoint,
)
from ldmtool.models.denoiser import LatentDenoiser, guided, label_grid
from ldmtool.models.loaders import load_autoencoder, load_denoiser
from ldmtool.runtime import autocast, resolve_precision


def impute_steps(steps: int, init: str, strength: float) -> int:
    """The denoising steps a sampler runs: all of them from noise (`init` "noise"), round(steps ×
    strength) (at least one) from anything else noised part-way (impute's interpolation, inpaint's
    start), as diffusers' image-to-image pipelines count them."""
    return steps if init == "noise" else max(1, round(steps * strength))


def partial_start(strength: float, num_train_timesteps: int) -> int:
    """The first timestep of a sampler that starts from a clean sample noised to `strength` of the
    schedule (SDEdit: `impute --init interpolation`, `inpaint --strength`)."""
    return max(round(strength * num_train_timesteps) - 1, 0)


@dataclass
class SampledVolume:
    """One decoded sample, in the training geometry (I, J, K)."""

    seed: int
    image: (
        np.ndarray
    )  # float32, intensities in the source scale (normalised if none was recorded); (I, J, K, C) for several channels
    label: np.ndarray | None  # uint8 label map, or None for an image-only autoencoder


class LatentDiffusionPipeline:
    """Autoencoder + latent denoiser on one device, with the settings they were trained with."""

    def __init__(
        self,
        ae: SliceAutoencoder,
        ae_config: AutoencoderCheckpoint,
        ldm: LatentDenoiser,
        ldm_config: LatentDiffusionCheckpoint,
        *,
        device: torch.device,
        precision: str = "fp32",
        ae_path: Path | None = None,
        ldm_path: Path | None = None,
        ae_sha256: str | None = None,
    ):
        self.ae, self.ae_config, self.ldm, self.ldm_config = ae, ae_config, ldm, ldm_config
        self.device, self.precision = device, precision
        self.ae_path, self.ldm_path, self.ae_sha256 = ae_path, ldm_path, ae_sha256
        self.denoiser: Callable = ldm  # what the samplers call; `compile()` replaces it
        self.latent_shape = tuple(ldm_config.latent_shape)
        self.latent_mean = torch.tensor(ldm_config.latent_mean, device=device)[None, :, None, None, None]
        self.latent_std = torch.tensor(ldm_config.latent_std, device=device)[None, :, None, None, None]
        self.preprocess: PreprocessConfig = ae_config.preprocess
        self.intensity_range = ae_config.intensity_range
        self.intensity_ranges = ae_config.intensity_ranges  # per channel (None: none recorded)
        self.channel_names: list[str] = ae_config.channel_names
        self.reference_affine = np.asarray(ae_config.reference_affine)
        self.label_names: dict[str, int] = dict(ae_config.label_names)
        self.image_dims = int(ae_config.get("image_dims", 3) or 3)  # 2: a model of 2D images
        self.image_format = str(ae_config.get("image_format", "") or "")  # of 2D images: png, dicom, ...
        self.image_dtype = str(ae_config.get("image_dtype", "") or "")  # of 2D images: uint8, uint16, ...
        self.guide: LatentDenoiser | None = None  # a weaker denoiser for autoguidance (`set_guide`)
        self.guide_sha256: str | None = None

    @classmethod
    def from_pretrained(
        cls, ae_path: Path, ldm_path: Path, device: torch.device = torch.device("cpu"), precision: str = "auto"
    ) -> LatentDiffusionPipeline:
        """Load an autoencoder and a latent denoiser trained on it (files or training folders)."""
        precision = resolve_precision(precision, device)
        ae_path, ldm_path = resolve_checkpoint(ae_path), resolve_checkpoint(ldm_path)
        ae, ae_cfg = load_autoencoder(ae_path, device)
        ldm, ldm_cfg = load_denoiser(ldm_path, device)
        ae_hash = file_sha256(ae_path)
        if ldm_cfg.autoencoder_sha256 != ae_hash:
            raise LdmError(f"{ldm_path} was trained on a different autoencoder than {ae_path}")
        return cls(
            ae,
            ae_cfg,
            ldm,
            ldm_cfg,
            device=device,
            precision=precision,
            ae_path=ae_path,
            ldm_path=ldm_path,
            ae_sha256=ae_hash,
        )

    def set_guide(self, path: Path) -> None:
        """Load a weaker denoiser of the same latents (the same autoencoder, training data, schedule,
        objective and conditions; trained shorter or smaller) that `guidance` then extrapolates
        away from (autoguidance, `models.denoiser.guided`)."""
        path = resolve_checkpoint(path)
        guide, cfg = load_denoiser(path, self.device)
        own, theirs = self.ldm_config, cfg
        if theirs.autoencoder_sha256 != self.ae_sha256:
            raise LdmError(f"guide {path} was trained on a different autoencoder than {self.ae_path}")
        if tuple(theirs.latent_shape) != tuple(own.latent_shape):
            raise LdmError(
                f"guide {path} makes latents {tuple(theirs.latent_shape)}; the model {tuple(own.latent_shape)}"
            )
        keys = ("objective", "num_train_timesteps", "schedule", "beta_start", "beta_end", "zero_terminal_snr")
        differ = [k for k in keys if getattr(theirs.model, k) != getattr(own.model, k)]
        if differ:
            raise LdmError(f"guide {path} differs from the model in its diffusion schedule: {', '.join(differ)}")
        if theirs.attributes != own.attributes or theirs.label_channels != own.label_channels:
            raise LdmError(f"guide {path} is not conditioned on what the model is (attributes and label maps)")
        stats = (theirs.latent_mean, own.latent_mean), (theirs.latent_std, own.latent_std)
        if not all(np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in stats):
            raise LdmError(
                f"guide {path} standardises the latents differently (another training set?); "
                "train it with train-ldm on the model's data and autoencoder"
            )
        self.guide, self.guide_sha256 = guide, file_sha256(path)

    def compile(self) -> None:
        """torch.compile the denoiser the samplers call."""
        try:
            self.denoiser = torch.compile(self.ldm)
        except Exception as exc:  # noqa: BLE001 - torch.compile raises many kinds
            raise LdmError(f"--compile failed: {type(exc).__name__}: {exc}") from None

    def make_sampler(
        self,
        sampler: str = SampleConfig.sampler,
        steps: int = SampleConfig.steps,
        eta: float = SampleConfig.eta,
        spacing: str = SampleConfig.spacing,
        resample: int = 1,
    ) -> Sampler:
        """A sampler by name for this denoiser's schedule and objective (`resample`: RePaint's, for inpainting)."""
        return make_sampler(sampler, self.ldm_config.model, steps, eta, spacing, resample=resample)

    # ---------------------------------------------------------------------------------- latents

    def encode(
        self,
        image: torch.Tensor,
        label: torch.Tensor | None = None,
        observed: torch.Tensor | None = None,
        batch: int = 64,
    ) -> torch.Tensor:
        """Normalised volume slices (D, H, W) (several channels: (D, C, H, W)) → standardised latent volume (L, D, h, w)."""
        z = encode_volume(self.ae, image, label, batch=batch, observed=observed)
        return (z - self.latent_mean[0]) / self.latent_std[0]

    @torch.inference_mode()
    def estimate_labels(self, image: torch.Tensor) -> torch.Tensor:
        """The label map (D, H, W) uint8 that the autoencoder reads from a normalised image alone
        (encoded with an empty map, decoded): for encoding an image whose map is unknown."""
        empty = torch.zeros((image.shape[0], *image.shape[-2:]), dtype=torch.uint8)
        z = encode_volume(self.ae, image, empty)
        _, lab = decode_latents(self.ae, z[None], labels_only=True)
        return lab[0]

    def conditioning(
        self, conditions: dict[str, float | str] | None, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Standardised attribute tensor and mask (B, A) for the requested conditions (None if none):
        numbers for numeric attributes, a level's name (or its 0/1 code) for two-level covariates."""
        if not conditions:
            return None, None
        names = self.ldm_config.attributes
        if not names:
            raise LdmError(
                "this latent diffusion model was trained without conditioning; "
                "retrain with --condition-on lesion or covariate columns (--covariates TABLE)"
            )
        cond = self.ldm_config.conditioning
        mean, std = np.asarray(cond["mean"]), np.asarray(cond["std"])
        a = np.zeros(len(names), dtype=np.float32)
        m = np.zeros(len(names), dtype=np.float32)
        for name, value in conditions.items():
            if name == "class":  # one-hot over the model's classes, all of them given
                for i, flag in self._class_onehot(value).items():
                    a[i], m[i] = (flag - mean[i]) / std[i], 1.0
                continue
            if name not in names:
                raise LdmError(
                    f"unknown condition {name!r}: this model is conditioned on {', '.join(names)}, not {name}"
                )
            i = names.index(name)
            a[i] = (self._condition_value(name, value) - mean[i]) / std[i]
            m[i] = 1.0
        rep = lambda v: torch.from_numpy(v)[None].repeat(batch, 1).to(self.device)  # noqa: E731
        return rep(a), rep(m)

    def _class_onehot(self, value: float | str) -> dict[int, float]:
        """{attribute index: 1 or 0} of `class=value` for a model trained with --condition-on class."""
        classes = self.ldm_config.conditioning.get("classes") or []
        if not classes:
            raise LdmError("this model was not trained with --condition-on class; it takes no --class")
        name = str(value)
        if isinstance(value, float) and value.is_integer() and name not in classes:
            name = str(int(value))  # class folders named 0, 1, ... are parsed as numbers
        if name not in classes:
            raise LdmError(f"unknown class {name!r}: this model knows {', '.join(classes)}")
        names = self.ldm_config.attributes
        return {names.index(f"class={c}"): float(c == name) for c in classes}

    def _condition_value(self, name: str, value: float | str) -> float:
        """The raw value of one condition: a number, or the 0/1 code of a two-level covariate's level."""
        levels = (self.ldm_config.conditioning.get("levels") or {}).get(name)
        if levels:
            if value in levels:
                return float(levels.index(value))
            if not isinstance(value, str) and value in (0, 1):
                return float(value)
            raise LdmError(f"--condition {name} must be one of {', '.join(levels)}; got {value!r}")
        if isinstance(value, str):
            raise LdmError(f"--condition {name} needs a number, got {value!r}")
        return float(value)

    def out_of_range(self, conditions: dict[str, float | str] | None) -> list[str]:
        """One warning per numeric condition outside the range the model saw in training."""
        cond = self.ldm_config.conditioning
        names, span = self.ldm_config.attributes, cond.get("train_range")
        levels = cond.get("levels") or {}
        out = []
        for name, value in (conditions or {}).items():
            if span is None or name not in names or name in levels or isinstance(value, str):
                continue
            lo, hi = span[0][names.index(name)], span[1][names.index(name)]
            if not lo <= value <= hi:
                out.append(f"{name}={value:g} is outside the training range [{lo:g}, {hi:g}]: the model extrapolates")
        return out

    def label_condition(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) integer label maps in model space (slice axis first) → the denoiser's
        label-map condition (B, C, D, h, w) on the device; an error for a model not trained on maps."""
        channels = self.ldm_config.label_channels
        if not channels:
            raise LdmError(
                "this latent diffusion model was not trained on label maps; retrain with --condition-on labels"
            )
        if int(labels.max()) >= channels:
            raise LdmError(f"label value {int(labels.max())} is beyond the model's {channels} classes")
        detail = self.ldm_config.model.label_detail
        return label_grid(labels, channels, self.ae.cfg.downsample, detail).to(self.device)

    def denoise(
        self,
        seeds: Sequence[int],
        sampler: Sampler,
        model: Callable,
        callback=None,
        start_from: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run `sampler` from the initial noise of `seeds` (one CPU generator per sample, which also
        draws any noise the sampler adds) → standardised latents (B, L, D, h, w) on the device.
        `start_from` (L, D, h, w): a clean latent noised to the sampler's first timestep with that
        noise (SDEdit), for a sampler that starts part-way (`make_sampler(..., start=t)`)."""
        gens = sample_generators(list(seeds))
        x = initial_noise(self.latent_shape, gens).to(self.device)
        if start_from is not None:
            a = sampler.alphas_cumprod[sampler.timesteps[0]].float().to(self.device)
            x = a.sqrt() * start_from.to(self.device, x.dtype) + (1 - a).sqrt() * x
        return sampler(model, x, generator=gens, callback=callback)

    def sample_latents(
        self,
        seeds: Sequence[int],
        *,
        sampler: str | Sampler = "ddim",
        steps: int = 50,
        eta: float = 0.0,
        spacing: str = SampleConfig.spacing,
        conditions: dict[str, float | str] | None = None,
        guidance: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Standardised latents (B, L, D, h, w), one per seed, with classifier-free guidance when
        conditioned (`labels`: one label-map condition per seed, from `label_condition`)."""
        smp = self.make_sampler(sampler, steps, eta, spacing) if isinstance(sampler, str) else sampler
        with torch.inference_mode():
            attrs, mask = self.conditioning(conditions, len(seeds))
            with autocast(self.device, self.precision):
                return self.denoise(seeds, smp, guided(self.denoiser, attrs, mask, guidance, labels, self.guide))

    def decode(self, latents: torch.Tensor, decode_batch: int = 64) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Standardised latents (B, L, D, h, w) → per volume (image in the source scale, label map),
        both (I, J, K) (the image (I, J, K, C) with several channels), decoded `decode_batch`
        slices at a time."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            z = latents.float() * self.latent_std + self.latent_mean
            images, labels = decode_latents(self.ae, z, decode_batch, labels_only=True)
        return [self._to_volume(images[j], None if labels is None else labels[j]) for j in range(images.shape[0])]

    def _to_volume(self, image: torch.Tensor, label: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
        img = self.to_source_scale(slices_to_volume(image.float().numpy()))
        return img, None if label is None else slices_to_volume(label.numpy())

    def to_source_scale(self, image: np.ndarray, ranges: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
        """A normalised model-space image (I, J, K) or (I, J, K, C) in source intensities, each
        channel with its own range (`ranges`, else the ones the autoencoder recorded; unchanged when none)."""
        ranges = self.intensity_ranges if ranges is None else ranges
        if ranges is None:
            return image
        if image.ndim == 3:
            return denormalise(image, ranges[0], self.preprocess)
        return np.stack([denormalise(image[..., c], r, self.preprocess) for c, r in enumerate(ranges)], axis=-1)

    def sample(
        self,
        seeds: Sequence[int],
        *,
        sampler: str | Sampler = SampleConfig.sampler,
        steps: int = SampleConfig.steps,
        eta: float = SampleConfig.eta,
        spacing: str = SampleConfig.spacing,
        conditions: dict[str, float | str] | None = None,
        guidance: float = SampleConfig.guidance,
        decode_batch: int = SampleConfig.decode_batch,
        labels: torch.Tensor | None = None,
    ) -> list[SampledVolume]:
        """Generate one image volume (source intensity scale) and label map per seed (`labels`:
        a label-map condition per seed, from `label_condition`, for mask-to-image models).

        A sample depends on its seed only, not on the other seeds of the call or on the device's
        batch: noise comes from one CPU generator per seed."""
        SampleConfig(  # the CLI's checks and messages (a Sampler object is taken as it is)
            sampler=sampler if isinstance(sampler, str) else SampleConfig.sampler,
            steps=steps,
            eta=eta,
            spacing=spacing,
            guidance=guidance,
            decode_batch=decode_batch,
        )
        z = self.sample_latents(
            seeds,
            sampler=sampler,
            steps=steps,
            eta=eta,
            spacing=spacing,
            conditions=conditions,
            guidance=guidance,
            labels=labels,
        )
        return [SampledVolume(int(s), img, lab) for s, (img, lab) in zip(seeds, self.decode(z, decode_batch))]

    # --------------------------------------------------------------------------------- imputation

    def impute(
        self,
        image: torch.Tensor,
        missing: torch.Tensor,
        *,
        samples: int = ImputeConfig.samples,
        steps: int = ImputeConfig.steps,
        guidance: float = ImputeConfig.guidance,
        sampler: str = ImputeConfig.sampler,
        eta: float = ImputeConfig.eta,
        seed: int = 0,
        batch_size: int = ImputeConfig.batch_size,
        chunk: int = 16,
        callback: Callable[[int], None] | None = None,
        labels: torch.Tensor | None = None,
        init: str = ImputeConfig.init,
        strength: float = ImputeConfig.strength,
    ) -> torch.Tensor:
        """Fill the missing voxels of one volume in model space with latent self-guidance (LDMiss).

        Args:
            image: (D, H, W) normalised volume, slice axis first (missing voxels: any value);
                (D, C, H, W) for a model of several channels.
            missing: bool of the shape of `image`, True = missing (a whole channel may be missing).
            samples: independent imputations (seeds `sample_seed(seed, k)`).
            chunk: latent slices decoded at once inside the guidance (bounds its memory).
            callback: called with the number of finished denoising steps (for a progress bar).
            labels: (1, C, D, h, w) label-map condition (`label_condition`) of a mask-to-image model.
            init: "noise" (LDMiss) or "interpolation": start from the latent of the volume with its
                missing voxels interpolated along the slice axis (`interpolate_missing`), noised to
                `strength` of the schedule, for `impute_steps(steps, init, strength)` steps.
        Returns:
            (samples, *image.shape) on the CPU: observed voxels exactly `image`'s, missing ones imputed.
        """
        ImputeConfig(  # the CLI's checks and messages
            samples=samples,
            guidance=guidance,
            steps=steps,
            sampler=sampler,
            eta=eta,
            batch_size=batch_size,
            init=init,
            strength=strength,
        )
        dcfg = self.ldm_config.model
        if dcfg.objective == "flow":
            raise LdmError(
                "impute needs an eps or v denoiser (self-guidance uses the noise prediction); this one is flow"
            )
        self._check_model_space(image)
        start_from, first = None, None
        if init == "interpolation":
            from ldmtool.data.missing import interpolate_missing

            filled = torch.from_numpy(interpolate_missing(image.float().numpy(), missing.numpy()))
            with torch.inference_mode():
                lab = self.estimate_labels(filled) if self.ae.num_classes and self.ae.cfg.label_input else None
                start_from = self.encode(filled, lab).clone()
            first = partial_start(strength, dcfg.num_train_timesteps)
        smp = make_sampler(sampler, dcfg, impute_steps(steps, init, strength), eta, start=first)
        keep = (~missing).float().to(self.device)
        target = image.float().to(self.device) * keep
        render = latent_renderer(self.ae, self.latent_mean, self.latent_std, image.shape[0])
        alphas = training_scheduler(dcfg).alphas_cumprod
        for p in list(self.ae.parameters()) + list(self.ldm.parameters()):
            p.requires_grad_(False)  # gradients flow to the latent only
        out, done = [], 0
        for start in range(0, samples, batch_size):
            b = min(batch_size, samples - start)
            error = observed_error(
                render, target.expand(b, *target.shape), keep.expand(b, *keep.shape), slice_chunks(chunk)
            )
            lab = None if labels is None else labels.expand(b, -1, -1, -1, -1)
            hook = SelfGuidance(guided(self.ldm, None, None, labels=lab), alphas, dcfg.prediction_type, error, guidance)

            def step_done(i, t, x_t, x0, _base=done):
                if callback is not None:
                    callback(_base + i + 1)

            seeds = [sample_seed(seed, k) for k in range(start, start + b)]
            z = self.denoise(seeds, smp, hook, callback=step_done, start_from=start_from)
            done += len(smp.timesteps)
            with torch.inference_mode():
                decoded, _ = decode_latents(self.ae, z.float() * self.latent_std + self.latent_mean, chunk * 4)
            out.append(torch.where(missing[None], decoded.float(), image[None].float()))
        return torch.cat(out)

    def inpaint_latents(
        self,
        known: torch.Tensor,
        keep: torch.Tensor,
        *,
        seed: int = 0,
        sampler: str = SampleConfig.sampler,
        steps: int = SampleConfig.steps,
        eta: float = SampleConfig.eta,
        conditions: dict[str, float | str] | None = None,
        guidance: float = SampleConfig.guidance,
        labels: torch.Tensor | None = None,
        resample: int = 1,
        start_from: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Regenerate the latent voxels outside `keep` with RePaint-style replacement.

        Args:
            known: (L, D, h, w) standardised latent of the volume (`encode`).
            keep: (D, h, w) 1 where the latent is kept, 0 where it is regenerated.
            labels: (1, C, D, h, w) label-map condition (`label_condition`), for mask-to-image models.
            resample: every step taken this many times, noised back in between (RePaint's
                resampling: the regenerated part follows the kept one; `DDIMSampler`).
            start_from, strength: with `strength` < 1, start from the standardised latent
                `start_from` (L, D, h, w) (default `known`) noised to that fraction of the schedule
                (SDEdit) and run round(steps × strength) steps (at least one, `impute_steps`),
                instead of all `steps` from pure noise.
        Returns:
            (1, L, D, h, w) standardised latent: `known` where kept, sampled elsewhere; before every
            step the kept part of x_t is the known latent noised to that step's level.
        """
        dcfg = self.ldm_config.model
        if dcfg.objective == "flow":
            raise LdmError("inpaint --method repaint needs an eps or v denoiser; this one is flow")
        first = partial_start(strength, dcfg.num_train_timesteps) if strength < 1 else None
        runs = impute_steps(steps, "noise" if first is None else "start", strength)
        smp = make_sampler(sampler, dcfg, runs, eta, start=first, resample=resample)
        known = known[None].float().to(self.device)
        m = keep[None, None].float().to(self.device)
        start = None
        if first is not None:
            start = known[0] if start_from is None else start_from.float().to(self.device)
        with torch.inference_mode():
            attrs, mask = self.conditioning(conditions, 1)
            model = guided(self.denoiser, attrs, mask, guidance, labels, self.guide)
            alphas = training_scheduler(dcfg).alphas_cumprod
            hook = Replacement(model, alphas, dcfg.prediction_type, known, m, torch.Generator().manual_seed(seed))
            with autocast(self.device, self.precision):
                z = self.denoise([sample_seed(seed, 0)], smp, hook, start_from=start)
        return m * known + (1 - m) * z.float()

    def _check_model_space(self, image: torch.Tensor) -> None:
        f = self.ae.cfg.downsample
        expect = (self.latent_shape[1], self.latent_shape[2] * f, self.latent_shape[3] * f)
        grid = (image.shape[0], *image.shape[-2:])
        if grid != expect:
            raise LdmError(
                f"the volume is {grid} (slices, rows, columns) in model space but the models expect {expect}"
            )
        channels = 1 if image.ndim == 3 else image.shape[1]
        if channels != self.ae.image_channels:
            raise LdmError(
                f"the volume has {channels} channels but the models were trained on {self.ae.image_channels}"
            )
