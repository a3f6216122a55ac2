"""`ldmtool inpaint`: regenerate a region of a volume, everything outside it bit for bit the input's.

The volume (and its label map) is brought into the models' space as `impute` does, the region
through the same geometry. Two ways to fill it:

- `repaint`: the volume is encoded; the latent voxels over the region (grown by `--margin` latent
  voxels, so that what is drawn there is not pinned to the input at the region's border) are
  sampled while, before every step, the others are replaced by the input's latent noised to that
  step's level (RePaint, Lugmayr et al. 2022, in latent space: `guidance.Replacement`).
- `guidance`: `impute`'s latent self-guidance with the region as the missing voxels.

A model trained with `--condition-on labels` is conditioned on the target label map: the input's
map with the region set to `--label NAME` (a lesion inserted where the region is) or, with
`--healthy`, to the nearest labels around it that are neither region nor lesion (a lesion removed).
The decoded image is mapped back to the input's grid and written into the region only; the label
map written beside it is that target map (for other models: the input's map with the region
labelled as the autoencoder's decoder labels the new content). With `--label-from painted` only the
region's voxels that the decoder reads as the `--label` class become it, the others keeping their
class: the map then says where the model drew the lesion, which may be less than the region.

With `--lesion-from` the region is not given but made: another case's lesions moved into this head
(`ldmtool.data.lesions.transplant`), their own voxels the content the region starts from. With
`--keep-detail` the region gets the start plus the model's change, not the decoded image itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from ldmtool import __version__
from ldmtool.config import InpaintConfig
from ldmtool.data.label_maps import label_to_model_space
from ldmtool.data.lesions import ATTRIBUTES, lesion_attributes, lesion_class
from ldmtool.data.prepared import slices_to_volume, volume_to_slices
from ldmtool.data.preprocess import denormalise
from ldmtool.diffusion.pipeline import decode_latents
from ldmtool.errors import LdmError
from ldmtool.io import Volume
from ldmtool.models.checkpoint import file_sha256
from ldmtool.pipelines.impute import to_input_grid, to_model_space
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline
from ldmtool.pipelines.outdir import check_output_dir, clear_temps, output_dir, write_run_record

# the InpaintConfig settings a run record names
_SETTINGS = (
    "method",
    "steps",
    "sampler",
    "eta",
    "resample",
    "guidance",
    "self_guidance",
    "margin",
    "grow",
    "label_from",
    "strength",
    "keep_detail",
    "lesion_margin",
)


@dataclass
class InpaintResult:
    source: str
    outputs: dict[str, Path] = field(default_factory=dict)
    region_voxels: int = 0
    total_voxels: int = 0
    seconds: float = 0.0
    seam: dict[str, float] = field(default_factory=dict)
    conditions: dict[str, float | str] = field(default_factory=dict)


def read_region(path: Path, volume: Volume) -> np.ndarray:
    """The region mask (bool, the volume's grid) of file `path`; one-line errors for a mask of another
    shape or geometry, one that is empty, or one that covers the whole volume."""
    from ldmtool.io.dataset import read_aligned

    mask = np.asarray(read_aligned(Path(path), volume, f"--region {path}").array)
    if not np.isfinite(mask).all():
        raise LdmError(f"--region {path} holds NaN or infinite values; it must be 0 (keep) and 1 (regenerate)")
    region = mask != 0
    if not region.any():
        raise LdmError(f"--region {path} is empty: mark the voxels to regenerate with 1")
    if region.all():
        raise LdmError(f"--region {path} covers the whole volume: nothing is kept (use `ldmtool sample`)")
    return region


def target_labels(
    labels: np.ndarray, region: np.ndarray, names: dict[str, int], label: str | None, healthy: bool
) -> np.ndarray:
    """The label map after inpainting: `labels` with the region set to class `label`, or (`healthy`)
    to the nearest label outside the region that is not the lesion class (unchanged otherwise)."""
    out = labels.copy()
    if label is not None:
        if label not in names:
            raise LdmError(f"--label {label!r} is not one of the model's labels ({', '.join(names)})")
        out[region] = names[label]
    elif healthy:
        lesion = lesion_class(names)
        unusable = region | (labels == lesion)
        if unusable.all():
            raise LdmError("--healthy needs normal tissue outside the region; the label map holds none")
        _, idx = ndi.distance_transform_edt(unusable, return_indices=True)
        out[region] = labels[tuple(i[region] for i in idx)]
    return out


def seam_score(image: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Gradient magnitude across the region's border against that inside real tissue.

    Returns the mean gradient magnitude (per voxel) over the border shell (region voxels touching
    the outside and outside voxels touching the region), and the median and 95th percentile of the
    gradient magnitude in real tissue (voxels more than three voxels from the region, brighter than
    10 % of their 1st-99th percentile range); `within`: the border value is at most that 95th
    percentile (a seamless fill)."""
    keep = [n for n in np.shape(image) if n > 1]  # a 2D image (one slice): its own two axes
    img = np.asarray(image, dtype=np.float64).reshape(keep)
    region = np.asarray(region, dtype=bool).reshape(keep)
    grad = np.sqrt(sum(g**2 for g in np.gradient(img)))
    border = (region & ~ndi.binary_erosion(region)) | (ndi.binary_dilation(region) & ~region)
    away = ~ndi.binary_dilation(region, iterations=3)
    lo, hi = np.percentile(img[away], [1, 99]) if away.any() else (0.0, 1.0)
    tissue = away & (img > lo + 0.1 * (hi - lo))
    ref = grad[tissue] if tissue.any() else grad[away]
    p50, p95 = (float(v) for v in np.percentile(ref, [50, 95])) if ref.size else (0.0, 0.0)
    seam = float(grad[border].mean())
    return {"border_gradient": seam, "tissue_gradient_p50": p50, "tissue_gradient_p95": p95, "within": seam <= p95}


def inpaint_file(
    source: Path,
    ae_path: Path,
    ldm_path: Path,
    out_dir: Path,
    *,
    region: Path | None = None,
    labels: Path | None = None,
    label: str | None = None,
    healthy: bool = False,
    conditions: dict[str, float | str] | None = None,
    cfg: InpaintConfig | None = None,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    console=None,
    overwrite: bool = False,
    init: Path | None = None,
    lesion_from: Path | None = None,
    lesion_labels: Path | None = None,
    lesion_within: Path | None = None,
) -> InpaintResult:
    """Regenerate `region` of one NIfTI file or DICOM series; write `<stem>_inpainted.nii.gz` (the
    input's geometry and value type, bit-exact outside the region), `<stem>_region.nii.gz`, the label
    map `<stem>_inpainted_label.nii.gz` (when there is one) and the run record `<stem>_inpaint.json`.

    Args:
        labels: the volume's label map (same grid); without it, one is estimated by the autoencoder.
        label: the class the region becomes (a lesion inserted); `healthy`: a lesion removed.
        conditions: attribute conditions (`--condition`); lesion attributes default to the region's.
        init: a volume in the input's grid (a lesion drawn or pasted into it, say) whose content
            inside the region starts the regeneration (with `cfg.strength` < 1, SDEdit); without it
            the input's own content does.
        lesion_from, lesion_labels: instead of `region`, another case (image and label map, the same
            voxel size) whose `label` lesions are moved whole to random places inside this volume's
            head (`labels`; at least `cfg.lesion_margin` mm from its edge, within the mask
            `lesion_within` when given): the region is where they land, and their own voxels (scaled
            by the two heads' median intensities) are the content the region starts from.
    """
    cfg = cfg or InpaintConfig()
    if label is not None and healthy:
        raise LdmError("--label and --healthy exclude each other: insert a class, or fill with normal tissue")
    if cfg.label_from == "painted" and (label is None or cfg.method != "repaint"):
        raise LdmError("--label-from painted needs --label NAME and --method repaint (it reads the decoded labels)")
    if init is not None and not cfg.strength < 1:
        raise LdmError("--init needs --strength below 1: from pure noise (strength 1) nothing of it would be kept")
    if (region is None) == (lesion_from is None):
        raise LdmError("give --region MASK (the voxels to regenerate) or --lesion-from CASE (lesions to move in), one")
    if lesion_from is not None:
        if lesion_labels is None or label is None or labels is None:
            raise LdmError("--lesion-from needs --lesion-labels (its label map), --label NAME and --labels (this map)")
        if init is not None:
            raise LdmError("--lesion-from and --init exclude each other: the moved lesions' voxels are the start")
    elif lesion_labels is not None or lesion_within is not None:
        raise LdmError("--lesion-labels and --lesion-within go with --lesion-from")
    check_output_dir(out_dir, "inpaint", overwrite)
    donor = None if lesion_from is None else (Path(lesion_from), Path(lesion_labels), lesion_within)
    with output_dir(Path(out_dir)):
        paths = (Path(source), Path(ae_path), Path(ldm_path), Path(out_dir), region, labels)
        return _inpaint(*paths, label, healthy, conditions, cfg, seed, device, console, init, donor)


def _inpaint(
    source,
    ae_path,
    ldm_path,
    out_dir,
    region_path,
    labels_path,
    label,
    healthy,
    conditions,
    cfg,
    seed,
    device,
    console,
    init_path=None,
    donor=None,
):
    """The body of `inpaint_file` (its arguments; `donor`: (lesion_from, lesion_labels,
    lesion_within) or None)."""
    from ldmtool.io.dataset import Case, case_channel_files, read_case

    t0 = time.perf_counter()
    pipe = LatentDiffusionPipeline.from_pretrained(ae_path, ldm_path, device=device)
    files = case_channel_files(Path(source), pipe.channel_names)  # several channels: CASE_0000, _0001, ... together
    volume, _ = read_case(Case(Path(source).name, files[0], more_channels=tuple(files[1:])))
    raw = np.asarray(volume.array)  # (I, J, K) or (I, J, K, C)
    if (label is not None or healthy) and not pipe.label_names:
        raise LdmError("--label and --healthy need a model trained with label maps (labelsTr/ + dataset.json)")
    if donor is not None:
        region, init_values, moved = _moved_lesions(donor, volume, raw, labels_path, pipe, label, cfg, seed)
    else:  # (I, J, K): the same region in every channel
        region, init_values, moved = _given_region(region_path, init_path, volume)
    image, miss, model_affine, irange = to_model_space(volume, region, pipe.ae_config)
    if not miss.any():
        where = "the moved lesions" if donor is not None else f"--region {region_path}"
        raise LdmError(f"{where} lies outside the model's field of view: nothing of it can be regenerated")
    current, target, model_labels, drawn = _target(
        pipe, volume, region, image, model_affine, labels_path, label, healthy, cfg.grow
    )
    if label is not None and not pipe.ldm_config.label_channels and not pipe.ldm_config.attributes and console:
        console.print(
            f"[yellow]warning:[/] {pipe.ldm_path} takes no label map or lesion attributes: the region is "
            f"labelled {label}, but nothing tells the model to draw one there",
            highlight=False,
        )
    conditions = _conditions(pipe, conditions, model_labels, model_affine)
    start = None
    if cfg.strength < 1 or cfg.keep_detail:
        start = _start_image(init_values, volume, raw, region, pipe, irange)
    new_image, new_labels = _fill(pipe, cfg, image, miss, model_labels, drawn, conditions, seed, start)
    fills = _region_values(pipe, new_image, irange, model_affine, region, volume, raw)
    painted = label is not None and cfg.label_from == "painted"
    if (
        new_labels is not None
        and target is not None
        and (painted or not (label or healthy or pipe.ldm_config.label_channels))
    ):
        read_back = to_input_grid(new_labels, model_affine, region, volume.affine, order=0)[0].astype(target.dtype)
        if painted:  # the class where the decoder reads it, else the input's class
            value = pipe.label_names[label]
            read_back = np.where(read_back == value, value, current[region])
        target[region] = read_back
    result = InpaintResult(str(source), region_voxels=int(region.sum()), total_voxels=int(region.size))
    result.conditions = conditions or {}
    stem = _write_outputs(result, volume, raw, region, fills, target, out_dir, Path(source), pipe.channel_names)
    result.seconds = time.perf_counter() - t0
    prov = {
        "source": str(source),
        "region": None if donor is not None else str(region_path),
        **moved,
        "labels": None if labels_path is None else str(labels_path),
        "label": label,
        "healthy": healthy,
        "init": None if init_path is None else str(init_path),
        "conditions": result.conditions,
        "outputs": {k: v.name for k, v in result.outputs.items()},
        "region_voxels": result.region_voxels,
        "total_voxels": result.total_voxels,
        "seam": result.seam,
        "label_voxels": None
        if label is None or target is None
        else int((target[region] == pipe.label_names[label]).sum()),
        **{k: getattr(cfg, k) for k in _SETTINGS},
        "seed": seed,
        "intensity_range": list(irange),
        "seconds": result.seconds,
        "device": str(device),
        "ae": str(ae_path),
        "ldm": str(ldm_path),
        "autoencoder_sha256": pipe.ae_sha256,
        "ldm_sha256": file_sha256(pipe.ldm_path),
        "ldmtool_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_run_record(out_dir, f"inpaint-{stem}", json.dumps(prov, indent=2), f"{stem}_inpaint.json")
    result.outputs["provenance"] = out_dir / f"{stem}_inpaint.json"
    return result


def _given_region(region_path, init_path, volume: Volume) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """--region's mask, --init's voxels (the input's grid, checked finite inside the region) or None,
    and no entries for the run record (as `_moved_lesions` returns them)."""
    from ldmtool.io.dataset import read_aligned

    region = read_region(region_path, volume)
    if init_path is None:
        return region, None, {}
    values = np.asarray(read_aligned(Path(init_path), volume, f"--init {init_path}").array)
    if not np.isfinite(values[region]).all():
        raise LdmError(f"--init {init_path} has NaN or infinite values inside the region")
    return region, values, {}


def _moved_lesions(donor, volume: Volume, raw: np.ndarray, labels_path, pipe, label: str, cfg, seed: int):
    """--lesion-from: (the region where the donor's lesions land, the input with their voxels pasted
    there, the run record's entries); one-line errors for a donor of another voxel size, one without
    that class, or lesions that fit nowhere."""
    from ldmtool.data.lesions import head_median, paste_lesions, transplant
    from ldmtool.io.dataset import read_aligned, read_volume

    path, labels_of_donor, within = donor
    if raw.ndim != 3:
        raise LdmError("--lesion-from takes a volume of one channel; this model has several")
    other = read_volume(path)
    if np.asarray(other.array).ndim != 3:
        raise LdmError(f"--lesion-from {path} has several channels; give one")
    zooms, theirs = volume.spacing, other.spacing
    if not np.allclose(zooms, theirs, rtol=0.01):
        raise LdmError(
            f"--lesion-from {path} has voxels of {'×'.join(f'{v:.3g}' for v in theirs)} mm, the input "
            f"{'×'.join(f'{v:.3g}' for v in zooms)} mm: resample one to the other's voxel size first"
        )
    if label not in pipe.label_names:
        raise LdmError(f"--label {label!r} is not one of the model's labels ({', '.join(pipe.label_names)})")
    value = pipe.label_names[label]
    donor_labels = np.asarray(read_aligned(labels_of_donor, other, f"--lesion-labels {labels_of_donor}").array)
    n_lesions = int(ndi.label(donor_labels == value)[1])
    if not n_lesions:
        raise LdmError(f"--lesion-labels {labels_of_donor} has no voxel of class {label} (value {value})")
    host = np.asarray(read_aligned(Path(labels_path), volume, f"--labels {labels_path}").array)
    allowed = None
    if within is not None:
        allowed = np.asarray(read_aligned(Path(within), volume, f"--lesion-within {within}").array) > 0
    rng = np.random.default_rng(seed)
    region, moves = transplant(host, donor_labels, value, zooms, rng, cfg.lesion_margin, allowed)
    if not moves:
        raise LdmError(
            f"none of the {n_lesions} {label} lesions of {path} fits inside the head at least "
            f"{cfg.lesion_margin:g} mm from its edge" + (f" and within {within}" if within is not None else "")
        )
    donor_raw = np.asarray(other.array, dtype=np.float32)
    ratio = head_median(raw, host, value) / head_median(donor_raw, donor_labels, value)
    record = {
        "lesion_from": str(path),
        "lesion_labels": str(labels_of_donor),
        "lesion_within": None if within is None else str(within),
        "lesions_moved": [{"from": [s.start for s in src], "to": [s.start for s in dst]} for src, dst, _ in moves],
        "lesions_left_out": n_lesions - len(moves),
        "lesion_intensity_ratio": ratio,
    }
    return region, paste_lesions(raw, donor_raw, moves, ratio), record


def _start_image(
    values: np.ndarray | None, volume: Volume, raw: np.ndarray, region: np.ndarray, pipe, irange
) -> np.ndarray:
    """The image the region starts from with --strength below 1 (and that --keep-detail adds the
    model's change to), in model space and normalised as the input is (`irange`): the input as it is
    (its region's content too, which the input's model-space image has blanked), or with the region's
    voxels taken from `values` (--init's, or the input with --lesion-from's lesions pasted in)."""
    from ldmtool.data.preprocess import _normalise, denormalise

    if raw.ndim != 3:
        raise LdmError("--strength below 1 and --keep-detail take a volume of one channel; this model has several")
    start = raw.astype(np.float32, copy=True)
    if values is not None:
        start[region] = values[region]
    pre = pipe.preprocess
    image, _, _, own = to_model_space(volume.with_array(start), np.zeros(region.shape, bool), pipe.ae_config)
    return _normalise(denormalise(image, own, pre), irange, pre)


def _region_values(pipe, new_image, irange, model_affine, region, volume: Volume, raw: np.ndarray) -> np.ndarray:
    """The regenerated image (model space, normalised) at the region's voxels of the input's grid,
    in its source intensities: (region voxels,), or (region voxels, C), each channel in its own."""
    if new_image.ndim == 3:
        return to_input_grid(denormalise(new_image, irange, pipe.preprocess), model_affine, region, volume.affine)[0]
    source_scale = pipe.to_source_scale(new_image, irange)
    return np.stack(
        [to_input_grid(source_scale[..., c], model_affine, region, volume.affine)[0] for c in range(raw.shape[3])],
        axis=-1,
    )


def _target(pipe, volume: Volume, region, image, model_affine, labels_path, label, healthy, grow: int = 0):
    """(the input's label map and the target map on the input's grid, the target in model space
    (D, H, W), the map the model is asked to draw in model space), all None for an image-only
    model: the target is the given (or estimated) map with the region set as `target_labels` says;
    the map to draw is the same, but with `label` over the region grown by `grow` voxels."""
    from ldmtool.io.dataset import read_aligned

    if not pipe.label_names:
        return None, None, None, None
    if labels_path is not None:
        current = np.asarray(read_aligned(Path(labels_path), volume, f"--labels {labels_path}").array)
    else:
        current = _estimate_labels(pipe, image, model_affine, volume)
    current = current.astype(np.uint8)
    target = target_labels(current, region, pipe.label_names, label, healthy)
    shape = tuple(int(v) for v in pipe.ae_config.volume_shape)
    model = volume_to_slices(label_to_model_space(volume.with_array(target), pipe.preprocess, shape)[0])
    if not grow or label is None:
        return current, target, model, model
    grown = target_labels(current, ndi.binary_dilation(region, iterations=grow), pipe.label_names, label, healthy)
    drawn = volume_to_slices(label_to_model_space(volume.with_array(grown), pipe.preprocess, shape)[0])
    return current, target, model, drawn


def _estimate_labels(pipe: LatentDiffusionPipeline, image: np.ndarray, model_affine, volume: Volume) -> np.ndarray:
    """The volume's label map as the autoencoder sees it (encoded with an empty map, decoded), on its grid."""
    lab = pipe.estimate_labels(torch.from_numpy(image))  # image (D, H, W) or (D, C, H, W)
    every = np.ones(volume.shape[:3], dtype=bool)
    values, _ = to_input_grid(slices_to_volume(lab.numpy()), model_affine, every, volume.affine, order=0)
    return values.reshape(volume.shape[:3]).astype(np.uint8)


def _conditions(pipe, conditions, model_labels, model_affine) -> dict[str, float | str] | None:
    """The requested conditions; lesion attributes the model takes and none was given come from the
    target label map (the region's size and place)."""
    names = pipe.ldm_config.attributes
    lesion_names = [n for n in ATTRIBUTES if n in names]
    conditions = dict(conditions or {})
    if not lesion_names or model_labels is None or any(n in conditions for n in lesion_names):
        return conditions or None
    spacing = tuple(np.linalg.norm(np.asarray(model_affine)[:3, :3], axis=0))
    attrs = lesion_attributes(slices_to_volume(model_labels), lesion_class(pipe.label_names), spacing)
    conditions.update({n: float(v) for n, v in zip(ATTRIBUTES, attrs) if n in lesion_names})
    return conditions


def regeneration_mask(region: torch.Tensor, downsample: int, margin: int) -> torch.Tensor:
    """The latent voxels `--method repaint` samples: (D, h, w) float, 1 over every latent voxel that
    covers part of `region` ((D, H, W) bool, model space, slice axis first), grown by `margin`
    latent voxels along every axis (in-plane and across slices)."""
    regen = torch.nn.functional.max_pool2d(region.float()[:, None], downsample)[:, 0]
    if margin:
        k = 2 * margin + 1
        regen = torch.nn.functional.max_pool3d(regen[None, None], k, stride=1, padding=margin)[0, 0]
    return regen


def _fill(
    pipe, cfg: InpaintConfig, image, miss, model_labels, drawn, conditions, seed, start=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(regenerated image (I, J, K), or (I, J, K, C) of several channels, normalised; decoded label
    map or None) in model space; `drawn`: the label map the model is conditioned on; `start`: the
    model-space image whose latent the region starts from when `cfg.strength` < 1, and to which
    `cfg.keep_detail` adds the model's change."""
    img, gone = torch.from_numpy(image), torch.from_numpy(miss)
    cond = None
    if pipe.ldm_config.label_channels and drawn is not None:
        cond = pipe.label_condition(torch.from_numpy(drawn)[None])
    enc_labels = None if model_labels is None or not pipe.label_names else torch.from_numpy(model_labels)
    begin = None if start is None else pipe.encode(torch.from_numpy(start), enc_labels)
    if cfg.method == "guidance":
        if conditions:
            raise LdmError("--method guidance takes no --condition (it samples unconditionally); use --method repaint")
        out = pipe.impute(img, gone, samples=1, steps=cfg.steps, guidance=cfg.self_guidance, sampler=cfg.sampler,
                          eta=cfg.eta, seed=seed, labels=cond)  # fmt: skip
        new, lab = slices_to_volume(out[0].numpy()), None
    else:
        known = pipe.encode(img, enc_labels)  # (L, D, h, w)
        where = gone if gone.ndim == 3 else gone.any(1)  # (D, H, W): the region of any channel
        regen = regeneration_mask(where, pipe.ae.cfg.downsample, cfg.margin)
        z = pipe.inpaint_latents(known, 1 - regen, seed=seed, sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta,
                                 conditions=conditions, guidance=cfg.guidance, labels=cond, resample=cfg.resample,
                                 start_from=begin if cfg.strength < 1 else None, strength=cfg.strength)  # fmt: skip
        new, lab = _decoded(pipe, z)
    if cfg.keep_detail:  # the start plus the model's change: the decoder's own error on the start cancels
        new = slices_to_volume(start) + (new - _decoded(pipe, begin)[0])
    return new, lab


def _decoded(pipe, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """A standardised latent volume (L, D, h, w) decoded: (image (I, J, K) normalised, label map or None),
    model space."""
    with torch.inference_mode():
        dec, lab = decode_latents(pipe.ae, z.float() * pipe.latent_std + pipe.latent_mean, labels_only=True)
    return slices_to_volume(dec[0].float().numpy()), None if lab is None else slices_to_volume(lab[0].numpy())


def _write_outputs(
    result, volume: Volume, raw, region, fills, target, out_dir: Path, source: Path, channel_names: list[str]
) -> str:
    """`<stem>_inpainted` (input's value type: outside the region the input's values, untouched;
    several channels: `<stem>_inpainted_0000`, `_0001`, ... as nnU-Net names a case's channels),
    `<stem>_region`, `<stem>_inpainted_label`, PNGs for a 2D picture as it is (`write_like_input`);
    the seam score (several channels: per channel name, and "within" when every channel's is),
    computed before anything is written; returns the stem."""
    from ldmtool.io.image2d import write_like_input
    from ldmtool.pipelines.segment import output_stem

    value_dtype = np.dtype(volume.meta.get("value_dtype", raw.dtype))
    floating = not np.issubdtype(value_dtype, np.integer)
    out_dtype = (
        (raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.dtype(np.float32)) if floating else np.float64
    )
    stem = output_stem(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_temps(out_dir, f"{stem}_*")
    out = raw.astype(out_dtype, copy=True)
    out[region] = fills.astype(out_dtype)
    channels = 1 if out.ndim == 3 else out.shape[3]
    parts = [out] if channels == 1 else [out[..., c] for c in range(channels)]
    seams = {}
    for c, out_c in enumerate(parts):
        written = np.asarray(out_c if floating else np.clip(np.rint(out_c), *_limits(value_dtype)), dtype=np.float64)
        seams[channel_names[c] if channels > 1 else ""] = seam_score(written, region)
    for c, out_c in enumerate(parts):
        suffix = f"_{c:04d}" if channels > 1 else ""
        result.outputs[f"inpainted{suffix}"] = write_like_input(
            volume.with_array(out_c, inpainted=True),
            out_dir / f"{stem}_inpainted{suffix}",
            dtype=None if floating else value_dtype,
        )
    result.outputs["region"] = write_like_input(
        volume.with_array(region.astype(np.uint8)), out_dir / f"{stem}_region", np.uint8
    )
    if target is not None:
        result.outputs["label"] = write_like_input(
            volume.with_array(target.astype(np.uint8)), out_dir / f"{stem}_inpainted_label", np.uint8
        )
    result.seam = seams[""] if channels == 1 else {**seams, "within": all(v["within"] for v in seams.values())}
    return stem


def _limits(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return info.min, info.max
