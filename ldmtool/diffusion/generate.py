"""Generate image+mask volumes: noise → sampler → latent volume → slice-wise decode → files.

Every sample k has its own seed f(base_seed, k), so what is generated does not depend on the
batch size or on how a job is split. Each output is written to a temp name and renamed; the
provenance JSON is written last and marks a sample as finished, so a re-run skips finished
samples and never leaves a half-written one behind.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmtool import __version__
from ldmtool.data.prepared import slices_to_volume
from ldmtool.diffusion.pipeline import decode_latents
from ldmtool.diffusion.samplers import make_sampler
from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_write_text
from ldmtool.models.denoiser import guided
from ldmtool.models.checkpoint import file_sha256


def sample_seed(base_seed: int, index: int, attempt: int = 0) -> int:
    """Seed of sample `index`: independent of batching and sharding. `attempt` > 0 gives the
    replacement candidates of a sample rejected as a near-copy of a training volume."""
    entropy = [int(base_seed), int(index)] + ([int(attempt)] if attempt else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


MAX_ATTEMPTS = 20  # candidates per sample under --reject-memorized


def sample_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample: it draws the sample's initial noise, then any noise a
    stochastic sampler adds, so a sample depends on its own seed only (not on batch or device)."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def initial_noise(shape: tuple[int, ...], generators: list[torch.Generator]) -> torch.Tensor:
    """(B, *shape) standard normal noise, row b drawn from generators[b]."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


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


def _conditioning(ldm_config: dict, conditions: dict[str, float], batch: int, device):
    """Standardised attribute tensor and mask for the requested conditions (None if none)."""
    if not conditions:
        return None, None
    cond = ldm_config.get("conditioning") or {}
    if not cond.get("attributes"):
        raise LdmError("this latent diffusion model was trained without conditioning; retrain with --condition-on lesion")
    names = cond["attributes"]
    mean, std = np.asarray(cond["mean"]), np.asarray(cond["std"])
    a = np.zeros(len(names), dtype=np.float32)
    m = np.zeros(len(names), dtype=np.float32)
    for name, value in conditions.items():
        i = names.index(name)
        a[i] = (value - mean[i]) / std[i]
        m[i] = 1.0
    rep = lambda v: torch.from_numpy(v)[None].repeat(batch, 1).to(device)  # noqa: E731
    return rep(a), rep(m)


