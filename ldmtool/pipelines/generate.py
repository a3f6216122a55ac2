"""`ldmtool sample`: generate image+mask volumes into files (nnU-Net layout + provenance + montage).

Every sample k has its own seed f(base_seed, k), so what is generated does not depend on the
batch size or on how a job is split. Each output is written to a temp name and renamed; the
provenance JSON is written last and marks a sample as finished, so a re-run skips finished
samples and never leaves a half-written one behind.
"""

from __future__ import annotations

import json
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ldmtool import __version__
from ldmtool.config import SampleConfig
from ldmtool.diffusion.resources import (
    MemoryPlan,
    plan_memory,
    resolve_shard,
    shard_device,
)
from ldmtool.diffusion.samplers import sample_seed
from ldmtool.errors import LdmError
from ldmtool.io import Volume, write_dicom_series, write_nifti
from ldmtool.io.atomic import atomic_write_text
from ldmtool.models.checkpoint import file_sha256
from ldmtool.models.position import slice_positions
from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline, SampledVolume
from ldmtool.pipelines.montage import write_montage
from ldmtool.pipelines.outdir import check_output_dir, output_dir
from ldmtool.runtime import autocast, progress

MODALITIES = ("CT", "MR", "OT")  # what synthetic DICOM series are written as
MAX_ATTEMPTS = 20  # candidates per sample under --reject-memorized


class MemorizationCheck(Protocol):
    score: float
    nearest: str
    reject: bool


class MemorizationFilter(Protocol):
    """What generation needs of a memorisation filter (ldmtool.evaluate.privacy.MemorizationFilter)."""

    threshold: float

    def check(self, image: np.ndarray) -> MemorizationCheck: ...


@dataclass
class GenerateResult:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_sample: float = 0.0
    out_dir: Path | None = None
    shard: str = "0/1"
    device: str = ""
    precision: str = "fp32"
    memory: str = ""
    others: int = 0  # samples of this job that belong to other shards
    rejected: int = 0  # candidates discarded as near-copies of training volumes


def sample_name(index: int) -> str:
    return f"synth_{index:05d}"


def generate(
    ae_path: Path,
    ldm_path: Path,
    out_dir: Path,
    *,
    n: int = SampleConfig.n,
    sampler: str = SampleConfig.sampler,
    steps: int = SampleConfig.steps,
    eta: float = SampleConfig.eta,
    spacing: str = SampleConfig.spacing,
    batch_size: int = SampleConfig.batch_size,
    decode_batch: int = SampleConfig.decode_batch,
    seed: int = 0,
    fmt: str | None = SampleConfig.format,
    conditions: dict[str, float | str] | None = None,
    guidance: float = SampleConfig.guidance,
    device: torch.device = torch.device("cpu"),
    precision: str = SampleConfig.precision,
    compile: bool = SampleConfig.compile,
    shard: str | None = None,
    max_memory_gb: float | None = SampleConfig.max_memory_gb,
    memorization_filter: MemorizationFilter | None = None,
    console=None,
    overwrite: bool = False,
    guide_ldm: Path | None = None,
) -> GenerateResult:
    """Sample `n` image+mask volumes into `out_dir` (nnU-Net layout + provenance + montage).

    This process makes the samples of its shard (see `resolve_shard`) that are not finished yet,
    a batch at a time (`LatentDiffusionPipeline.sample`), each file written to a temp name and
    renamed; the provenance JSON, written last, marks the sample finished. With a
    `memorization_filter`, candidates it rejects are replaced by new draws of the same sample.
    `out_dir` must be new, empty or an earlier sample output (`overwrite`: see `pipelines.outdir`).
    `fmt` None: the model's own (NIfTI for volumes; for 2D images the format they were read from:
    PNG for PNG/JPEG/TIFF, one DICOM file per image for DICOM). `guide_ldm`: a weaker denoiser of
    the same latents that `guidance` extrapolates away from (autoguidance, `set_guide`)."""
    SampleConfig(  # the CLI's checks and messages
        n=n,
        sampler=sampler,
        steps=steps,
        eta=eta,
        spacing=spacing,
        batch_size=batch_size,
        decode_batch=decode_batch,
        format=fmt or SampleConfig.format,
        guidance=guidance,
        precision=precision,
        compile=compile,
        max_memory_gb=max_memory_gb,
    )
    part = resolve_shard(shard)
    check_output_dir(out_dir, "sample", overwrite)
    with output_dir(out_dir):
        pipe = LatentDiffusionPipeline.from_pretrained(
            ae_path, ldm_path, device=shard_device(device), precision=precision
        )
        if guide_ldm is not None:
            pipe.set_guide(guide_ldm)
        fmt = output_format(pipe, fmt)
        smp = pipe.make_sampler(sampler, steps, eta, spacing)
        pipe.conditioning(conditions, 1)  # fails now if the model cannot take the conditions
        for text in pipe.out_of_range(conditions) if console is not None else []:
            console.print(f"[yellow]warning:[/] {text}", highlight=False)
        memory = _plan(pipe, batch_size, decode_batch, max_memory_gb)  # fail now, not after hours
        if compile:
            pipe.compile()
        threshold = None if memorization_filter is None else memorization_filter.threshold
        settings = {
            **_job_settings(pipe, smp, steps, eta, fmt),
            "base_seed": seed,
            "guidance": guidance,
            "conditions": conditions or {},
            "reject_memorized": threshold,
        }
        job = _SampleJob(
            pipe,
            smp,
            Path(out_dir),
            settings,
            fmt,
            conditions or {},
            guidance,
            batch_size,
            decode_batch,
            compile,
            part,
            memorization_filter,
        )
        mine = [k for k in range(n) if part.owns(k)]
        todo = job.prepare(mine)
        job.result = _result(job, mine, todo, n, memory)
        job.run(todo, console)
        _write_dataset_json(job.out_dir, pipe.label_names, n, fmt, pipe.channel_names)
        if fmt == "nifti" and pipe.image_dims == 3 and part.index == 0:
            write_montage(job.out_dir, job.out_dir / "montage.png", max_samples=8)
        return job.result


