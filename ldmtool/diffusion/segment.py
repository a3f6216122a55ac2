"""`ldmtool segment`: label maps (and uncertainty) for NIfTI/DICOM volumes in their own geometry.

Each input is brought to the model's orientation (a permutation/flip of axes, exactly invertible)
and intensity scale, segmented in its own voxel grid (padded to the network's size multiple, then
cropped back), and the result is put back into the input's axes, so the label map has the input's
exact shape and affine. DICOM inputs give NIfTI outputs with the series' geometry and a DICOM SEG
that references the source images (ldmtool/io/dicom_seg.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel.orientations as nio
import numpy as np
import torch

from ldmtool.config import SegModelConfig, from_dict
from ldmtool.data.prepared import slices_to_volume, volume_to_slices
from ldmtool.data.preprocess import PreprocessConfig, _intensity_range, _normalise, _reorient
from ldmtool.errors import LdmError
from ldmtool.io import write_nifti
from ldmtool.io.atomic import atomic_write_text
from ldmtool.io.dicom import is_dicom_file
from ldmtool.io.nifti import is_nifti_path
from ldmtool.io.readers import read_volume
from ldmtool.io.volume import Volume
from ldmtool.models.checkpoint import file_sha256, resolve_checkpoint
from ldmtool.pipelines.segmenter import DEFAULT_STEPS, predict_volume
from ldmtool.models.loaders import load_segmenter


@dataclass
class SegmentedCase:
    source: str
    label_path: Path
    shape: tuple[int, ...]
    seconds: float
    voxels_per_class: dict[str, int]
    prob_path: Path | None = None
    uncertainty_path: Path | None = None
    dicom_seg_path: Path | None = None
    dicom_seg_error: str | None = None


@dataclass
class _Prepared:
    """An input read, put into the model's axes and intensity scale, waiting for the network."""

    path: Path
    stem: str
    volume: Volume
    arr: np.ndarray
    work_affine: np.ndarray
    src_codes: str
    slices: torch.Tensor  # (K, I, J)
    seconds: float


