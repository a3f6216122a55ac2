"""`ldmtool segment`: label maps (and uncertainty) for NIfTI/DICOM volumes in their own geometry.

Each input is brought to the model's orientation (a permutation/flip of axes, exactly invertible)
and intensity scale, segmented in its own voxel grid (padded to the network's size multiple, then
cropped back; tiled with sliding windows where larger than the training patch: see
pipelines/segmenter.py), and the result is put back into the input's axes, so the label map has the input's
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

from ldmtool.config import SegmentConfig
from ldmtool.data.prepared import slices_to_volume, volume_to_slices
from ldmtool.data.preprocess import _intensity_range, _normalise, _reorient
from ldmtool.errors import LdmError
from ldmtool.io import write_nifti
from ldmtool.io.image2d import write_like_input
from ldmtool.io.nifti import is_nifti_path
from ldmtool.io.readers import read_volume
from ldmtool.io.volume import Volume
from ldmtool.models.checkpoint import file_sha256
from ldmtool.pipelines.outdir import check_output_dir, output_dir, write_run_record
from ldmtool.pipelines.segmenter import Segmenter
from ldmtool.runtime import class_index


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
    slices: torch.Tensor  # (K, I, J); several channels: (K, C, I, J)
    seconds: float


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files, DICOM series folders, DICOM case folders of one series folder per contrast, and
    folders of these or of NIfTI files or 2D pictures (also their imagesTr/) → inputs."""
    from ldmtool.io.dataset import contrast_folders, first_dicom_file
    from ldmtool.io.image2d import is_image_path

    def one_input(p: Path) -> bool:  # a series (DICOM files directly in it), or a case of contrast series
        return first_dicom_file(p) is not None or contrast_folders(p) is not None

    out: list[Path] = []
    for path in inputs:
        path = Path(path)
        if not path.exists():
            raise LdmError(f"{path} does not exist")
        if path.is_file():
            out.append(path)
        elif one_input(path):
            out.append(path)
        else:
            folder = path / "imagesTr" if (path / "imagesTr").is_dir() else path
            found = sorted(p for p in folder.iterdir() if p.is_file() and (is_nifti_path(p) or is_image_path(p)))
            found += sorted(p for p in folder.iterdir() if p.is_dir() and one_input(p))
            if not found:
                raise LdmError(f"{path} holds no NIfTI files, DICOM series or 2D images to segment")
            out.extend(found)
    return out


def case_inputs(files: list[Path], channels: int) -> list[Path]:
    """For a model of several channels, one input per case: its channel 0000 file (the others are
    read from beside it), in the order the cases first appear; unchanged for one channel."""
    if channels == 1:
        return files
    from ldmtool.io.dataset import _CHANNEL_RE, _volume_id

    out: dict[Path, None] = {}
    for f in files:
        stem = _volume_id(f.name)
        m = _CHANNEL_RE.match(stem)
        out[f.parent / f"{m['case']}_0000{f.name[len(stem) :]}" if m else f] = None
    return list(out)


