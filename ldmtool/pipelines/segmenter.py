"""Segmenter inference: class probabilities (and their spread over draws) of one volume.

LDSeg denoises a label latent in a few DDIM steps given the image latent and decodes it; the UNet
baseline is one forward pass. Used by `segment` and by the validation of `train-seg`.

Input sizes: an input no larger than the training patch (the checkpoint's `patch_size`, the largest
training slice or volume) is zero-padded to the network's size multiple and cropped back; a larger
one is tiled with MONAI's `sliding_window_inference` (windows of the patch size, a quarter overlap,
Gaussian blending), so the network never sees a context larger than it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ldmtool.config import SegmentConfig, SegModelConfig
from ldmtool.data.preprocess import PreprocessConfig
from ldmtool.errors import LdmError
from ldmtool.models.checkpoint import resolve_checkpoint
from ldmtool.models.checkpoint_config import SegmenterCheckpoint
from ldmtool.models.ldseg import LDSeg, memory_layout, seg_schedule, size_multiple
from ldmtool.models.loaders import load_segmenter
from ldmtool.runtime import autocast, resolve_precision

LATENT_CLIP = 5.0  # |ẑ_0| bound of the standardised label latent (sampling and decoder_input x0)
# Sampling starts at the last timestep whose signal level √ᾱ_t is at least this (t = 966 of 1000 for
# the cosine schedule), not at t = T − 1: there √ᾱ = 5e-5, so ẑ_0 = (z_t − √(1−ᾱ)ε̂)/√ᾱ multiplies
# the error of ε̂ by 2·10⁴ and the first DDIM step hands the next one a clamped, meaningless ẑ_0.
# z_T ~ N(0, I) stands for z_966 (whose signal part 0.05·z_0 it ignores). With the same models this
# start raised the 2-step mean Dice on both benchmark cases (benchmarks/results/segmentation.md).
START_SIGNAL = 0.05
# DDIM steps of `segment` (and of the validation Dice) unless asked otherwise. One step from that start
# scored at least as well as two in every benchmark run (benchmarks/results/segmentation.md): each
# further step can add a few false lesion voxels.
DEFAULT_STEPS = SegmentConfig.steps  # DDIM steps of LDSeg inference (and of its validation in training)


def sampling_start(cfg: SegModelConfig) -> int:
    """First DDIM timestep of LDSeg sampling: the largest t with √ᾱ_t ≥ START_SIGNAL."""
    from ldmtool.diffusion.samplers import training_scheduler

    ac = training_scheduler(seg_schedule(cfg)).alphas_cumprod.double()
    return int(torch.nonzero(ac.sqrt() >= START_SIGNAL).max())


def pad_to_multiple(x: torch.Tensor, multiple: int, dims: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the last `dims` axes up to a multiple of `multiple`; returns (padded, original sizes)."""
    sizes = tuple(x.shape[-dims:])
    pad: list[int] = []
    for n in reversed(sizes):
        pad += [0, (-n) % multiple]
    return (F.pad(x, pad) if any(pad) else x), sizes


