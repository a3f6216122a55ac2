"""Condition fidelity: does a conditioned synthetic volume show what was asked for?

Two kinds of conditioned output are recognised in a synthetic folder:

- mask-to-image samples (`sample --labels`): each provenance file names the label map its image was
  made from (`label_map`; with `--deform`, the deformed map is the sample's own `labelsTr/` file).
  A segmenter (a `train-seg` model) segments every image, and its Dice against the requested map,
  per class, is set beside the same segmenter's Dice on the real image of that map (found beside the
  map in its nnU-Net folder, or in the real set), so a segmenter's own errors are not charged to the
  generator.
- inpainting outputs (`inpaint`, one `CASE_inpaint.json` record per case): the seam score of the
  record, whether the voxels outside the region are the source's bit for bit, and for an inserted
  class (`--label`) the segmented new structure against the requested region (Dice, volume ratio,
  centroid distance in mm); for `--healthy`, the share of the region still segmented as lesion.

Every image is segmented in its own voxel grid (`pipelines.segment.prepare_case`), with one seeded
generator per file, so the same image gets the same label map wherever it appears.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ldmtool.errors import LdmError
from ldmtool.runtime import class_index

SegmentFn = Callable[[Path], np.ndarray]  # image file → label map in its grid (the segmenter's values)


@dataclass
class MapSample:
    """One mask-to-image sample: its image, the map it was asked to show and that map's real image."""

    name: str
    image: Path
    request: Path
    names: dict[str, int] | None  # label names of the request file (None: the segmenter's own)
    real_image: Path | None = None
    deformed: bool = False


def _label_names_near(path: Path) -> dict[str, int] | None:
    """The label names of the dataset.json beside a label map (its folder or the one above)."""
    from ldmtool.io.dataset import _parse_labels

    for js in (path.parent / "dataset.json", path.parent.parent / "dataset.json"):
        if js.is_file():
            try:
                raw = json.loads(js.read_text()).get("labels")
            except (OSError, ValueError, AttributeError):
                raise LdmError(f"{js} is not a readable dataset.json") from None
            return None if raw is None else _parse_labels(raw, js)
    return None


def _real_image_of(label_map: Path, real_dir: Path | None) -> Path | None:
    """The real image of a label map: `imagesTr/CASE_0000.nii.gz` beside its `labelsTr/`, else in the real set."""
    from ldmtool.pipelines.segment import output_stem

    stem = output_stem(label_map)
    folders = [label_map.parent.parent / "imagesTr"] if label_map.parent.name == "labelsTr" else []
    if real_dir is not None:
        folders += [Path(real_dir) / "imagesTr", Path(real_dir)]
    for folder in folders:
        for name in (f"{stem}_0000.nii.gz", f"{stem}_0000.nii", f"{stem}.nii.gz", f"{stem}.nii"):
            if (folder / name).is_file() and (folder / name).resolve() != label_map.resolve():
                return folder / name
    return None


def find_map_samples(synthetic_dir: Path, real_dir: Path | None) -> list[MapSample]:
    """The mask-to-image samples of a `sample --labels` folder, from its provenance files; one-line
    errors for a provenance file that names no label map, or a map (or image) that is not there."""
    synthetic_dir = Path(synthetic_dir)
    records = sorted((synthetic_dir / "provenance").glob("*.json"))
    own_names = _label_names_near(synthetic_dir / "labelsTr" / "x")
    samples = []
    for rec in records:
        try:
            prov = json.loads(rec.read_text())
        except (OSError, ValueError):
            raise LdmError(f"{rec} is not a readable provenance file") from None
        if not prov.get("label_map"):
            raise LdmError(
                f"{rec} names no label map: condition fidelity needs samples made with `sample --labels` "
                "(or `inpaint` outputs)"
            )
        image = synthetic_dir / prov.get("files", {}).get("image", f"imagesTr/{rec.stem}_0000.nii.gz")
        if not image.is_file():
            raise LdmError(f"{image}, the image of {rec.name}, is missing")
        source = Path(prov["label_map"])
        if prov.get("deformation"):  # new anatomy: the request is the deformed map written beside the image
            request = synthetic_dir / prov.get("files", {}).get("label", f"labelsTr/{rec.stem}.nii.gz")
            if not request.is_file():
                raise LdmError(f"{request}, the deformed label map of {rec.name}, is missing")
            samples.append(MapSample(rec.stem, image, request, own_names, None, True))
            continue
        if not source.is_file():
            raise LdmError(f"label map {source} named by {rec} is missing: restore it or move the folder back")
        names = _label_names_near(source) or own_names
        samples.append(MapSample(rec.stem, image, source, names, _real_image_of(source, real_dir)))
    return samples