def output_stem(path: Path) -> str:
    """case_0000.nii.gz (or .png, .jpg, .tif, .dcm) → case; a DICOM folder → its name."""
    from ldmtool.io.image2d import IMAGE_SUFFIXES

    name = path.name
    for end in (".nii.gz", ".nii", *IMAGE_SUFFIXES, ".dcm"):
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
    steps: int = SegmentConfig.steps,
    samples: int = SegmentConfig.samples,
    batch_size: int = SegmentConfig.batch_size,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    precision: str = SegmentConfig.precision,
    dicom_seg: bool = SegmentConfig.dicom_seg,
    console=None,
    series_uid: str | None = None,
    overwrite: bool = False,
) -> list[SegmentedCase]:
    """Segment every input; write `<stem>_seg.nii.gz` (+ `_prob`, `_uncertainty` with samples > 1,
    + `<stem>_seg.dcm`, a DICOM SEG, for DICOM inputs unless `dicom_seg` is False) and the run
    record (`runs/segment-TIME.json`, the latest also as `segment.json`). `series_uid` picks the
    series of DICOM folders holding several; `out_dir` must be new, empty or an earlier segment
    output (`overwrite`: see `pipelines.outdir`)."""
    SegmentConfig(  # the CLI's checks and messages
        steps=steps, samples=samples, batch_size=batch_size, precision=precision, dicom_seg=dicom_seg
    )
    from ldmtool.runtime import progress

    check_output_dir(out_dir, "segment", overwrite)
    seg = Segmenter.from_pretrained(model_path, device, precision)
    if seg.arch == "unet" and samples > 1:
        raise LdmError("--samples > 1 needs an LDSeg model; a UNet is deterministic")
    files = case_inputs(expand_inputs(inputs), len(seg.channel_names))
    stems = [output_stem(p) for p in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise LdmError(
            f"several inputs would write the same output name ({', '.join(dupes)}); segment them into separate --out folders"
        )
    job = _SegmentJob(
        seg, Path(out_dir), steps, samples, batch_size, torch.Generator().manual_seed(seed), dicom_seg, console
    )
    with output_dir(job.out_dir), progress(console) as bar:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        task = bar.add_task("segment", total=len(files), rate="", info="")
        job.advance = lambda name: bar.update(task, advance=1, info=name)
        for path, stem in zip(files, stems):
            try:
                case = prepare_case(path, stem, seg, series_uid)
            except LdmError as exc:
                job.flush()  # what was read before the bad input is still written, and recorded
                if job.results:
                    _write_summary(job, seed, error=str(exc))
                raise
            job.add(case)
        job.flush()
        _write_summary(job, seed)
    return job.results


def prepare_case(path: Path, stem: str, seg: Segmenter, series_uid: str | None = None) -> _Prepared:
    """Read an input (`series_uid`: the series of a DICOM folder holding several) and put it
    into the model's axes and intensity scale."""
    t0 = time.perf_counter()
    pre = seg.preprocess
    volume = _read_channels(path, seg.channel_names, series_uid)
    arr = np.asarray(volume.array, dtype=np.float32)
    if arr.ndim != 3 and len(seg.channel_names) == 1:
        raise LdmError(f"{path} is not a 3D volume (shape {arr.shape})")
    if seg.dims == 3 and min(arr.shape[:3]) < 2:
        raise LdmError(
            f"{path} is a 2D image (shape {arr.shape}) and this is a 3D model; segment it with a --dims 2 model"
        )
    src_codes = "".join(nio.aff2axcodes(volume.affine))
    work, work_affine = arr, volume.affine
    if pre.orientation != "none":
        (work,), work_affine = _reorient([arr], volume.affine, pre.orientation)
    if work.ndim == 4:  # each channel with its own intensity range
        work = np.stack([_normalise(w, _intensity_range(w, pre), pre) for w in np.moveaxis(work, 3, 0)], axis=-1)
    else:
        work = _normalise(work, _intensity_range(work, pre), pre)
    slices = torch.from_numpy(volume_to_slices(work).copy())  # (K, I, J) or (K, C, I, J)
    return _Prepared(path, stem, volume, arr, work_affine, src_codes, slices, time.perf_counter() - t0)


def _read_channels(path: Path, names: list[str], series_uid: str | None) -> Volume:
    """The input volume; for a model of several channels, the case's channel files read as one
    (I, J, K, C) volume (each on channel 0's grid)."""
    from ldmtool.io.dataset import case_channel_files, read_aligned

    files = case_channel_files(path, names)
    volume = read_volume(files[0], series_uid=series_uid, allow_single_slice=True)
    if len(files) == 1:
        return volume
    others = [read_aligned(f, volume, f"channel {c:04d} ({f.name})").array for c, f in enumerate(files[1:], 1)]
    return volume.with_array(np.stack([np.asarray(a, dtype=np.float32) for a in (volume.array, *others)], axis=-1))


class _SegmentJob:
    """Inputs waiting for the network, and what has been written.

    2D models: consecutive inputs whose slices have the same size go through the network together
    while they fill at most one batch, so a folder of small volumes keeps a GPU busy (one volume
    of 32 slices of 64 × 64 per call is bound by kernel launches there: benchmarks/results/segmentation.md)."""

    def __init__(
        self,
        seg: Segmenter,
        out_dir: Path,
        steps: int,
        samples: int,
        batch_size: int,
        generator: torch.Generator,
        dicom_seg: bool,
        console,
    ):
        self.seg, self.out_dir, self.steps, self.samples, self.batch_size = seg, out_dir, steps, samples, batch_size
        self.generator, self.dicom_seg, self.console = generator, dicom_seg, console
        self.names = {int(v): k for k, v in seg.label_names.items()}
        self.group: list[_Prepared] = []
        self.results: list[SegmentedCase] = []
        self.advance = lambda name: None

    def add(self, case: _Prepared) -> None:
        """Queue an input; run the queued ones first if it cannot share their network call."""
        group = self.group
        fits = (
            self.seg.dims == 2
            and group
            and case.slices.shape[1:] == group[0].slices.shape[1:]
            and sum(c.slices.shape[0] for c in group) + case.slices.shape[0] <= self.batch_size
        )
        if not fits:
            self.flush()
        group.append(case)

    def flush(self) -> None:
        """Segment the queued inputs in one call and write their outputs."""
        group = self.group
        if not group:
            return
        counts = [c.slices.shape[0] for c in group]
        t0 = time.perf_counter()
        probs, std = self.seg.predict(
            torch.cat([c.slices for c in group]),
            steps=self.steps,
            samples=self.samples,
            batch=self.batch_size,
            generator=self.generator,
        )
        seconds = time.perf_counter() - t0
        parts = zip(probs.split(counts, dim=1), std.split(counts, dim=1) if std is not None else [None] * len(group))
        for case, (p, sd), n in zip(group, parts, counts):
            self.finish(case, p, sd, seconds * n / sum(counts))
            self.advance(case.path.name)
        group.clear()

    def finish(self, case: _Prepared, probs: torch.Tensor, std: torch.Tensor | None, predict_seconds: float) -> None:
        """Write one input's label map (+ probabilities, uncertainty, DICOM SEG) in its own geometry."""
        t0 = time.perf_counter()
        label = class_index(probs, 0)  # (K, I, J)
        outputs = {"seg": slices_to_volume(label.numpy().astype(np.uint8))}
        if std is not None:
            outputs["prob"] = np.stack([slices_to_volume(p.numpy()) for p in probs], axis=-1).astype(np.float32)
            # uncertainty: std over the draws of the probability of the class finally chosen
            chosen = torch.gather(std, 0, label[None])[0]
            outputs["uncertainty"] = slices_to_volume(chosen.numpy()).astype(np.float32)
        written: dict[str, Path] = {}
        seg_error = None
        for key, data in outputs.items():
            data = self.to_input_axes(case, data)
            target = self.out_dir / f"{case.stem}_{key}.nii.gz"
            if key == "seg":  # a 2D picture's label map: a PNG as it is (`write_like_input`)
                volume = case.volume.with_array(np.ascontiguousarray(data))
                target = write_like_input(volume, self.out_dir / f"{case.stem}_seg", np.uint8)
            elif data.ndim == 3:
                write_nifti(Volume(np.ascontiguousarray(data), case.volume.affine.copy(), {}), target)
            else:
                _write_4d(np.ascontiguousarray(data), case.volume.affine, target)
            written[key] = target
            if key == "seg" and self.dicom_seg and case.volume.meta.get("slice_sources"):
                seg_error = self.write_dicom_seg(case, data, written)
        counts = np.bincount(label.flatten().numpy(), minlength=len(self.names) or 1)
        self.results.append(
            SegmentedCase(
                source=str(case.path),
                label_path=written["seg"],
                shape=tuple(case.arr.shape[:3]),
                seconds=case.seconds + predict_seconds + time.perf_counter() - t0,
                voxels_per_class={self.names.get(c, str(c)): int(n) for c, n in enumerate(counts)},
                prob_path=written.get("prob"),
                uncertainty_path=written.get("uncertainty"),
                dicom_seg_path=written.get("dicom_seg"),
                dicom_seg_error=seg_error,
            )
        )

    def to_input_axes(self, case: _Prepared, data: np.ndarray) -> np.ndarray:
        """An output in the model's axes → the input's axes (exactly: a permutation/flip)."""
        if self.seg.preprocess.orientation != "none":
            (data,), back_affine = _reorient([data], case.work_affine, case.src_codes)
            if not np.allclose(back_affine, case.volume.affine, atol=1e-4):
                raise LdmError(f"internal error: {case.path} could not be put back into its own axes")
        if data.shape[:3] != case.arr.shape[:3]:
            raise LdmError(
                f"internal error: output shape {data.shape[:3]} differs from the input's {case.arr.shape[:3]}"
            )
        return data

    def write_dicom_seg(self, case: _Prepared, data: np.ndarray, written: dict[str, Path]) -> str | None:
        """A DICOM SEG referencing the source series; returns why it could not be written, if so."""
        from ldmtool import __version__
        from ldmtool.io.dicom_seg import write_dicom_seg

        arch = self.seg.arch
        method = f"LDSeg, {self.steps} DDIM step(s)" if arch == "ldseg" else "UNet"
        target = self.out_dir / f"{case.stem}_seg.dcm"
        try:
            write_dicom_seg(
                data,
                case.volume.meta["slice_sources"],
                self.names,
                target,
                algorithm="LDSeg" if arch == "ldseg" else "UNet",
                version=__version__,
                description=f"ldmtool segmentation ({method})",
            )
        except LdmError as exc:  # the NIfTI label map is written; the SEG is an extra
            if self.console is not None:
                self.console.print(f"[yellow]warning:[/] {case.path.name}: {exc}")
            return str(exc)
        written["dicom_seg"] = target
        return None


def _write_summary(job: _SegmentJob, seed: int, error: str | None = None) -> None:
    """The run record (runs/segment-TIME.json, and segment.json as the latest): the model, the
    settings and one row per input."""
    seg = job.seg
    write_run_record(
        job.out_dir,
        "segment",
        json.dumps(
            {
                "model": str(seg.path),
                "model_sha256": file_sha256(seg.path),
                "arch": seg.arch,
                "dims": seg.dims,
                "steps": job.steps,
                "samples": job.samples,
                "seed": seed,
                "device": str(seg.device),
                **({"error": error} if error else {}),
                "cases": [
                    {
                        "source": r.source,
                        "label": r.label_path.name,
                        **({"dicom_seg": r.dicom_seg_path.name} if r.dicom_seg_path else {}),
                        **({"dicom_seg_error": r.dicom_seg_error} if r.dicom_seg_error else {}),
                        "seconds": round(r.seconds, 3),
                        "voxels_per_class": r.voxels_per_class,
                    }
                    for r in job.results
                ],
            },
            indent=2,
        )
        + "\n",
        "segment.json",
    )