def crop_to(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    return x[(...,) + tuple(slice(0, n) for n in sizes)]


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    cfg: SegModelConfig,
    image: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    samples: int = SegmentConfig.samples,
    batch: int = SegmentConfig.batch_size,
    generator: torch.Generator | None = None,
    device: torch.device = torch.device("cpu"),
    precision: str = "auto",
    start: int | None = None,
    patch: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities of one normalised volume (D, H, W) (several channels: (D, C, H, W)) →
    (K, D, H, W) on the CPU, and with
    `samples` > 1 the per-voxel standard deviation over the draws of each class (K, D, H, W).

    2D models see the D slices in batches of `batch`; 3D models the whole volume. LDSeg draws
    z_T ~ N(0, I) from `generator` (CPU, so results do not depend on the device) and denoises it
    in `steps` deterministic DDIM steps given the image latent, the first at timestep `start`
    (default `sampling_start(cfg)`). Slices (2D) or volumes (3D) larger than `patch` along an axis
    are tiled with sliding windows of that size.
    """
    from ldmtool.diffusion.samplers import DDIMSampler

    mult = size_multiple(cfg)
    sampler = (
        DDIMSampler(seg_schedule(cfg), steps, clip=LATENT_CLIP, start=sampling_start(cfg) if start is None else start)
        if isinstance(model, LDSeg)
        else None
    )
    layout = memory_layout(cfg)
    image = image[:, None] if image.ndim == 3 else image  # (D, C, H, W)
    if cfg.dims == 3:
        chunks = [image.transpose(0, 1)[None]]  # (1, C, D, H, W)
    else:
        chunks = [image[s : s + batch] for s in range(0, image.shape[0], batch)]  # (B, C, H, W)
    means, stds = [], []

    def draws_of(x: torch.Tensor) -> list[torch.Tensor]:
        """Softmax probabilities of each draw for a padded batch x (on the device)."""
        x = x.contiguous(memory_format=layout)
        with autocast(device, precision):
            if sampler is None:
                return [torch.softmax(model(x).float(), dim=1)]
            z_image, draws = model.encode_image(x), []
            for _ in range(samples):
                z = torch.randn(z_image.shape, generator=generator).to(device)
                z0 = sampler(lambda zt, t, zi=z_image: model.predict_noise(zt, t, zi), z)
                draws.append(torch.softmax(model.decode(z0).float(), dim=1))
            return draws

    for chunk in chunks:
        x = chunk.float()
        if patch is not None and any(n > p for n, p in zip(x.shape[2:], patch)):
            mean, std = _tiled(draws_of, x.to(device), tuple(patch), samples, batch)
            means.append(mean)
            stds.append(std)
            continue
        x, sizes = pad_to_multiple(x, mult, cfg.dims)
        draws = draws_of(x.to(device))
        stack = torch.stack([crop_to(d, sizes).cpu() for d in draws])  # (S, B, K, ...)
        means.append(stack.mean(0))
        stds.append(stack.std(0, unbiased=False) if len(draws) > 1 else None)
    if cfg.dims == 3:
        mean = means[0][0]  # (K, D, H, W)
        std = None if stds[0] is None else stds[0][0]
    else:
        mean = torch.cat(means).movedim(1, 0)  # (D, K, H, W) → (K, D, H, W)
        std = None if stds[0] is None else torch.cat(stds).movedim(1, 0)
    return mean, std


def _tiled(draws_of, x: torch.Tensor, patch: tuple[int, ...], samples: int, batch: int):
    """(mean, std or None) of the draws over sliding windows of size `patch` (MONAI inferer)."""
    from monai.inferers import sliding_window_inference

    def predictor(window: torch.Tensor) -> torch.Tensor:
        stack = torch.stack(draws_of(window))
        return torch.cat([stack.mean(0), stack.std(0, unbiased=False)], 1) if samples > 1 else stack.mean(0)

    out = sliding_window_inference(
        x, patch, max(1, batch), predictor, overlap=0.25, mode="gaussian", progress=False
    ).cpu()
    if samples == 1:
        return out, None
    k = out.shape[1] // 2
    return out[:, :k], out[:, k:]


def checked_patch(value, dims: int, source: str) -> tuple[int, ...] | None:
    """The checkpoint's `patch_size` as a tuple (None when absent: inputs are never tiled)."""
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == dims
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise LdmError(f"{source}: field 'patch_size' must be {dims} positive whole numbers; got {value!r}")
    return tuple(value)


class Segmenter:
    """A trained segmenter (LDSeg or UNet) on one device, with its label names and preprocessing."""

    def __init__(
        self,
        model: torch.nn.Module,
        model_config: SegModelConfig,
        *,
        label_names: dict[str, int] | None = None,
        preprocess: PreprocessConfig | None = None,
        device: torch.device = torch.device("cpu"),
        precision: str = "auto",
        config: SegmenterCheckpoint | None = None,
        path: Path | None = None,
        patch_size: tuple[int, ...] | None = None,
    ):
        self.model, self.model_config, self.config, self.path = model, model_config, config, path
        self.patch_size = patch_size  # inputs larger than this are tiled (see predict_volume)
        self.label_names: dict[str, int] = dict(label_names or {})
        self.channel_names: list[str] = ["image"] if config is None else config.channel_names
        self.preprocess = preprocess or PreprocessConfig()
        self.device, self.precision = device, precision

    @classmethod
    def from_pretrained(
        cls, path: Path, device: torch.device = torch.device("cpu"), precision: str = "auto"
    ) -> Segmenter:
        """Load a segmenter checkpoint (file or train-seg output folder)."""
        resolve_precision(precision, device)  # a bad --precision fails before the model loads
        path = resolve_checkpoint(path)
        model, config = load_segmenter(path, device)
        return cls(
            model,
            config.model,
            label_names=config.label_names,
            preprocess=config.preprocess,
            device=device,
            precision=precision,
            config=config,
            path=path,
            patch_size=checked_patch(config.get("patch_size"), config.model.dims, str(path)),
        )

    @property
    def arch(self) -> str:
        return self.model_config.arch

    @property
    def dims(self) -> int:
        return self.model_config.dims

    def predict(
        self,
        image: torch.Tensor,
        steps: int = DEFAULT_STEPS,
        samples: int = SegmentConfig.samples,
        batch: int = SegmentConfig.batch_size,
        generator: torch.Generator | None = None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class probabilities (K, D, H, W) of one normalised volume (D, H, W), and with `samples` > 1
        their per-voxel standard deviation over the draws (see `predict_volume`)."""
        SegmentConfig(steps=steps, samples=samples, batch_size=batch)  # the CLI's checks and messages
        return predict_volume(
            self.model,
            self.model_config,
            image,
            steps=steps,
            samples=samples,
            batch=batch,
            generator=generator,
            device=self.device,
            precision=self.precision,
            start=start,
            patch=self.patch_size,
        )
