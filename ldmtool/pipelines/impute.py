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

A model of several channels (contrasts) imputes a case of nnU-Net channel files: the input is one
of them (CASE_0000.nii.gz), the others are read from beside it, and each channel's missing voxels
are imputed; `missing_channel` names a channel that was not acquired at all (its file need not
exist): it is unobserved in every slice, so self-guidance synthesises it from the other channels,
in the intensity scale the model recorded for it. Outputs are then one file per channel
(CASE_imputed_0000.nii.gz, ...).
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
from ldmtool.io.dataset import case_channel_files
from ldmtool.models.checkpoint import file_sha256
from ldmtool.models.checkpoint_config import AutoencoderCheckpoint
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline, impute_steps
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
    the wrong shape, a volume with nothing missing or nothing observed. An image of several
    channels (I, J, K, C) takes a mask and slices of its grid (I, J, K), for every channel."""
    from ldmtool.data.missing import mcar_mask, parse_slices, slices_mask

    gone = ~np.isfinite(image)
    grid = image.shape[:3]
    every_channel = (1,) * (image.ndim - 3)  # a trailing channel axis: the same voxels in each
    if mask is not None:
        if mask.shape != grid:
            raise LdmError(f"--mask has shape {mask.shape} but the volume has shape {grid}")
        if not np.isin(mask, (0, 1)).all():
            raise LdmError("--mask must hold 0 (observed) and 1 (missing) only")
        gone |= mask.astype(bool).reshape(grid + every_channel)
    if slices:
        gone |= slices_mask(grid, parse_slices(slices, grid[2])).reshape(grid + every_channel)
    if simulate_mcar is not None:
        if not 0.0 < simulate_mcar < 1.0:
            raise LdmError(f"--simulate-mcar must be in (0, 1); got {simulate_mcar}")
        gone |= mcar_mask(image.shape, simulate_mcar, seed)
    if not gone.any():
        raise LdmError(
            "nothing is missing: give --mask, --missing-slices, --simulate-mcar or --missing-channel, "
            "or NaN voxels in the volume"
        )
    if gone.all():
        raise LdmError(
            "every voxel is missing: nothing to guide the imputation (use `ldmtool sample` to generate volumes)"
        )
    return gone


def to_model_space(volume, gone: np.ndarray, ae_cfg: AutoencoderCheckpoint):
    """(normalised image (D,H,W), missing (D,H,W) bool, model affine (I,J,K), intensity range);
    a volume of several channels (I,J,K,C): image and missing (D,C,H,W) and the intensity range
    of every channel (that of a channel missing altogether: the one the autoencoder recorded)."""
    from ldmtool.data.preprocess import _crop_or_pad, preprocess_case

    pc = preprocess_case(volume, None, ae_cfg.preprocess, gone)
    arr, miss, affine = pc.image.array, pc.missing.array, pc.image.affine
    shape = tuple(int(v) for v in ae_cfg.volume_shape)
    if arr.shape[:3] != shape:  # preprocessing without a fixed shape: bring the grid to the trained one
        arr, shift = _crop_or_pad(arr, shape, float(arr.min()))
        miss, _ = _crop_or_pad(miss, shape, 0)
        translate = np.eye(4)
        translate[:3, 3] = shift
        affine = affine @ translate
    irange = pc.intensity_range
    if arr.ndim == 4:
        recorded = ae_cfg.intensity_ranges or [(0.0, 1.0)] * arr.shape[3]
        irange = [r if np.isfinite(r).all() else tuple(recorded[c]) for c, r in enumerate(pc.intensity_ranges)]
    return volume_to_slices(arr), volume_to_slices(miss).astype(bool), affine, irange


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
    missing_channel: str | None = None,
    init: str = ImputeConfig.init,
    strength: float = ImputeConfig.strength,
) -> ImputeResult:
    """Impute one NIfTI file or DICOM series (`series_uid`: which, in a folder holding several);
    write NIfTI outputs in its geometry (the imputed volume in the input's value type) and the
    run record (`runs/impute-CASE-TIME.json`, the latest also as `CASE_impute.json`). `out_dir`
    must be new, empty or an earlier impute output (`overwrite`: see `pipelines.outdir`).
    `missing_channel`: a channel name of a model of several channels, synthesised from the others.
    `init`, `strength`: start from noise, or from the interpolated volume noised part-way (`LatentDiffusionPipeline.impute`)."""
    settings = dict(
        samples=samples,
        guidance=guidance,
        steps=steps,
        sampler=sampler,
        eta=eta,
        batch_size=batch_size,
        init=init,
        strength=strength,
    )
    ImputeConfig(**settings)  # the CLI's checks and messages
    if init == "interpolation" and missing_channel is not None:
        raise LdmError(
            "--init interpolation interpolates along the slices of each channel; a channel missing "
            "altogether has nothing to interpolate: use --init noise with --missing-channel"
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
            missing_channel,
            **settings,
        )


def _impute(
    source,
    ae_path,
    ldm_path,
    out_dir,
    mask,
    slices,
    simulate_mcar,
    series_uid,
    seed,
    device,
    console,
    missing_channel,
    **kw,
):
    """The body of `impute_file` (its arguments; `kw`: the sampling settings)."""
    samples, steps, guidance, sampler, eta = kw["samples"], kw["steps"], kw["guidance"], kw["sampler"], kw["eta"]
    t0 = time.perf_counter()
    pipe = LatentDiffusionPipeline.from_pretrained(ae_path, ldm_path, device=device)
    absent = channel_index(pipe.channel_names, missing_channel)
    hint = "; give it, or --missing-channel {name} to synthesise it"
    files = case_channel_files(Path(source), pipe.channel_names, absent, hint)
    volume, raw, gone = _read_incomplete(files, mask, slices, simulate_mcar, seed, series_uid, absent)
    image, miss, model_affine, irange = to_model_space(volume, gone, pipe.ae_config)
    if miss.all():
        raise LdmError("no observed voxel is left in the model's field of view: nothing to guide the imputation")
    label = f"impute {Path(source).name}", f"{100 * gone.mean():.1f}% missing"
    if missing_channel is not None:
        label = label[0], f"channel {missing_channel} missing, " + label[1]
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
    case = Path(source) if Path(source).is_dir() else files[0]  # a DICOM case folder names the case
    stem = _write_outputs(result, volume, raw, gone, fills, Path(out_dir), case, len(files))
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
            "channel": missing_channel,
        },
        **({"channels": pipe.channel_names, "inputs": [str(f) for f in files]} if len(files) > 1 else {}),
        "missing_outside_model_grid": outside,
        "samples": samples,
        "sampler": sampler,
        "steps": steps,
        "eta": eta,
        "guidance": guidance,
        "init": kw["init"],
        **({"strength": kw["strength"]} if kw["init"] == "interpolation" else {}),
        "seed": seed,
        "intensity_range": [list(r) for r in irange] if len(files) > 1 else list(irange),
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


def channel_index(names: list[str], missing_channel: str | None) -> int | None:
    """The index of `missing_channel` among a model's channel names (None when not given); an
    error for a name the model does not have or a model of one channel."""
    if missing_channel is None:
        return None
    if len(names) < 2:
        raise LdmError("--missing-channel needs a model of several channels; this one was trained on one")
    if missing_channel not in names:
        raise LdmError(f"--missing-channel {missing_channel}: the model's channels are {', '.join(names)}")
    return names.index(missing_channel)


def _read_incomplete(
    files: list[Path],
    mask: Path | None,
    slices: str | None,
    simulate_mcar: float | None,
    seed: int,
    series_uid=None,
    absent: int | None = None,
):
    """(volume, its array, missing voxels) of the input; NaN voxels count as missing. Several
    channel files: one (I, J, K, C) volume on the grid of the first one present, the `absent`
    channel all missing (NaN)."""
    from ldmtool.io.dataset import read_aligned
    from ldmtool.io.readers import read_volume

    present = [c for c in range(len(files)) if c != absent]
    volume = read_volume(files[present[0]], series_uid=series_uid, allow_nan=True)
    if len(files) > 1:
        channels = {present[0]: np.asarray(volume.array, dtype=np.float32)}
        for c in present[1:]:
            channels[c] = np.asarray(read_aligned(files[c], volume, f"channel {c:04d} ({files[c].name})", True).array)
        nan = np.full(volume.shape, np.nan, dtype=np.float32)
        stacked = np.stack([channels.get(c, nan).astype(np.float32) for c in range(len(files))], axis=-1)
        volume = volume.with_array(stacked)
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

    runs = impute_steps(kwargs["steps"], kwargs["init"], kwargs["strength"])
    total = -(-kwargs["samples"] // kwargs["batch_size"]) * runs
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
) -> tuple[list[np.ndarray], int]:
    """Per channel, (samples, its missing voxels) imputed values in source units on the input's
    grid, and how many missing voxels fell outside the model's grid."""
    channels = 1 if gone.ndim == 3 else gone.shape[3]
    ranges = [irange] if gone.ndim == 3 else irange
    where = gone.reshape(*gone.shape[:3], channels)
    fills, outside = [[] for _ in range(channels)], 0  # only the missing voxels differ between samples
    for k in range(result_model.shape[0]):
        model_vol = pipe.to_source_scale(slices_to_volume(result_model[k].numpy()), ranges)
        model_vol = model_vol.reshape(*model_vol.shape[:3], channels)
        outside = 0
        for c in range(channels):
            values, out_c = to_input_grid(model_vol[..., c], model_affine, where[..., c], input_affine)
            fills[c].append(values)
            outside += out_c
    return [np.stack(f).astype(np.float64) for f in fills], outside


def _write_outputs(
    result: ImputeResult,
    volume,
    raw: np.ndarray,
    gone: np.ndarray,
    fills: list[np.ndarray],
    out_dir: Path,
    source: Path,
    channels: int = 1,
) -> str:
    """Write `<stem>_imputed`, `_missing` (and `_std` for several samples) in the input's geometry;
    several channels: one file of each per channel, `_0000`, `_0001`, ... (the stem: the case's
    name). A 2D picture's imputed image and mask are PNGs as it is (`write_like_input`); the
    standard deviation, a float map, is always NIfTI. Returns the stem."""
    from ldmtool.io import write_nifti
    from ldmtool.io.image2d import write_like_input
    from ldmtool.pipelines.segment import output_stem

    value_dtype = np.dtype(volume.meta.get("value_dtype", raw.dtype))
    floating = not np.issubdtype(value_dtype, np.integer)
    if floating:
        out_dtype = raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.dtype(np.float32)
    else:  # computed in float64, written in the input's integer type
        out_dtype = np.dtype(np.float64)
    stem = output_stem(source)  # CASE_0000 → CASE
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_temps(out_dir, f"{stem}_*")  # left by a run of this case killed while writing
    for c in range(channels):
        suffix = f"_{c:04d}" if channels > 1 else ""
        raw_c = raw if channels == 1 else raw[..., c]
        gone_c = gone if channels == 1 else gone[..., c]
        imputed = raw_c.astype(out_dtype, copy=True)  # observed voxels: the input's values, untouched
        imputed[gone_c] = fills[c].mean(0).astype(out_dtype)
        result.outputs[f"imputed{suffix}"] = (
            write_like_input(  # integer input: imputed values rounded and clipped to its type
                volume.with_array(imputed, imputed=True),
                out_dir / f"{stem}_imputed{suffix}",
                dtype=None if floating else value_dtype,
            )
        )
        result.outputs[f"missing{suffix}"] = write_like_input(
            volume.with_array(gone_c.astype(np.uint8)), out_dir / f"{stem}_missing{suffix}", np.uint8
        )
        if fills[c].shape[0] > 1:
            std_map = np.zeros(raw_c.shape, dtype=np.float32)
            std_map[gone_c] = fills[c].std(0)
            result.outputs[f"std{suffix}"] = write_nifti(
                volume.with_array(std_map), out_dir / f"{stem}_std{suffix}.nii.gz"
            )
    return stem
