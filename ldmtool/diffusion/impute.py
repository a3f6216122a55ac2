"""`ldmtool impute`: fill the missing voxels of a volume with latent self-guidance (LDMiss).

The volume is brought into the models' space (the autoencoder's recorded preprocessing: orient,
resample, normalise with the range of the *observed* voxels, crop/pad to the trained shape); the
missing-voxel mask goes through the same geometry (a model voxel is missing when any missing input
voxel contributes to it). The latent denoiser then samples with `SelfGuidance`: at every reverse
step the Tweedie estimate of the clean latent volume is decoded slice by slice, its squared error
on the observed voxels is differentiated with respect to the current latent, and that gradient
steers the score at the score's own norm. The decoded result is mapped back to the input's voxel
grid through the two affines (linear interpolation, missing voxels only); observed voxels are
copied from the input unchanged, so they come back bit for bit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ldmtool import __version__
from ldmtool.data.prepared import slices_to_volume, volume_to_slices
from ldmtool.diffusion.guidance import SelfGuidance, observed_error, slice_chunks
from ldmtool.errors import LdmError


def latent_renderer(ae, mean: torch.Tensor, std: torch.Tensor, depth: int):
    """render(piece, index) for `observed_error`: standardised latent slices (B, L, d, h, w) at
    slice range index[2] → decoded images (B, d, H, W)."""
    from ldmtool.models.position import slice_positions

    device = next(ae.parameters()).device
    positions = slice_positions(depth, device)

    def render(piece: torch.Tensor, index: tuple[slice, ...]) -> torch.Tensor:
        b, c, d, h, w = piece.shape
        z = piece * std + mean
        flat = z.transpose(1, 2).reshape(b * d, c, h, w)
        span = index[2] if len(index) > 2 else slice(None)
        pos = positions[span].repeat(b)
        image, _ = ae.split(ae.decode(flat, pos).float())
        return image[:, 0].reshape(b, d, *image.shape[2:])

    return render


def impute_latent(
    ae, ldm, ldm_cfg: dict, image: torch.Tensor, missing: torch.Tensor, *, samples: int = 1, steps: int = 50,
    guidance: float = 1.0, sampler: str = "ddim", eta: float = 0.0, seed: int = 0, batch_size: int = 4,
    chunk: int = 16, callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Impute one volume in model space.

    Args:
        image: (D, H, W) normalised volume, slice axis first (missing voxels: any value).
        missing: (D, H, W) bool, True = missing.
        samples: independent imputations (seeds derived from `seed`).
        chunk: latent slices decoded at once inside the guidance (bounds its memory).
        callback: called with the number of finished denoising steps (for a progress bar).
    Returns:
        (samples, D, H, W) on the CPU: observed voxels exactly `image`'s, missing ones imputed.
    """
    from ldmtool.config import DenoiserConfig, from_dict
    from ldmtool.diffusion.generate import initial_noise, sample_generators, sample_seed
    from ldmtool.diffusion.pipeline import decode_latents
    from ldmtool.diffusion.samplers import make_sampler, training_scheduler
    from ldmtool.models.denoiser import guided

    dcfg = from_dict(DenoiserConfig, ldm_cfg["model"])
    if dcfg.objective == "flow":
        raise LdmError("impute needs an eps or v denoiser (self-guidance uses the noise prediction); this one is flow")
    smp = make_sampler(sampler, dcfg, steps, eta)
    device = next(ldm.parameters()).device
    latent_shape = tuple(ldm_cfg["latent_shape"])
    mean = torch.tensor(ldm_cfg["latent_mean"], device=device)[None, :, None, None, None]
    std = torch.tensor(ldm_cfg["latent_std"], device=device)[None, :, None, None, None]
    depth = image.shape[0]
    f = ae.cfg.downsample
    expect = (latent_shape[1], latent_shape[2] * f, latent_shape[3] * f)
    if tuple(image.shape) != expect:
        raise LdmError(f"the volume is {tuple(image.shape)} (slices, rows, columns) in model space but the models expect {expect}")
    keep = (~missing).float().to(device)
    target = (image.float().to(device) * keep)
    render = latent_renderer(ae, mean, std, depth)
    alphas = training_scheduler(dcfg).alphas_cumprod
    uncond = guided(ldm, None, None)
    for p in list(ae.parameters()) + list(ldm.parameters()):
        p.requires_grad_(False)  # gradients flow to the latent only
    out = []
    done = 0
    for start in range(0, samples, batch_size):
        b = min(batch_size, samples - start)
        gens = sample_generators([sample_seed(seed, k) for k in range(start, start + b)])
        x = initial_noise(latent_shape, gens).to(device)
        error = observed_error(render, target.expand(b, -1, -1, -1), keep.expand(b, -1, -1, -1), slice_chunks(chunk))
        hook = SelfGuidance(uncond, alphas, dcfg.prediction_type, error, guidance)

        def step_done(i, t, x_t, x0, _base=done):
            if callback is not None:
                callback(_base + i + 1)

        z = smp(hook, x, generator=gens, callback=step_done)
        done += len(smp.timesteps)
        with torch.inference_mode():
            decoded, _ = decode_latents(ae, z.float() * std + mean, chunk * 4)
        out.append(torch.where(missing[None], decoded.float(), image[None].float()))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