def find_inpaint_records(synthetic_dir: Path) -> list[tuple[Path, dict]]:
    """(record path, record) of every `CASE_inpaint.json` in an `inpaint` output folder."""
    out = []
    for rec in sorted(Path(synthetic_dir).glob("*_inpaint.json")):
        try:
            out.append((rec, json.loads(rec.read_text())))
        except (OSError, ValueError):
            raise LdmError(f"{rec} is not a readable inpaint record") from None
    return out


def segmenter_fn(model_path: Path, device, seed: int) -> tuple[SegmentFn, dict[str, int], dict]:
    """A `SegmentFn` for a `train-seg` model, its label names and a description for the report."""
    import torch

    from ldmtool.data.prepared import slices_to_volume
    from ldmtool.data.preprocess import _reorient
    from ldmtool.models.checkpoint import file_sha256
    from ldmtool.pipelines.segment import prepare_case
    from ldmtool.pipelines.segmenter import Segmenter

    seg = Segmenter.from_pretrained(Path(model_path), device)
    if not seg.label_names:
        raise LdmError(f"{model_path} has no label names; condition fidelity needs a segmenter trained with labels")

    def segment(path: Path) -> np.ndarray:
        case = prepare_case(Path(path), "case", seg)
        probs, _ = seg.predict(case.slices, generator=torch.Generator().manual_seed(seed))
        label = slices_to_volume(class_index(probs, 0).numpy().astype(np.uint8))
        if seg.preprocess.orientation != "none":
            (label,), _ = _reorient([label], case.work_affine, case.src_codes)
        return label

    about = {"path": str(seg.path), "arch": seg.arch, "dims": seg.dims, "sha256": file_sha256(seg.path)}
    return segment, dict(seg.label_names), about


def read_request(sample: MapSample, seg_names: dict[str, int]) -> np.ndarray:
    """The requested label map in the segmenter's label values (by name)."""
    from ldmtool.data.label_maps import remap_labels
    from ldmtool.io.readers import read_volume

    arr = np.rint(np.asarray(read_volume(sample.request).array)).astype(np.int64)
    if sample.names is not None:
        arr = remap_labels(arr, sample.names, seg_names, str(sample.request))
    unknown = sorted(set(np.unique(arr).tolist()) - set(seg_names.values()))
    if unknown:
        raise LdmError(
            f"{sample.request} holds label values {unknown[:5]} the segmenter does not know "
            f"(its labels: {', '.join(f'{n}={v}' for n, v in seg_names.items())})"
        )
    return arr


def _dice(pred: np.ndarray, truth: np.ndarray, seg_names: dict[str, int], where: Path) -> dict[str, float]:
    """Dice of every foreground class of the segmenter (name → value), MONAI via `ldmtool.metrics`."""
    from ldmtool.metrics import dice_per_class

    if pred.shape != truth.shape:
        raise LdmError(f"{where}: the image has shape {pred.shape} but its label map {truth.shape}")
    k = max(seg_names.values()) + 1
    scores = dice_per_class(pred, truth, k)
    return {n: float(scores[v - 1]) for n, v in sorted(seg_names.items(), key=lambda kv: kv[1]) if v > 0}


def _mean_per_class(rows: list[dict[str, float]]) -> dict | None:
    """{'dice': per-class mean, 'dice_mean': mean over classes} over rows of per-class Dice."""
    if not rows:
        return None
    per = {c: float(np.nanmean([r[c] for r in rows])) for c in rows[0]}
    return {"dice": per, "dice_mean": float(np.nanmean(list(per.values()))), "n": len(rows)}


