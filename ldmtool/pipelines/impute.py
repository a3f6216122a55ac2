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

import numpy as np
import torch

from ldmtool import __version__
from ldmtool.config import ImputeConfig
from ldmtool.data.prepared import slices_to_volume, volume_to_slices
from ldmtool.errors import LdmError
from ldmtool.models.checkpoint import file_sha256
from ldmtool.models.checkpoint_config import AutoencoderCheckpoint
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline
from ldmtool.pipelines.outdir import check_output_dir, clear_temps, output_dir, write_run_record


@dataclass
class ImputeResult:
    source: str
    outputs: dict[str, Path] = field(default_factory=dict)
    missing_voxels: int = 0
    total_voxels: int = 0
    seconds: float = 0.0
    outside: int = 0  # missing voxels outside the model's field of view (filled from its edge)


def missing_mask(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    slices: str | None = None,
    simulate_mcar: float | None = None,
    seed: int = 0,
) -> np.ndarray:
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
        raise LdmError(
            "nothing is missing: give --mask, --missing-slices or --simulate-mcar, or NaN voxels in the volume"
        )
    if gone.all():
        raise LdmError(
            "every voxel is missing: nothing to guide the imputation (use `ldmtool sample` to generate volumes)"
        )
    return gone


def to_model_space(volume, gone: np.ndarray, ae_cfg: AutoencoderCheckpoint):
    """(normalised image (D,H,W), missing (D,H,W) bool, model affine (I,J,K), intensity range)."""
    from ldmtool.data.preprocess import _crop_or_pad, preprocess_case

    pc = preprocess_case(volume, None, ae_cfg.preprocess, gone)
    arr, miss, affine = pc.image.array, pc.missing.array, pc.image.affine
    shape = tuple(int(v) for v in ae_cfg.volume_shape)
    if arr.shape != shape:  # preprocessing without a fixed shape: bring the grid to the trained one
        arr, shift = _crop_or_pad(arr, shape, float(arr.min()))
        miss, _ = _crop_or_pad(miss, shape, 0)
        translate = np.eye(4)
        translate[:3, 3] = shift
        affine = affine @ translate
    return volume_to_slices(arr), volume_to_slices(miss).astype(bool), affine, pc.intensity_range


def to_input_grid(
    model_volume: np.ndarray, model_affine: np.ndarray, where: np.ndarray, input_affine: np.ndarray, order: int = 1
) -> tuple[np.ndarray, int]:
    """Values of a model-space volume (I, J, K) at the input voxels `where` (bool, the input's
    shape), by linear interpolation through the affines (`order` 0: nearest, for label maps);
    also how many fell outside its grid."""
    from scipy.ndimage import map_coordinates

    ijk = np.stack(np.nonzero(where)).astype(np.float64)  # (3, M): the voxels to fill only
    m = np.linalg.inv(model_affine) @ np.asarray(input_affine, dtype=np.float64)
    coords = m[:3, :3] @ ijk + m[:3, 3:4]
    shape = np.asarray(model_volume.shape)[:, None]
    outside = int(np.any((coords < -0.5) | (coords > shape - 0.5), axis=0).sum())
    values = map_coordinates(model_volume.astype(np.float32), coords, order=order, mode="nearest")
    return values, outside


def impute_file(
    source: Path,
    ae_path: Path,
    ldm_path: Path,
    out_dir: Path,
    *,
    mask: Path | None = None,
    slices: str | None = None,
    simulate_mcar: float | None = None,
    samples: int = ImputeConfig.samples,
    steps: int = ImputeConfig.steps,
    guidance: float = ImputeConfig.guidance,
    sampler: str = ImputeConfig.sampler,
    eta: float = ImputeConfig.eta,
    seed: int = 0,
    batch_size: int = ImputeConfig.batch_size,
    device: torch.device = torch.device("cpu"),
    console=None,
    series_uid: str | None = None,
    overwrite: bool = False,
) -> ImputeResult:
    """Impute one NIfTI file or DICOM series (`series_uid`: which, in a folder holding several);
    write NIfTI outputs in its geometry (the imputed volume in the input's value type) and the
    run record (`runs/impute-CASE-TIME.json`, the latest also as `CASE_impute.json`). `out_dir`
    must be new, empty or an earlier impute output (`overwrite`: see `pipelines.outdir`)."""
    ImputeConfig(  # the CLI's checks and messages
        samples=samples, guidance=guidance, steps=steps, sampler=sampler, eta=eta, batch_size=batch_size
    )
    check_output_dir(out_dir, "impute", overwrite)  # before any work
    with output_dir(Path(out_dir)):
        return _impute(
            source,
            ae_path,
            ldm_path,
            Path(out_dir),
            mask,
            slices,
            simulate_mcar,
            series_uid,
            seed,
            device,
            console,
            samples=samples,
            steps=steps,
            guidance=guidance,
            sampler=sampler,
            eta=eta,
            batch_size=batch_size,
        )