def generate(
    ae_path: Path,
    ldm_path: Path,
    out_dir: Path,
    *,
    n: int,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    batch_size: int = 4,
    decode_batch: int = 64,
    seed: int = 0,
    fmt: str = "nifti",
    conditions: dict[str, float] | None = None,
    guidance: float = 1.0,
    device: torch.device = torch.device("cpu"),
    precision: str = "auto",
    compile: bool = False,
    shard: str | None = None,
    max_memory_gb: float | None = None,
    reject_memorized: float | None = None,
    train_dir: Path | None = None,
    console=None,
) -> GenerateResult:
    """Sample `n` image+mask volumes into `out_dir` (nnU-Net layout + provenance + montage).

    This process makes the samples of its shard (see `resolve_shard`) that are not finished yet,
    a batch at a time: latent sampling under `torch.inference_mode` (and autocast on CUDA), then
    slice-batched decoding, then each file written to a temp name and renamed; the provenance
    JSON, written last, marks the sample finished."""
    from ldmtool.data.preprocess import PreprocessConfig, denormalise
    from ldmtool.diffusion.resources import plan_memory, resolve_shard, shard_device
    from ldmtool.runtime import resolve_precision
    from ldmtool.evaluate.montage import write_montage
    from ldmtool.io import Volume, write_dicom_series, write_nifti
    from ldmtool.models.position import slice_positions
    from ldmtool.models.loaders import load_autoencoder
    from ldmtool.runtime import autocast, progress
    from ldmtool.models.loaders import load_denoiser

    if n < 1:
        raise LdmError("--n must be at least 1")
    if fmt not in ("nifti", "dicom"):
        raise LdmError(f"--format must be nifti or dicom; got {fmt!r}")
    part = resolve_shard(shard)
    device = shard_device(device)
    precision = resolve_precision(precision, device)
    ae, ae_cfg = load_autoencoder(ae_path, device)
    ldm, ldm_cfg = load_denoiser(ldm_path, device)
    ae_hash = file_sha256(ae_path)
    if ldm_cfg.get("autoencoder_sha256") != ae_hash:
        raise LdmError(f"{ldm_path} was trained on a different autoencoder than {ae_path}")
    from ldmtool.config import DenoiserConfig, from_dict

    dcfg = from_dict(DenoiserConfig, ldm_cfg["model"])
    smp = make_sampler(sampler, dcfg, steps, eta, spacing)
    latent_shape = tuple(ldm_cfg["latent_shape"])
    mean = torch.tensor(ldm_cfg["latent_mean"], device=device)[None, :, None, None, None]
    std = torch.tensor(ldm_cfg["latent_std"], device=device)[None, :, None, None, None]
    affine = np.asarray(ae_cfg["reference_affine"])
    pre = PreprocessConfig.from_dict(ae_cfg["preprocess"])
    irange = ae_cfg.get("intensity_range")
    label_names = ae_cfg.get("label_names") or {}
    _check_conditions(ldm_cfg, conditions or {})
    memfilter = None
    if reject_memorized is not None:
        if train_dir is None:
            raise LdmError("--reject-memorized needs --train DIR: the training volumes to compare against")
        from ldmtool.evaluate.privacy import MemorizationFilter

        memfilter = MemorizationFilter(Path(train_dir), threshold=reject_memorized, device=device)

    # Memory: fail now, not after hours, if one batch cannot fit.
    depth, h, w = latent_shape[1:]
    probe_z = torch.zeros((1, *latent_shape), device=device)
    probe_t = torch.zeros(1, dtype=torch.long, device=device)

    def denoise_once():
        with autocast(device, precision):
            return ldm(probe_z, probe_t)

    def decode_once():
        with autocast(device, precision):
            return ae.decode(probe_z[:, :, 0], slice_positions(1, device))

    volume_shape = tuple(ae_cfg["volume_shape"]) if ae_cfg.get("volume_shape") else (depth, h * 4, w * 4)
    memory = plan_memory(
        denoise_once, ldm, decode_once, ae, batch_size=batch_size, decode_batch=min(decode_batch, depth * batch_size),
        latent_shape=latent_shape, volume_shape=volume_shape, device=device, max_memory_gb=max_memory_gb,
    )
    denoiser = ldm
    if compile:
        try:
            denoiser = torch.compile(ldm)
        except Exception as exc:  # noqa: BLE001 - torch.compile raises many kinds
            raise LdmError(f"--compile failed: {type(exc).__name__}: {exc}") from None

    out_dir = Path(out_dir)
    (out_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out_dir / "provenance").mkdir(exist_ok=True)
    if label_names:
        (out_dir / "labelsTr").mkdir(exist_ok=True)
    prov_dir = out_dir / "provenance"
    hashes = {"autoencoder_sha256": ae_hash, "ldm_sha256": file_sha256(ldm_path)}
    settings = {"base_seed": seed, "sampler": smp.name, "steps": steps, "eta": getattr(smp, "eta", eta),
                "spacing": smp.spacing, "guidance": guidance, "conditions": conditions or {}, "format": fmt,
                "precision": precision, "reject_memorized": reject_memorized, **hashes}
    _check_resumable(prov_dir, settings)
    mine = [k for k in range(n) if part.owns(k)]
    todo = [k for k in mine if not (prov_dir / f"{sample_name(k)}.json").is_file()]
    _remove_stale_temps(out_dir, todo)
    result = GenerateResult(
        skipped=[sample_name(k) for k in mine if k not in set(todo)], out_dir=out_dir, shard=str(part),
        device=_device_name(device), precision=precision, memory=memory.summary(), others=n - len(mine),
    )
    def write_batch(items: list[tuple], per_sample: float, batch_len: int) -> None:
        """Write accepted samples of one batch: files first (temp name → rename), provenance last."""
        for k, sample_seed_k, img, lab, extra in items:
            name = sample_name(k)
            files = {}
            image_vol = Volume(img.astype(np.float32), affine, {"synthetic": True})
            label_vol = None if lab is None else Volume(lab, affine, {"synthetic": True})
            if fmt == "nifti":
                files["image"] = f"imagesTr/{name}_0000.nii.gz"
                write_nifti(image_vol, out_dir / files["image"])
                if label_vol is not None:
                    files["label"] = f"labelsTr/{name}.nii.gz"
                    write_nifti(label_vol, out_dir / files["label"])
            else:
                files["image"] = f"dicom/{name}/image"
                _replace_partial(out_dir / files["image"])
                write_dicom_series(image_vol, out_dir / files["image"], series_description=f"SYNTHETIC ldmtool {name}")
                if label_vol is not None:
                    files["label"] = f"dicom/{name}/label"
                    _replace_partial(out_dir / files["label"])
                    write_dicom_series(label_vol, out_dir / files["label"], series_description=f"SYNTHETIC ldmtool {name} label")
            prov = {
                "sample": name,
                "index": k,
                "seed": sample_seed_k,
                **settings,
                **extra,
                "seconds": per_sample,
                "batch_size": batch_len,
                "decode_batch": decode_batch,
                "compiled": bool(compile),
                "shard": str(part),
                "device": result.device,
                "files": files,
                "ae": str(ae_path),
                "ldm": str(ldm_path),
                "ldmtool_version": __version__,
                "torch_version": torch.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(prov_dir / f"{name}.json", json.dumps(prov, indent=2))
            result.written.append(name)

    # Files of batch b are written by one background thread while batch b+1 is sampled (file
    # compression then costs no sampling time); at most one batch waits, so memory stays bounded.
    from concurrent.futures import ThreadPoolExecutor

    t_start = time.perf_counter()
    with progress(console) as bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldmtool-writer") as writer:
        info = f"{len(result.skipped)} already done" + (f", shard {part} ({part.source})" if part.count > 1 else "")
        task = bar.add_task("sampling", total=len(todo), rate="", info=info)
        pending = None

        def finish(job) -> None:
            job.result()  # re-raises a failed write here
            rate = len(result.written) / (time.perf_counter() - t_start)
            bar.update(task, completed=len(result.written), rate=f"{rate:.2f} samples/s", info="")

        queue = [(k, 0) for k in todo]  # (sample index, attempt)
        while queue:
            batch, queue = queue[:batch_size], queue[batch_size:]
            seeds = [sample_seed(seed, k, a) for k, a in batch]
            t0 = time.perf_counter()
            with torch.inference_mode():
                gens = sample_generators(seeds)
                x = initial_noise(latent_shape, gens).to(device)
                attrs, mask = _conditioning(ldm_cfg, conditions or {}, len(batch), device)
                with autocast(device, precision):
                    z = smp(guided(denoiser, attrs, mask, guidance), x, generator=gens)
                    z = z.float() * std + mean
                    images, labels = decode_latents(ae, z, decode_batch, labels_only=True)
            items, again = [], []
            for j, (k, attempt) in enumerate(batch):
                img = slices_to_volume(images[j].float().numpy())
                if irange is not None:
                    img = denormalise(img, irange, pre)
                lab = None if labels is None else slices_to_volume(labels[j].numpy())
                extra = {}
                if memfilter is not None:
                    chk = memfilter.check(img)
                    if chk.reject:
                        result.rejected += 1
                        if attempt + 1 >= MAX_ATTEMPTS:
                            raise LdmError(
                                f"{sample_name(k)}: {MAX_ATTEMPTS} candidates in a row were near-copies of training "
                                f"volumes (SSIM > {reject_memorized}); the model memorises, or the threshold is too low"
                            )
                        again.append((k, attempt + 1))
                        continue
                    extra = {"memorization_ssim": chk.score, "nearest_training_case": chk.nearest,
                             "rejected_candidates": attempt}
                items.append((k, seeds[j], img, lab, extra))
            queue = again + queue  # replacements go first, so a sample's files appear soon
            per_sample = (time.perf_counter() - t0) / len(batch)
            if pending is not None:
                finish(pending)
            pending = writer.submit(write_batch, items, per_sample, len(batch))
        if pending is not None:
            finish(pending)
    result.seconds = time.perf_counter() - t_start
    result.seconds_per_sample = result.seconds / max(1, len(result.written))
    _write_dataset_json(out_dir, label_names, n, fmt)
    if fmt == "nifti" and part.index == 0:
        write_montage(out_dir, out_dir / "montage.png", max_samples=8)
    return result


def _check_conditions(ldm_cfg: dict, conditions: dict[str, float]) -> None:
    if conditions and not (ldm_cfg.get("conditioning") or {}).get("attributes"):
        raise LdmError("this latent diffusion model was trained without conditioning; retrain with --condition-on lesion")


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
        for sub in ("imagesTr", "labelsTr", "provenance", f"dicom/{name}"):
            folder = out_dir / sub
            if folder.is_dir():
                for p in folder.glob(f".{name}*.tmp-*"):
                    _remove(p)
            if folder.is_dir() and sub.startswith("dicom"):
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


def _write_dataset_json(out_dir: Path, label_names: dict[str, int], n: int, fmt: str) -> None:
    """nnU-Net style dataset.json, so the sample folder is itself a training set."""
    meta: dict[str, Any] = {
        "name": "ldmtool synthetic samples",
        "channel_names": {"0": "image"},
        "labels": label_names or {"background": 0},
        "numTraining": n,
        "file_ending": ".nii.gz" if fmt == "nifti" else ".dcm",
        "synthetic": True,
    }
    atomic_write_text(out_dir / "dataset.json", json.dumps(meta, indent=2))