def _holds_dicom(folder: Path) -> bool:
    """DICOM files directly in `folder` (not in sub-folders, unlike the data-set loader's check:
    here a folder of series sub-folders is several inputs, not one)."""
    return any(is_dicom_file(p) for p in sorted(folder.iterdir())[:50] if p.is_file())


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files, DICOM series folders, and folders of NIfTI files (also their imagesTr/) → inputs."""
    out: list[Path] = []
    for path in inputs:
        path = Path(path)
        if not path.exists():
            raise LdmError(f"{path} does not exist")
        if path.is_file():
            out.append(path)
        elif _holds_dicom(path):
            out.append(path)
        else:
            folder = path / "imagesTr" if (path / "imagesTr").is_dir() else path
            found = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti_path(p))
            found += sorted(p for p in folder.iterdir() if p.is_dir() and _holds_dicom(p))
            if not found:
                raise LdmError(f"{path} holds no NIfTI files or DICOM series to segment")
            out.extend(found)
    return out


def output_stem(path: Path) -> str:
    """case_0000.nii.gz → case; a DICOM folder → its name."""
    name = path.name
    for end in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(end):
            name = name[: -len(end)]
            break
    return name[:-5] if name.endswith("_0000") else name


def _write_4d(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """(I, J, K, C) class probabilities as one 4D NIfTI (the input's affine), atomically."""
    import nibabel as nib

    from ldmtool.io.atomic import atomic_path

    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def segment_files(
    inputs: list[Path],
    model_path: Path,
    out_dir: Path,
    *,
    steps: int = DEFAULT_STEPS,
    samples: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    precision: str = "auto",
    dicom_seg: bool = True,
    console=None,
) -> list[SegmentedCase]:
    """Segment every input; write `<stem>_seg.nii.gz` (+ `_prob`, `_uncertainty` with samples > 1,
    + `<stem>_seg.dcm`, a DICOM SEG, for DICOM inputs unless `dicom_seg` is False)."""
    from ldmtool.runtime import progress

    if steps < 1:
        raise LdmError("--steps must be at least 1")
    if samples < 1:
        raise LdmError("--samples must be at least 1")
    model_path = resolve_checkpoint(model_path)
    model, config = load_segmenter(model_path, device)
    cfg = from_dict(SegModelConfig, config["model"])
    if cfg.arch == "unet" and samples > 1:
        raise LdmError("--samples > 1 needs an LDSeg model; a UNet is deterministic")
    pre = PreprocessConfig.from_dict(config.get("preprocess") or {})
    names = {int(v): k for k, v in config["label_names"].items()}
    files = expand_inputs(inputs)
    stems = [output_stem(p) for p in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise LdmError(f"several inputs would write the same output name ({', '.join(dupes)}); segment them into separate --out folders")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    results: list[SegmentedCase] = []

    def prepare(path: Path, stem: str) -> _Prepared:
        t0 = time.perf_counter()
        volume = read_volume(path, allow_single_slice=True)
        arr = np.asarray(volume.array, dtype=np.float32)
        if arr.ndim != 3:
            raise LdmError(f"{path} is not a 3D volume (shape {arr.shape})")
        if cfg.dims == 3 and min(arr.shape) < 2:
            raise LdmError(f"{path} is a 2D image (shape {arr.shape}) and this is a 3D model; segment it with a --dims 2 model")
        src_codes = "".join(nio.aff2axcodes(volume.affine))
        work, work_affine = arr, volume.affine
        if pre.orientation != "none":
            (work,), work_affine = _reorient([arr], volume.affine, pre.orientation)
        work = _normalise(work, _intensity_range(work, pre), pre)
        slices = torch.from_numpy(volume_to_slices(work).copy())  # (K, I, J)
        return _Prepared(path, stem, volume, arr, work_affine, src_codes, slices, time.perf_counter() - t0)

    def finish(case: _Prepared, probs: torch.Tensor, std: torch.Tensor | None, predict_seconds: float) -> None:
        t0 = time.perf_counter()
        path, stem, volume, arr = case.path, case.stem, case.volume, case.arr
        label = probs.argmax(0)  # (K, I, J)
        outputs = {"seg": slices_to_volume(label.numpy().astype(np.uint8))}
        if std is not None:
            outputs["prob"] = np.stack([slices_to_volume(p.numpy()) for p in probs], axis=-1).astype(np.float32)
            # uncertainty: std over the draws of the probability of the class finally chosen
            chosen = torch.gather(std, 0, label[None])[0]
            outputs["uncertainty"] = slices_to_volume(chosen.numpy()).astype(np.float32)
        written: dict[str, Path] = {}
        seg_error = None
        for key, data in outputs.items():
            if pre.orientation != "none":
                (data,), back_affine = _reorient([data], case.work_affine, case.src_codes)
                if not np.allclose(back_affine, volume.affine, atol=1e-4):
                    raise LdmError(f"internal error: {path} could not be put back into its own axes")
            if data.shape[:3] != arr.shape:
                raise LdmError(f"internal error: output shape {data.shape[:3]} differs from the input's {arr.shape}")
            target = out_dir / f"{stem}_{key}.nii.gz"
            if data.ndim == 3:
                write_nifti(Volume(np.ascontiguousarray(data), volume.affine.copy(), {}), target)
            else:
                _write_4d(np.ascontiguousarray(data), volume.affine, target)
            written[key] = target
            if key == "seg" and dicom_seg and volume.meta.get("slice_sources"):
                from ldmtool import __version__
                from ldmtool.io.dicom_seg import write_dicom_seg

                method = f"LDSeg, {steps} DDIM step(s)" if cfg.arch == "ldseg" else "UNet"
                try:
                    write_dicom_seg(data, volume.meta["slice_sources"], names, out_dir / f"{stem}_seg.dcm",
                                    algorithm="LDSeg" if cfg.arch == "ldseg" else "UNet", version=__version__,
                                    description=f"ldmtool segmentation ({method})")
                    written["dicom_seg"] = out_dir / f"{stem}_seg.dcm"
                except LdmError as exc:  # the NIfTI label map is written; the SEG is an extra
                    seg_error = str(exc)
                    if console is not None:
                        console.print(f"[yellow]warning:[/] {path.name}: {exc}")
        counts = np.bincount(label.flatten().numpy(), minlength=len(names) or 1)
        results.append(SegmentedCase(
            source=str(path), label_path=written["seg"], shape=tuple(arr.shape),
            seconds=case.seconds + predict_seconds + time.perf_counter() - t0,
            voxels_per_class={names.get(c, str(c)): int(n) for c, n in enumerate(counts)},
            prob_path=written.get("prob"), uncertainty_path=written.get("uncertainty"),
            dicom_seg_path=written.get("dicom_seg"), dicom_seg_error=seg_error,
        ))

    # 2D models: consecutive inputs whose slices have the same size go through the network together
    # while they fill at most one batch, so a folder of small volumes keeps a GPU busy (one volume
    # of 32 slices of 64 × 64 per call is bound by kernel launches there: benchmarks/segmentation_speed.py)
    group: list[_Prepared] = []

    def flush() -> None:
        if not group:
            return
        counts = [c.slices.shape[0] for c in group]
        t0 = time.perf_counter()
        probs, std = predict_volume(model, cfg, torch.cat([c.slices for c in group]), steps=steps, samples=samples,
                                    batch=batch_size, generator=gen, device=device, precision=precision)
        seconds = time.perf_counter() - t0
        parts = zip(probs.split(counts, dim=1), std.split(counts, dim=1) if std is not None else [None] * len(group))
        for case, (p, sd), n in zip(group, parts, counts):
            finish(case, p, sd, seconds * n / sum(counts))
            bar.update(task, advance=1, info=case.path.name)
        group.clear()

    with progress(console) as bar:
        task = bar.add_task("segment", total=len(files), rate="", info="")
        for path, stem in zip(files, stems):
            try:
                case = prepare(path, stem)
            except LdmError:
                flush()  # what was read before the bad input is still written
                raise
            fits = (cfg.dims == 2 and group and case.slices.shape[1:] == group[0].slices.shape[1:]
                    and sum(c.slices.shape[0] for c in group) + case.slices.shape[0] <= batch_size)
            if not fits:
                flush()
            group.append(case)
        flush()
    atomic_write_text(out_dir / "segment.json", json.dumps({
        "model": str(model_path), "model_sha256": file_sha256(model_path), "arch": cfg.arch, "dims": cfg.dims,
        "steps": steps, "samples": samples, "seed": seed, "device": str(device),
        "cases": [{"source": r.source, "label": r.label_path.name,
                   **({"dicom_seg": r.dicom_seg_path.name} if r.dicom_seg_path else {}),
                   **({"dicom_seg_error": r.dicom_seg_error} if r.dicom_seg_error else {}),
                   "seconds": round(r.seconds, 3),
                   "voxels_per_class": r.voxels_per_class} for r in results],
    }, indent=2) + "\n")
    return results