def output_format(pipe: LatentDiffusionPipeline, fmt: str | None) -> str:
    """The file format samples are written in: `fmt`, or the model's own when None; png is for 2D models."""
    if fmt is None:
        return "nifti" if pipe.image_dims == 3 else ("dicom" if pipe.image_format == "dicom" else "png")
    if fmt == "png" and pipe.image_dims != 2:
        raise LdmError("--format png is for models of 2D images; this model makes volumes (nifti | dicom)")
    return fmt


def _result(job: _SampleJob, mine: list[int], todo: list[int], n: int, memory: MemoryPlan) -> GenerateResult:
    """The result of a job before it runs: what is skipped, where, on what."""
    return GenerateResult(
        skipped=[sample_name(k) for k in mine if k not in set(todo)],
        out_dir=job.out_dir,
        shard=str(job.part),
        device=_device_name(job.pipe.device),
        precision=job.pipe.precision,
        memory=memory.summary(),
        others=n - len(mine),
    )


def _job_settings(pipe: LatentDiffusionPipeline, smp, steps: int, eta: float, fmt: str) -> dict[str, Any]:
    """The sampler, format and model settings a resumed folder must share (with the seed, guidance,
    conditions and memorisation threshold)."""
    return {
        "sampler": smp.name,
        "steps": steps,
        "eta": getattr(smp, "eta", eta),
        "spacing": smp.spacing,
        "format": fmt,
        "precision": pipe.precision,
        "autoencoder_sha256": pipe.ae_sha256,
        "ldm_sha256": file_sha256(pipe.ldm_path),
        **({"guide_ldm_sha256": pipe.guide_sha256} if pipe.guide_sha256 else {}),
    }


def _plan(pipe: LatentDiffusionPipeline, batch_size: int, decode_batch: int, max_memory_gb: float | None) -> MemoryPlan:
    """Memory plan of one batch (denoiser call + decode), measured on the device; errors if it cannot fit."""
    latent_shape = pipe.latent_shape
    depth, h, w = latent_shape[1:]
    probe_z = torch.zeros((1, *latent_shape), device=pipe.device)
    probe_t = torch.zeros(1, dtype=torch.long, device=pipe.device)

    def denoise_once():
        with autocast(pipe.device, pipe.precision):
            return pipe.ldm(probe_z, probe_t)

    def decode_once():
        with autocast(pipe.device, pipe.precision):
            return pipe.ae.decode(probe_z[:, :, 0], slice_positions(1, pipe.device))

    volume_shape = tuple(pipe.ae_config.volume_shape)
    return plan_memory(
        denoise_once,
        pipe.ldm,
        decode_once,
        pipe.ae,
        batch_size=batch_size,
        decode_batch=min(decode_batch, depth * batch_size),
        latent_shape=latent_shape,
        volume_shape=volume_shape,
        device=pipe.device,
        max_memory_gb=max_memory_gb,
    )