def mask_to_image_fidelity(samples: list[MapSample], segment: SegmentFn, seg_names: dict[str, int], step=None) -> dict:
    """Segmenter Dice of every sample against its requested map; the same segmenter's Dice on the
    real images of those maps (each real image segmented once); means per class."""
    real_scores: dict[Path, dict[str, float]] = {}
    per_sample = []
    for s in samples:
        truth = read_request(s, seg_names)
        dice = _dice(segment(s.image), truth, seg_names, s.image)
        if s.real_image is not None and s.request not in real_scores:
            real_scores[s.request] = _dice(segment(s.real_image), truth, seg_names, s.real_image)
        real = real_scores.get(s.request)
        per_sample.append(
            {
                "sample": s.name,
                "label_map": str(s.request),
                "deformed": s.deformed,
                "dice": dice,
                "dice_mean": float(np.nanmean(list(dice.values()))),
                "real_image": None if s.real_image is None else str(s.real_image),
                "real_dice_mean": None if real is None else float(np.nanmean(list(real.values()))),
            }
        )
        if step is not None:
            step()
    paired = [p["dice"] for p, s in zip(per_sample, samples) if s.request in real_scores]
    synthetic, real, same_maps = (
        _mean_per_class([p["dice"] for p in per_sample]),
        _mean_per_class(list(real_scores.values())),
        _mean_per_class(paired),
    )
    gap = None if real is None else same_maps["dice_mean"] - real["dice_mean"]
    return {
        "n_samples": len(samples),
        "n_maps_with_real_image": len(real_scores),
        "synthetic": synthetic,
        "real": real,
        "synthetic_on_maps_with_real_image": same_maps,
        "gap_dice_mean": gap,
        "per_sample": per_sample,
    }


def _new_structure(pred: np.ndarray, value: int, region: np.ndarray, before: np.ndarray | None) -> np.ndarray:
    """Voxels segmented as `value` in connected components that reach the region (grown by two
    voxels), less those that were `value` in the input's map already."""
    comps, _ = ndi.label(pred == value)
    touching = np.unique(comps[ndi.binary_dilation(region, iterations=2)])
    new = np.isin(comps, touching[touching > 0])
    return new & ~(before == value) if before is not None else new


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.asarray(affine)[:3, :3] @ np.argwhere(mask).mean(axis=0)


def _read_before(record: dict, shape, seg_names: dict[str, int]) -> np.ndarray | None:
    """The input's label map (the record's `labels`) in the segmenter's values, when it is still there."""
    from ldmtool.data.label_maps import remap_labels
    from ldmtool.io.readers import read_volume

    path = record.get("labels")
    if not path or not Path(path).is_file():
        return None
    arr = np.rint(np.asarray(read_volume(Path(path)).array)).astype(np.int64)
    if arr.shape != tuple(shape):
        return None
    names = _label_names_near(Path(path))
    return remap_labels(arr, names, seg_names, path) if names else arr