def _impute(source, ae_path, ldm_path, out_dir, mask, slices, simulate_mcar, series_uid, seed, device, console, **kw):
    """The body of `impute_file` (its arguments; `kw`: the sampling settings)."""
    samples, steps, guidance, sampler, eta = kw["samples"], kw["steps"], kw["guidance"], kw["sampler"], kw["eta"]
    t0 = time.perf_counter()
    pipe = LatentDiffusionPipeline.from_pretrained(ae_path, ldm_path, device=device)
    volume, raw, gone = _read_incomplete(Path(source), mask, slices, simulate_mcar, seed, series_uid)
    image, miss, model_affine, irange = to_model_space(volume, gone, pipe.ae_config)
    if miss.all():
        raise LdmError("no observed voxel is left in the model's field of view: nothing to guide the imputation")
    label = f"impute {Path(source).name}", f"{100 * gone.mean():.1f}% missing"
    result_model = _impute_with_progress(
        pipe,
        torch.from_numpy(image),
        torch.from_numpy(miss),
        label,
        console,
        seed=seed,
        **kw,
    )
    fills, outside = _fills_on_input_grid(pipe, result_model, irange, model_affine, gone, volume.affine)
    result = ImputeResult(str(source), missing_voxels=int(gone.sum()), total_voxels=int(gone.size), outside=outside)
    stem = _write_outputs(result, volume, raw, gone, fills, Path(out_dir), Path(source))
    result.seconds = time.perf_counter() - t0
    prov = {
        "source": str(source),
        "outputs": {k: v.name for k, v in result.outputs.items()},
        "missing_voxels": result.missing_voxels,
        "total_voxels": result.total_voxels,
        "missing_from": {
            "nan": bool(np.issubdtype(raw.dtype, np.floating) and np.isnan(raw).any()),
            "mask": None if mask is None else str(mask),
            "slices": slices,
            "simulate_mcar": simulate_mcar,
        },
        "missing_outside_model_grid": outside,
        "samples": samples,
        "sampler": sampler,
        "steps": steps,
        "eta": eta,
        "guidance": guidance,
        "seed": seed,
        "intensity_range": list(irange),
        "seconds": result.seconds,
        "device": str(device),
        "ae": str(ae_path),
        "ldm": str(ldm_path),
        "autoencoder_sha256": pipe.ae_sha256,
        "ldm_sha256": file_sha256(ldm_path),
        "ldmtool_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_run_record(out_dir, f"impute-{stem}", json.dumps(prov, indent=2), f"{stem}_impute.json")
    result.outputs["provenance"] = out_dir / f"{stem}_impute.json"
    return result


def _read_incomplete(
    source: Path, mask: Path | None, slices: str | None, simulate_mcar: float | None, seed: int, series_uid=None
):
    """(volume, its array, missing voxels) of the input; NaN voxels count as missing."""
    from ldmtool.io.dataset import read_aligned
    from ldmtool.io.readers import read_volume

    volume = read_volume(source, series_uid=series_uid, allow_nan=True)
    raw = np.asarray(volume.array)
    mask_arr = None
    if mask is not None:
        mask_arr = np.asarray(read_aligned(Path(mask), volume, f"--mask {mask}").array)
    gone = missing_mask(
        raw.astype(np.float64, copy=False), mask=mask_arr, slices=slices, simulate_mcar=simulate_mcar, seed=seed
    )
    return volume, raw, gone


def _impute_with_progress(
    pipe: LatentDiffusionPipeline, image: torch.Tensor, missing: torch.Tensor, label: tuple[str, str], console, **kwargs
) -> torch.Tensor:
    """`pipe.impute` with a progress bar over the denoising steps of all batches."""
    from ldmtool.runtime import progress

    total = -(-kwargs["samples"] // kwargs["batch_size"]) * kwargs["steps"]
    with progress(console) as bar:
        task = bar.add_task(label[0], total=total, rate="", info=label[1])
        start = time.perf_counter()

        def tick(done: int) -> None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:.2f} steps/s")

        return pipe.impute(image, missing, callback=tick, **kwargs)


def _fills_on_input_grid(
    pipe: LatentDiffusionPipeline,
    result_model: torch.Tensor,
    irange,
    model_affine: np.ndarray,
    gone: np.ndarray,
    input_affine: np.ndarray,
) -> tuple[np.ndarray, int]:
    """(samples, missing voxels) imputed values in source units on the input's grid, and how many
    missing voxels fell outside the model's grid."""
    from ldmtool.data.preprocess import denormalise

    fills, outside = [], 0  # only the missing voxels differ between samples
    for k in range(result_model.shape[0]):
        model_vol = denormalise(slices_to_volume(result_model[k].numpy()), irange, pipe.preprocess)
        values, outside = to_input_grid(model_vol, model_affine, gone, input_affine)
        fills.append(values)
    return np.stack(fills).astype(np.float64), outside


def _write_outputs(
    result: ImputeResult, volume, raw: np.ndarray, gone: np.ndarray, fills: np.ndarray, out_dir: Path, source: Path
) -> str:
    """Write `<stem>_imputed`, `_missing` (and `_std` for several samples) in the input's geometry; returns the stem."""
    from ldmtool.io import write_nifti
    from ldmtool.pipelines.segment import output_stem

    value_dtype = np.dtype(volume.meta.get("value_dtype", raw.dtype))
    floating = not np.issubdtype(value_dtype, np.integer)
    if floating:
        out_dtype = raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.dtype(np.float32)
    else:  # computed in float64, written in the input's integer type
        out_dtype = np.dtype(np.float64)
    stem = output_stem(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_temps(out_dir, f"{stem}_*")  # left by a run of this case killed while writing
    imputed = raw.astype(out_dtype, copy=True)  # observed voxels: the input's values, untouched
    imputed[gone] = fills.mean(0).astype(out_dtype)
    result.outputs["imputed"] = write_nifti(  # integer input: imputed values rounded and clipped to its type
        volume.with_array(imputed, imputed=True),
        out_dir / f"{stem}_imputed.nii.gz",
        dtype=None if floating else value_dtype,
    )
    result.outputs["missing"] = write_nifti(
        volume.with_array(gone.astype(np.uint8)), out_dir / f"{stem}_missing.nii.gz"
    )
    if fills.shape[0] > 1:
        std_map = np.zeros(raw.shape, dtype=np.float32)
        std_map[gone] = fills.std(0)
        result.outputs["std"] = write_nifti(volume.with_array(std_map), out_dir / f"{stem}_std.nii.gz")
    return stem