@dataclass
class ImputeResult:
    source: str
    outputs: dict[str, Path] = field(default_factory=dict)
    missing_voxels: int = 0
    total_voxels: int = 0
    seconds: float = 0.0
    outside: int = 0  # missing voxels outside the model's field of view (filled from its edge)


def missing_mask(image: np.ndarray, *, mask: np.ndarray | None = None, slices: str | None = None,
                 simulate_mcar: float | None = None, seed: int = 0) -> np.ndarray:
    """Missing voxels of `image` (True = missing): NaN/inf voxels, plus a mask (1 = missing), plus
    whole slices along the third array axis, plus simulated MCAR voxels. Errors for a mask of
    the wrong shape, a volume with nothing missing or nothing observed."""
    from ldmtool.data.missing import mcar_mask, parse_slices, slices_mask

    gone = ~np.isfinite(image)
    if mask is not None:
        if mask.shape != image.shape:
            raise LdmError(f"--mask has shape {mask.shape} but the volume has shape {image.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise LdmError("--mask must hold 0 (observed) and 1 (missing) only")
        gone |= mask.astype(bool)
    if slices:
        gone |= slices_mask(image.shape, parse_slices(slices, image.shape[2]))
    if simulate_mcar is not None:
        if not 0.0 < simulate_mcar < 1.0:
            raise LdmError(f"--simulate-mcar must be in (0, 1); got {simulate_mcar}")
        gone |= mcar_mask(image.shape, simulate_mcar, seed)
    if not gone.any():
        raise LdmError("nothing is missing: give --mask, --missing-slices or --simulate-mcar, or NaN voxels in the volume")
    if gone.all():
        raise LdmError("every voxel is missing: nothing to guide the imputation (use `ldmtool sample` to generate volumes)")
    return gone


def to_model_space(volume, gone: np.ndarray, ae_cfg: dict):
    """(normalised image (D,H,W), missing (D,H,W) bool, model affine (I,J,K), intensity range)."""
    from ldmtool.data.preprocess import PreprocessConfig, _crop_or_pad, preprocess_case

    pre = PreprocessConfig.from_dict(ae_cfg["preprocess"])
    pc = preprocess_case(volume, None, pre, gone)
    arr, miss, affine = pc.image.array, pc.missing.array, pc.image.affine
    shape = tuple(int(v) for v in ae_cfg["volume_shape"])
    if arr.shape != shape:  # preprocessing without a fixed shape: bring the grid to the trained one
        arr, shift = _crop_or_pad(arr, shape, float(arr.min()))
        miss, _ = _crop_or_pad(miss, shape, 0)
        translate = np.eye(4)
        translate[:3, 3] = shift
        affine = affine @ translate
    return volume_to_slices(arr), volume_to_slices(miss).astype(bool), affine, pc.intensity_range


def to_input_grid(model_volume: np.ndarray, model_affine: np.ndarray, where: np.ndarray, input_affine: np.ndarray) -> tuple[np.ndarray, int]:
    """Values of a model-space volume (I, J, K) at the input voxels `where` (bool, the input's
    shape), by linear interpolation through the affines; also how many fell outside its grid."""
    from scipy.ndimage import map_coordinates

    ijk = np.stack(np.nonzero(where)).astype(np.float64)  # (3, M): the voxels to fill only
    m = np.linalg.inv(model_affine) @ np.asarray(input_affine, dtype=np.float64)
    coords = m[:3, :3] @ ijk + m[:3, 3:4]
    shape = np.asarray(model_volume.shape)[:, None]
    outside = int(np.any((coords < -0.5) | (coords > shape - 0.5), axis=0).sum())
    values = map_coordinates(model_volume.astype(np.float32), coords, order=1, mode="nearest")
    return values, outside


def impute_file(
    source: Path, ae_path: Path, ldm_path: Path, out_dir: Path, *, mask: Path | None = None, slices: str | None = None,
    simulate_mcar: float | None = None, samples: int = 1, steps: int = 50, guidance: float = 0.5, sampler: str = "ddim",
    eta: float = 0.0, seed: int = 0, batch_size: int = 4, device: torch.device = torch.device("cpu"), console=None,
) -> ImputeResult:
    """Impute one NIfTI file or DICOM series; write NIfTI outputs in its geometry + provenance."""
    from ldmtool.data.preprocess import PreprocessConfig, denormalise
    from ldmtool.diffusion.segment import output_stem
    from ldmtool.io import write_nifti
    from ldmtool.io.atomic import atomic_write_text
    from ldmtool.io.dataset import read_aligned
    from ldmtool.io.readers import read_volume
    from ldmtool.models.loaders import load_autoencoder
    from ldmtool.models.checkpoint import file_sha256
    from ldmtool.runtime import progress
    from ldmtool.models.loaders import load_denoiser

    if samples < 1:
        raise LdmError("--samples must be at least 1")
    if guidance < 0:
        raise LdmError("--guidance must be ≥ 0")
    t0 = time.perf_counter()
    ae, ae_cfg = load_autoencoder(ae_path, device)
    ldm, ldm_cfg = load_denoiser(ldm_path, device)
    ae_hash = file_sha256(ae_path)
    if ldm_cfg.get("autoencoder_sha256") != ae_hash:
        raise LdmError(f"{ldm_path} was trained on a different autoencoder than {ae_path}")
    volume = read_volume(Path(source), allow_nan=True)  # NaN voxels are missing ones
    raw = np.asarray(volume.array)
    mask_arr = None
    if mask is not None:
        mask_arr = np.asarray(read_aligned(Path(mask), volume, f"--mask {mask}").array)
    gone = missing_mask(raw.astype(np.float64, copy=False), mask=mask_arr, slices=slices, simulate_mcar=simulate_mcar, seed=seed)
    image, miss, model_affine, irange = to_model_space(volume, gone, ae_cfg)
    if miss.all():
        raise LdmError("no observed voxel is left in the model's field of view: nothing to guide the imputation")

    total = -(-samples // batch_size) * steps  # denoising steps of all batches
    with progress(console) as bar:
        task = bar.add_task(f"impute {Path(source).name}", total=total, rate="", info=f"{100 * gone.mean():.1f}% missing")
        start = time.perf_counter()

        def tick(done: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:.2f} steps/s")

        result_model = impute_latent(ae, ldm, ldm_cfg, torch.from_numpy(image), torch.from_numpy(miss), samples=samples,
                                     steps=steps, guidance=guidance, sampler=sampler, eta=eta, seed=seed,
                                     batch_size=batch_size, callback=tick)
    pre = PreprocessConfig.from_dict(ae_cfg["preprocess"])
    out_dtype = raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.dtype(np.float32)
    fills = []  # (samples, missing voxels): only the missing voxels differ between samples
    outside = 0
    for k in range(samples):
        model_vol = denormalise(slices_to_volume(result_model[k].numpy()), irange, pre)
        values, outside = to_input_grid(model_vol, model_affine, gone, volume.affine)
        fills.append(values)
    fills = np.stack(fills).astype(np.float64)
    stem = output_stem(Path(source))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ImputeResult(str(source), missing_voxels=int(gone.sum()), total_voxels=int(gone.size), outside=outside)
    imputed = raw.astype(out_dtype, copy=True)  # observed voxels: the input's values, untouched
    imputed[gone] = fills.mean(0).astype(out_dtype)
    result.outputs["imputed"] = write_nifti(volume.with_array(imputed, imputed=True), out_dir / f"{stem}_imputed.nii.gz")
    result.outputs["missing"] = write_nifti(volume.with_array(gone.astype(np.uint8)), out_dir / f"{stem}_missing.nii.gz")
    if samples > 1:
        std_map = np.zeros(raw.shape, dtype=np.float32)
        std_map[gone] = fills.std(0)
        result.outputs["std"] = write_nifti(volume.with_array(std_map), out_dir / f"{stem}_std.nii.gz")
    result.seconds = time.perf_counter() - t0
    prov = {
        "source": str(source), "outputs": {k: v.name for k, v in result.outputs.items()},
        "missing_voxels": result.missing_voxels, "total_voxels": result.total_voxels,
        "missing_from": {"nan": bool(np.issubdtype(raw.dtype, np.floating) and np.isnan(raw).any()),
                         "mask": None if mask is None else str(mask), "slices": slices, "simulate_mcar": simulate_mcar},
        "missing_outside_model_grid": outside, "samples": samples, "sampler": sampler, "steps": steps, "eta": eta,
        "guidance": guidance, "seed": seed, "intensity_range": list(irange), "seconds": result.seconds,
        "device": str(device), "ae": str(ae_path), "ldm": str(ldm_path), "autoencoder_sha256": ae_hash,
        "ldm_sha256": file_sha256(ldm_path), "ldmtool_version": __version__, "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result.outputs["provenance"] = out_dir / f"{stem}_impute.json"
    atomic_write_text(result.outputs["provenance"], json.dumps(prov, indent=2))
    return result