def inpaint_case(rec_path: Path, record: dict, segment: SegmentFn, seg_names: dict[str, int]) -> dict:
    """The measures of one inpainting record (see the module docstring)."""
    from ldmtool.data.lesions import lesion_class
    from ldmtool.io.readers import read_volume

    folder, outs = rec_path.parent, record.get("outputs", {})
    paths = {k: folder / outs[k] for k in ("inpainted", "region") if k in outs}
    for k in ("inpainted", "region"):
        if k not in paths or not paths[k].is_file():
            raise LdmError(f"{rec_path} names no {k} volume, or it is missing; condition fidelity needs it")
    vol = read_volume(paths["inpainted"])
    region = np.asarray(read_volume(paths["region"]).array) != 0
    out = {"case": rec_path.name[: -len("_inpaint.json")], "method": record.get("method"), "seam": record.get("seam")}
    out["label"], out["healthy"] = record.get("label"), bool(record.get("healthy"))
    source = Path(record.get("source", ""))
    out["outside_exact"] = None
    if source.exists():
        src = np.asarray(read_volume(source).array)
        if src.shape == region.shape:
            out["outside_exact"] = bool(np.array_equal(src[~region], np.asarray(vol.array)[~region]))
    pred = segment(paths["inpainted"])
    if out["label"]:
        if out["label"] not in seg_names:
            raise LdmError(
                f"{rec_path}: class {out['label']!r} is not one of the segmenter's labels ({', '.join(seg_names)})"
            )
        new = _new_structure(pred, seg_names[out["label"]], region, _read_before(record, region.shape, seg_names))
        inter, n_new, n_reg = int((new & region).sum()), int(new.sum()), int(region.sum())
        out.update(
            dice=2 * inter / (n_new + n_reg),
            volume_ratio=n_new / n_reg,
            inside_share=inter / n_new if n_new else None,
            centroid_error_mm=float(np.linalg.norm(_centroid_mm(new, vol.affine) - _centroid_mm(region, vol.affine)))
            if n_new
            else None,
        )
    elif out["healthy"]:
        out["lesion_left_share"] = float((pred[region] == lesion_class(seg_names)).mean())
    return out


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def inpaint_fidelity(
    records: list[tuple[Path, dict]], segment: SegmentFn, seg_names: dict[str, int], step=None
) -> dict:
    """Per-case inpainting measures and their means."""
    cases = []
    for path, rec in records:
        cases.append(inpaint_case(path, rec, segment, seg_names))
        if step is not None:
            step()
    seams = [c["seam"] for c in cases if c.get("seam")]
    inserted = [c for c in cases if c["label"]]
    return {
        "n_cases": len(cases),
        "methods": sorted({str(c["method"]) for c in cases}),
        "outside_exact": sum(bool(c["outside_exact"]) for c in cases),
        "outside_checked": sum(c["outside_exact"] is not None for c in cases),
        "seam_border_gradient_mean": _mean(s["border_gradient"] for s in seams),
        "seam_tissue_p95_mean": _mean(s["tissue_gradient_p95"] for s in seams),
        "seam_within": sum(bool(s["within"]) for s in seams),
        "inserted": len(inserted),
        "dice_mean": _mean(c["dice"] for c in inserted),
        "volume_ratio_mean": _mean(c["volume_ratio"] for c in inserted),
        "inside_share_mean": _mean(c["inside_share"] for c in inserted),
        "centroid_error_mm_mean": _mean(c["centroid_error_mm"] for c in inserted),
        "missed": sum(c["volume_ratio"] == 0 for c in inserted),
        "cases": cases,
    }


def find_conditioned(synthetic_dir: Path, real_dir: Path | None) -> tuple[list[MapSample], list[tuple[Path, dict]]]:
    """The mask-to-image samples and inpainting records of a synthetic folder; a one-line error when
    it holds neither (checked before any other criterion is computed)."""
    samples = find_map_samples(synthetic_dir, real_dir) if (Path(synthetic_dir) / "provenance").is_dir() else []
    records = find_inpaint_records(synthetic_dir)
    if not samples and not records:
        raise LdmError(
            f"{synthetic_dir} holds no conditioned outputs: condition fidelity needs a folder written by "
            "`sample --labels` (provenance naming each label map) or by `inpaint` (CASE_inpaint.json records)"
        )
    return samples, records


def condition_fidelity(
    synthetic_dir: Path,
    real_dir: Path | None,
    segment: SegmentFn,
    seg_names: dict[str, int],
    stage=None,
    found: tuple[list[MapSample], list[tuple[Path, dict]]] | None = None,
) -> dict:
    """The `condition_fidelity` section of the report for one synthetic folder.

    Args:
        segment, seg_names: the segmenter (`segmenter_fn`).
        stage: `stage(name, total)` → step callback (a progress bar), or None.
        found: what `find_conditioned` returned for the folder (found again when None).
    """
    samples, records = found if found is not None else find_conditioned(synthetic_dir, real_dir)
    out: dict = {
        "classes": [n for n, v in sorted(seg_names.items(), key=lambda kv: kv[1]) if v > 0],
        "definition": "mask-to-image: Dice (MONAI, per class) of the segmenter's label map of each synthetic "
        "image against the map it was asked to show, beside the same segmenter's Dice on the real images of "
        "those maps; inpainting: the record's seam score, outside voxels bit-exact, and for an inserted class "
        "the segmented new structure (components reaching the region) against the region: Dice, volume ratio, "
        "centroid distance (mm)",
    }
    if samples:
        step = stage("condition fidelity (mask-to-image)", len(samples)) if stage else None
        out["mask_to_image"] = mask_to_image_fidelity(samples, segment, seg_names, step)
    if records:
        step = stage("condition fidelity (inpainting)", len(records)) if stage else None
        out["inpainting"] = inpaint_fidelity(records, segment, seg_names, step)
    return out