class _SampleJob:
    """The samples of one shard: sampled a batch at a time, written by a background thread."""

    def __init__(
        self,
        pipe: LatentDiffusionPipeline,
        smp,
        out_dir: Path,
        settings: dict[str, Any],
        fmt: str,
        conditions: dict[str, float | str],
        guidance: float,
        batch_size: int,
        decode_batch: int,
        compiled: bool,
        part,
        memorization_filter: MemorizationFilter | None,
    ):
        self.pipe, self.smp, self.out_dir, self.settings, self.fmt = pipe, smp, out_dir, settings, fmt
        self.conditions, self.guidance, self.batch_size, self.decode_batch = (
            conditions,
            guidance,
            batch_size,
            decode_batch,
        )
        self.compiled, self.part, self.memfilter = compiled, part, memorization_filter
        self.prov_dir = out_dir / "provenance"
        self.modality = training_modality(pipe)
        self.result = GenerateResult()

    def prepare(self, mine: list[int]) -> list[int]:
        """Create the output folders, check that a resumed folder holds the same job, clear a
        killed run's temp files; returns the samples still to make."""
        (self.out_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
        self.prov_dir.mkdir(exist_ok=True)
        if self.pipe.label_names:
            (self.out_dir / "labelsTr").mkdir(exist_ok=True)
        _check_resumable(self.prov_dir, self.settings)
        todo = [k for k in mine if not (self.prov_dir / f"{sample_name(k)}.json").is_file()]
        _remove_stale_temps(self.out_dir, todo)
        return todo

    def run(self, todo: list[int], console=None) -> None:
        """Sample batch b+1 while the files of batch b are written (compression then costs no
        sampling time); at most one batch waits, so memory stays bounded."""
        result, part = self.result, self.part
        t_start = time.perf_counter()
        with progress(console) as bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldmtool-writer") as writer:
            info = f"{len(result.skipped)} already done" + (f", shard {part} ({part.source})" if part.count > 1 else "")
            task = bar.add_task("sampling", total=len(todo), rate="", info=info)
            pending: Future | None = None

            def finish(job: Future) -> None:
                job.result()  # re-raises a failed write here
                rate = len(result.written) / (time.perf_counter() - t_start)
                bar.update(task, completed=len(result.written), rate=f"{rate:.2f} samples/s", info="")

            queue = [(k, 0) for k in todo]  # (sample index, attempt)
            while queue:
                batch, queue = queue[: self.batch_size], queue[self.batch_size :]
                t0 = time.perf_counter()
                items, again = self.sample_batch(batch)
                queue = again + queue  # replacements go first, so a sample's files appear soon
                per_sample = (time.perf_counter() - t0) / len(batch)
                if pending is not None:
                    finish(pending)
                pending = writer.submit(self.write_batch, items, per_sample, len(batch))
            if pending is not None:
                finish(pending)
        result.seconds = time.perf_counter() - t_start
        result.seconds_per_sample = result.seconds / max(1, len(result.written))

    def sample_batch(self, batch: list[tuple[int, int]]) -> tuple[list[tuple], list[tuple[int, int]]]:
        """Sample one batch of (index, attempt); returns the accepted (index, volume, extra
        provenance) and the (index, attempt) of candidates to draw again."""
        seeds = [sample_seed(self.settings["base_seed"], k, a) for k, a in batch]
        volumes = self.pipe.sample(
            seeds, sampler=self.smp, conditions=self.conditions, guidance=self.guidance, decode_batch=self.decode_batch
        )
        items, again = [], []
        for (k, attempt), vol in zip(batch, volumes):
            extra: dict[str, Any] = {}
            if self.memfilter is not None:
                chk = self.memfilter.check(vol.image)
                if chk.reject:
                    self.result.rejected += 1
                    if attempt + 1 >= MAX_ATTEMPTS:
                        raise LdmError(
                            f"{sample_name(k)}: {MAX_ATTEMPTS} candidates in a row were near-copies of training "
                            f"volumes (SSIM > {self.memfilter.threshold}); the model memorises, or the threshold is too low"
                        )
                    again.append((k, attempt + 1))
                    continue
                extra = {
                    "memorization_ssim": chk.score,
                    "nearest_training_case": chk.nearest,
                    "rejected_candidates": attempt,
                }
            items.append((k, vol, extra))
        return items, again

    def write_batch(self, items: list[tuple[int, SampledVolume, dict]], per_sample: float, batch_len: int) -> None:
        """Write accepted samples of one batch: files first (temp name → rename), provenance last."""
        for k, vol, extra in items:
            name = sample_name(k)
            files = self.write_files(name, vol)
            prov = {
                "sample": name,
                "index": k,
                "seed": vol.seed,
                **self.settings,
                **extra,
                "seconds": per_sample,
                "batch_size": batch_len,
                "decode_batch": self.decode_batch,
                "compiled": bool(self.compiled),
                "shard": str(self.part),
                "device": self.result.device,
                "files": files,
                "ae": str(self.pipe.ae_path),
                "ldm": str(self.pipe.ldm_path),
                "ldmtool_version": __version__,
                "torch_version": torch.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(self.prov_dir / f"{name}.json", json.dumps(prov, indent=2))
            self.result.written.append(name)

    def write_files(self, name: str, vol: SampledVolume) -> dict[str, str]:
        """The image (and label) files of one sample, NIfTI or DICOM; returns their relative paths.
        Several channels: one file per channel, nnU-Net's NAME_0000, NAME_0001, ... (`files["image"]`
        is channel 0000, `files["channels"]` names them all)."""
        affine = self.pipe.reference_affine
        image_vol = Volume(vol.image.astype(np.float32), affine, {"synthetic": True})
        label_vol = None if vol.label is None else Volume(vol.label, affine, {"synthetic": True})
        files = {}
        if self.pipe.image_dims == 2 and self.fmt != "nifti":
            return self.write_image_files(name, image_vol, label_vol)
        if self.fmt == "nifti":
            written = {}
            for c, (channel, part) in enumerate(zip(self.pipe.channel_names, channel_volumes(image_vol))):
                written[channel] = f"imagesTr/{name}_{c:04d}.nii.gz"
                write_nifti(part, self.out_dir / written[channel])
            files["image"] = next(iter(written.values()))
            if len(written) > 1:
                files["channels"] = written
            if label_vol is not None:
                files["label"] = f"labelsTr/{name}.nii.gz"
                write_nifti(label_vol, self.out_dir / files["label"])
            return files
        from ldmtool.io.dicom_seg import write_synthetic_seg
        from ldmtool.io.dicom_write import new_uid

        # one series per channel (image_0000, image_0001, ... of several), all with the SEG in one
        # study and one frame of reference
        study, frame = new_uid(), new_uid()
        parts = channel_volumes(image_vol)
        written = {}
        for c, (channel, part) in enumerate(zip(self.pipe.channel_names, parts)):
            written[channel] = f"dicom/{name}/image" + (f"_{c:04d}" if len(parts) > 1 else "")
            _replace_partial(self.out_dir / written[channel])
            write_dicom_series(
                part,
                self.out_dir / written[channel],
                series_description=f"SYNTHETIC ldmtool {name}" + (f" {channel}" if len(parts) > 1 else ""),
                modality=self.modality,
                study_uid=study,
                frame_of_reference_uid=frame,
                series_number=c + 1,
            )
        files["image"] = next(iter(written.values()))
        if len(written) > 1:
            files["channels"] = written
        if label_vol is not None:
            files["label"] = f"dicom/{name}/label.dcm"
            names = {int(v): k for k, v in self.pipe.label_names.items()}
            write_synthetic_seg(
                label_vol.array,
                self.out_dir / files["image"],
                names,
                self.out_dir / files["label"],
                series_description=f"SYNTHETIC ldmtool {name} label",
                version=__version__,
                series_number=len(parts) + 1,
            )
        return files

    def write_image_files(self, name: str, image: Volume, label: Volume | None) -> dict[str, str]:
        """A 2D sample as a PNG (in the training images' 8/16-bit type) or one DICOM file, its label
        map (if any) as a PNG; returns their relative paths."""
        from ldmtool.io.image2d import write_dicom_2d, write_png

        files = {}
        if self.fmt == "png":
            dtype = self.pipe.image_dtype if self.pipe.image_dtype in ("uint8", "uint16") else "uint16"
            written = {}
            for c, (channel, part) in enumerate(zip(self.pipe.channel_names, channel_volumes(image))):
                written[channel] = f"imagesTr/{name}_{c:04d}.png"
                write_png(part, self.out_dir / written[channel], dtype=dtype)
            files["image"] = next(iter(written.values()))
            if len(written) > 1:
                files["channels"] = written
        else:
            files["image"] = f"dicom/{name}.dcm"
            write_dicom_2d(
                image,
                self.out_dir / files["image"],
                modality=self.modality,
                series_description=f"SYNTHETIC ldmtool {name}",
            )
        if label is not None:
            files["label"] = f"labelsTr/{name}.png"
            write_png(label, self.out_dir / files["label"])
        return files


def channel_volumes(volume: Volume) -> list[Volume]:
    """The channels of an image as single-channel volumes: itself when (I, J, K), one per C of (I, J, K, C)."""
    if volume.array.ndim == 3:
        return [volume]
    return [volume.with_array(np.ascontiguousarray(volume.array[..., c])) for c in range(volume.array.shape[3])]


def training_modality(pipe: LatentDiffusionPipeline) -> str:
    """The DICOM Modality of the autoencoder's training data (recorded by train-ae; OT for older checkpoints)."""
    modality = pipe.ae_config.get("modality") or "OT"
    if pipe.image_dims == 2 and modality.isalpha() and len(modality) <= 16:  # 2D: CR, DX, MG, ... as read
        return modality
    if modality not in MODALITIES:
        raise LdmError(
            f"{pipe.ae_path}: field 'modality' is {modality!r}, expected one of {', '.join(MODALITIES)}; "
            "the checkpoint is damaged or was edited by hand"
        )
    return modality


def _check_resumable(prov_dir: Path, settings: dict) -> None:
    """Samples already in the folder must come from the same models and settings, or a re-run
    would mix two different sample sets. Every run checks this, so checking one existing
    provenance file is enough."""
    path = next(iter(sorted(prov_dir.glob("synth_*.json"))), None)
    if path is None:
        return
    try:
        prov = json.loads(path.read_text())
    except (OSError, ValueError):
        raise LdmError(f"{path} is unreadable; remove it to regenerate that sample") from None
    diff = [k for k, v in settings.items() if prov.get(k) != v]
    if diff:
        raise LdmError(
            f"{prov_dir.parent} already holds samples made with other {', '.join(diff)}; "
            "use another --out (or the same settings to resume)"
        )


def _remove_stale_temps(out_dir: Path, todo: list[int]) -> None:
    """Remove temp files a killed run left for samples this process is about to make. Sample k
    belongs to exactly one shard, so no other live process of the same job writes its files."""
    from ldmtool.io.atomic import _remove

    for k in todo:
        name = sample_name(k)
        for sub in ("imagesTr", "labelsTr", "provenance", "dicom", f"dicom/{name}"):
            folder = out_dir / sub
            if folder.is_dir():
                for p in folder.glob(f".{name}*.tmp-*"):
                    _remove(p)
            if folder.is_dir() and sub.startswith("dicom/"):
                for p in folder.glob(".*.tmp-*"):
                    _remove(p)


def _replace_partial(folder: Path) -> None:
    """Remove a DICOM series folder left by a run that was killed before its provenance was written."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _write_dataset_json(
    out_dir: Path, label_names: dict[str, int], n: int, fmt: str, channel_names: list[str] | None = None
) -> None:
    """nnU-Net style dataset.json, so the sample folder is itself a training set (its channels
    named as the training data's)."""
    names = channel_names if channel_names and len(channel_names) > 1 else ["image"]
    meta: dict[str, Any] = {
        "name": "ldmtool synthetic samples",
        "channel_names": {str(c): name for c, name in enumerate(names)},
        "labels": label_names or {"background": 0},
        "numTraining": n,
        "file_ending": {"nifti": ".nii.gz", "png": ".png"}.get(fmt, ".dcm"),
        "synthetic": True,
    }
    atomic_write_text(out_dir / "dataset.json", json.dumps(meta, indent=2))
