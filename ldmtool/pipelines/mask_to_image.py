"""`ldmtool sample --labels DIR`: one image per given label map (mask-to-image), in the map's geometry.

Each map is brought to the model's space (`label_maps.label_to_model_space`), put on the latent
grid as the denoiser's condition, sampled with classifier-free guidance, decoded, and the image is
mapped back to the map's own voxel grid through the two affines (linear interpolation). The label
file written beside it is the requested map itself (or its seeded deformation with `deform`).
Outputs follow `sample`'s layout (imagesTr/synth_*_0000.nii.gz, labelsTr/, provenance/,
dataset.json, montage.png); a re-run with the same settings resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmtool import __version__
from ldmtool.config import SampleConfig
from ldmtool.data.label_maps import deform_label_map, label_to_model_space, remap_labels
from ldmtool.data.prepared import volume_to_slices
from ldmtool.diffusion.samplers import sample_seed
from ldmtool.errors import LdmError
from ldmtool.io import Volume, write_nifti
from ldmtool.io.atomic import atomic_write_text
from ldmtool.io.nifti import is_nifti_path
from ldmtool.pipelines.generate import (
    GenerateResult,
    _check_resumable,
    _device_name,
    _job_settings,
    _write_dataset_json,
)
from ldmtool.pipelines.impute import to_input_grid
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline
from ldmtool.pipelines.outdir import check_output_dir, output_dir
from ldmtool.pipelines.segment import output_stem


@dataclass
class MapJob:
    """One sample to make: its name, seed, the label map it follows and, for new anatomy, which
    seeded deformation of it (the map is read, and deformed, only when the sample is made)."""

    name: str
    seed: int
    source: Path
    deformation: int | None = None  # index of the deformation, None for the map itself
    deform_seed: int | None = None


def find_label_maps(folder: Path) -> tuple[list[Path], dict[str, int] | None]:
    """The NIfTI label maps of `folder` (or of its labelsTr/) and the label names of a dataset.json
    beside them (None when there is none)."""
    from ldmtool.io.dataset import _parse_labels

    folder = Path(folder)
    if not folder.is_dir():
        raise LdmError(f"--labels {folder} is not a folder of label maps")
    maps_dir = folder / "labelsTr" if (folder / "labelsTr").is_dir() else folder
    maps = sorted(p for p in maps_dir.iterdir() if p.is_file() and is_nifti_path(p))
    if not maps:
        raise LdmError(f"--labels {folder} holds no NIfTI label maps (.nii.gz)")
    for js in (maps_dir / "dataset.json", maps_dir.parent / "dataset.json"):
        if js.is_file():
            try:
                raw = json.loads(js.read_text()).get("labels")
            except (OSError, ValueError, AttributeError):
                raise LdmError(f"{js} is not a readable dataset.json") from None
            return maps, (None if raw is None else _parse_labels(raw, js))
    return maps, None


def read_label_map(path: Path, names: dict[str, int] | None, model_names: dict[str, int]) -> Volume:
    """A label map in the model's label values (remapped by name with its dataset.json's `names`);
    one-line errors for non-integer values or values the model does not know."""
    from ldmtool.io.readers import read_volume

    vol = read_volume(path)
    arr = np.asarray(vol.array)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(arr == np.rint(arr)):
            raise LdmError(f"{path} holds non-integer values; a label map holds integer classes")
        arr = np.rint(arr).astype(np.int64)
    if names is not None:
        arr = remap_labels(arr, names, model_names, str(path))
    unknown = sorted(set(np.unique(arr).tolist()) - set(model_names.values()))
    if unknown:
        known = ", ".join(f"{n}={v}" for n, v in model_names.items())
        raise LdmError(f"{path} holds label values {unknown[:5]} the model does not know (its labels: {known})")
    return vol.with_array(arr.astype(np.uint8))


def map_jobs(maps: list[Path], *, per_label: int, deform: int, seed: int, undeformed: int = 0) -> list[MapJob]:
    """Every sample of the job, in order: per map, the map itself (or `deform` seeded deformations
    of it) `per_label` times each; then, with `deform`, `undeformed` images of every map itself.
    Sample k has seed `sample_seed(seed, k)`, deformation d of map i the seed
    `sample_seed(seed, i, d + 1)`; the undeformed images come last, so the deformed ones are the
    same with or without them."""
    jobs: list[MapJob] = []
    for i, path in enumerate(maps):
        stem = output_stem(path)
        for d in [None] if not deform else range(deform):
            for j in range(per_label):
                tag = f"{stem}_{j:03d}" if d is None else f"{stem}_d{d:03d}_{j:03d}"
                dseed = None if d is None else sample_seed(seed, i, d + 1)
                jobs.append(MapJob(f"synth_{tag}", sample_seed(seed, len(jobs)), path, d, dseed))
    for path in maps if deform else []:
        stem = output_stem(path)
        for j in range(undeformed):
            jobs.append(MapJob(f"synth_{stem}_{j:03d}", sample_seed(seed, len(jobs)), path))
    return jobs


class _Maps:
    """Label maps of the jobs, read (and deformed) when needed; the last map read is kept."""

    def __init__(self, names: dict[str, int] | None, model_names: dict[str, int]):
        self.names, self.model_names, self.last = names, model_names, (None, None)

    def __call__(self, job: MapJob) -> Volume:
        if self.last[0] != job.source:
            self.last = (job.source, read_label_map(job.source, self.names, self.model_names))
        vol = self.last[1]
        if job.deform_seed is None:
            return vol
        return vol.with_array(deform_label_map(np.asarray(vol.array), job.deform_seed))


def generate_from_labels(
    ae_path: Path,
    ldm_path: Path,
    labels_dir: Path,
    out_dir: Path,
    *,
    per_label: int = 1,
    deform: int = 0,
    undeformed: int = 0,
    sampler: str = SampleConfig.sampler,
    steps: int = SampleConfig.steps,
    eta: float = SampleConfig.eta,
    spacing: str = SampleConfig.spacing,
    guidance: float = SampleConfig.guidance,
    batch_size: int = SampleConfig.batch_size,
    decode_batch: int = SampleConfig.decode_batch,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    precision: str = SampleConfig.precision,
    console=None,
    overwrite: bool = False,
    guide_ldm: Path | None = None,
) -> GenerateResult:
    """Sample `per_label` images for every label map of `labels_dir` (and for `deform` seeded
    deformations of each, plus `undeformed` images of every map itself) with a model trained with
    `--condition-on labels`; write them into `out_dir` in each map's geometry, with the map as the
    label and provenance naming it. `guide_ldm`: as for `generate`."""
    SampleConfig(
        sampler=sampler,
        steps=steps,
        eta=eta,
        spacing=spacing,
        guidance=guidance,
        batch_size=batch_size,
        decode_batch=decode_batch,
        precision=precision,
    )
    if per_label < 1:
        raise LdmError(f"--per-label must be at least 1; got {per_label}")
    if deform < 0:
        raise LdmError(f"--deform must be 0 (the maps themselves) or more; got {deform}")
    if undeformed < 0:
        raise LdmError(f"--undeformed must be 0 or more; got {undeformed}")
    if undeformed and not deform:
        raise LdmError(
            "--undeformed adds images of the maps themselves to --deform K; without --deform use --per-label"
        )
    check_output_dir(out_dir, "sample", overwrite)
    maps, names = find_label_maps(labels_dir)
    out_dir = Path(out_dir)
    with output_dir(out_dir):
        pipe = LatentDiffusionPipeline.from_pretrained(ae_path, ldm_path, device=device, precision=precision)
        if not pipe.ldm_config.label_channels:
            raise LdmError(
                f"{pipe.ldm_path} was not trained on label maps; train one with train-ldm --condition-on labels"
            )
        if guide_ldm is not None:
            pipe.set_guide(guide_ldm)
        smp = pipe.make_sampler(sampler, steps, eta, spacing)
        for path in maps:  # every map checked before any sampling
            read_label_map(path, names, pipe.label_names)
        jobs = map_jobs(maps, per_label=per_label, deform=deform, seed=seed, undeformed=undeformed)
        settings = {
            **_job_settings(pipe, smp, steps, eta, "nifti"),
            "base_seed": seed,
            "guidance": guidance,
            "labels_dir": str(Path(labels_dir).resolve()),
            "per_label": per_label,
            "deform": deform,
            **({"undeformed": undeformed} if undeformed else {}),  # folders written without it stay resumable
        }
        prov_dir = out_dir / "provenance"
        for sub in ("imagesTr", "labelsTr", "provenance"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        _check_resumable(prov_dir, settings)
        todo = [j for j in jobs if not (prov_dir / f"{j.name}.json").is_file()]
        result = GenerateResult(
            skipped=sorted({j.name for j in jobs} - {j.name for j in todo}),
            out_dir=out_dir,
            device=_device_name(pipe.device),
            precision=pipe.precision,
        )
        labels = _Maps(names, pipe.label_names)
        _run(pipe, smp, todo, labels, settings, out_dir, result, guidance, batch_size, decode_batch, console)
        _write_dataset_json(out_dir, pipe.label_names, len(jobs), "nifti", pipe.channel_names)
        from ldmtool.pipelines.montage import write_montage

        write_montage(out_dir, out_dir / "montage.png", max_samples=8)
        return result


def _run(pipe, smp, todo, labels, settings, out_dir, result, guidance, batch_size, decode_batch, console) -> None:
    """Sample and write the jobs `todo`, a batch at a time, with a progress bar."""
    from ldmtool.runtime import progress

    t0 = time.perf_counter()
    shape = tuple(int(v) for v in pipe.ae_config.volume_shape)
    with progress(console) as bar:
        task = bar.add_task("mask-to-image", total=len(todo), rate="", info="")
        for s in range(0, len(todo), batch_size):
            batch = todo[s : s + batch_size]
            t1 = time.perf_counter()
            maps = [labels(j) for j in batch]
            spaces = [label_to_model_space(m, pipe.preprocess, shape) for m in maps]
            cond = torch.stack([torch.from_numpy(volume_to_slices(lab)) for lab, _ in spaces])
            vols = pipe.sample(
                [j.seed for j in batch],
                sampler=smp,
                guidance=guidance,
                decode_batch=decode_batch,
                labels=pipe.label_condition(cond),
            )
            per_sample = (time.perf_counter() - t1) / len(batch)
            for job, label, vol, (_, model_affine) in zip(batch, maps, vols, spaces):
                _write_sample(job, label, vol.image, model_affine, settings, out_dir, per_sample, result, pipe)
            bar.update(task, advance=len(batch), info=batch[-1].name)
    result.seconds = time.perf_counter() - t0
    result.seconds_per_sample = result.seconds / max(1, len(result.written))


def _write_sample(
    job: MapJob, label: Volume, image: np.ndarray, model_affine, settings, out_dir, per_sample, result, pipe
) -> None:
    """The image in the map's grid, the map as its label, provenance last (it marks the sample done)."""
    where = np.ones(label.shape, dtype=bool)
    files: dict[str, Any] = {"image": f"imagesTr/{job.name}_0000.nii.gz", "label": f"labelsTr/{job.name}.nii.gz"}
    meta: dict[str, Any] = {"synthetic": True}
    channels = image.reshape(*image.shape[:3], -1)  # (I, J, K, C): one file per channel, nnU-Net's _0000, _0001, ...
    for c in range(channels.shape[3]):
        values, _ = to_input_grid(channels[..., c], model_affine, where, label.affine)
        path = f"imagesTr/{job.name}_{c:04d}.nii.gz"
        write_nifti(Volume(values.reshape(label.shape).astype(np.float32), label.affine, meta), out_dir / path)
        if channels.shape[3] > 1:
            files.setdefault("channels", {})[pipe.channel_names[c]] = path
    write_nifti(label, out_dir / files["label"])
    prov = {
        "sample": job.name,
        "seed": job.seed,
        **settings,
        "label_map": str(job.source),
        "deformation": None if job.deformation is None else {"index": job.deformation, "seed": job.deform_seed},
        "seconds": per_sample,
        "files": files,
        "ae": str(pipe.ae_path),
        "ldm": str(pipe.ldm_path),
        "ldmtool_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(out_dir / "provenance" / f"{job.name}.json", json.dumps(prov, indent=2))
    result.written.append(job.name)
