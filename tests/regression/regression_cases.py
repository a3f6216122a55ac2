"""The fixed-seed runs of `sample`, `impute` and `segment` whose outputs must not change.

Shared by `make_fixtures.py` (which records the reference hashes) and `test_regression.py`.
Hashes are of the voxel arrays and affines (not of the .nii.gz bytes, whose gzip header holds a time).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
TINY_YAML = HERE.parent.parent / "examples" / "tiny.yaml"


def run_ldmtool(*args) -> None:
    from ldmtool.cli.main import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["--quiet", *[str(a) for a in args]])
    if code != 0:
        raise AssertionError(f"ldmtool {' '.join(map(str, args))} exited {code}")


def run_cases(root: Path) -> Path:
    """Run every case into `root` (a fresh folder) and return it."""
    m = MODELS
    data = root / "data"
    run_ldmtool("--seed", 3, "demo-data", data, "--n", 2, "--shape", "32,32,16")
    case = data / "imagesTr" / "phantom_000_0000.nii.gz"
    run_ldmtool(
        "--seed",
        5,
        "sample",
        "--ae",
        m / "ae",
        "--ldm",
        m / "ldm",
        "--out",
        root / "ddim",
        "--n",
        3,
        "--steps",
        4,
        "--batch-size",
        2,
    )
    run_ldmtool(
        "--seed",
        6,
        "sample",
        "--ae",
        m / "ae",
        "--ldm",
        m / "ldm",
        "--out",
        root / "ddim_eta",
        "--n",
        2,
        "--steps",
        3,
        "--eta",
        1,
    )
    run_ldmtool(
        "--seed",
        7,
        "sample",
        "--ae",
        m / "ae",
        "--ldm",
        m / "ldm",
        "--out",
        root / "dpm",
        "--n",
        2,
        "--steps",
        4,
        "--sampler",
        "dpmpp2m",
        "--spacing",
        "linspace",
    )
    run_ldmtool(
        "--seed",
        8,
        "sample",
        "--ae",
        m / "ae",
        "--ldm",
        m / "ldmc",
        "--out",
        root / "cond",
        "--n",
        2,
        "--steps",
        3,
        "--condition",
        "lesion_volume=5",
        "--guidance",
        2,
    )
    run_ldmtool(
        "--seed",
        9,
        "impute",
        case,
        "--ae",
        m / "ae",
        "--ldm",
        m / "ldm",
        "--out",
        root / "imp",
        "--missing-slices",
        "3,7-9",
        "--steps",
        4,
    )
    run_ldmtool(
        "--seed",
        10,
        "impute",
        case,
        "--ae",
        m / "ae",
        "--ldm",
        m / "ldm",
        "--out",
        root / "imp2",
        "--simulate-mcar",
        0.3,
        "--steps",
        3,
        "--samples",
        2,
        "--eta",
        1,
    )
    run_ldmtool("--seed", 11, "segment", case, "--model", m / "seg", "--out", root / "seg")
    run_ldmtool(
        "--seed", 12, "segment", case, "--model", m / "seg", "--out", root / "seg2", "--samples", 2, "--steps", 2
    )
    run_ldmtool("--seed", 13, "segment", case, "--model", m / "unet", "--out", root / "unet")
    return root


def train_models(root: Path) -> Path:
    """Train the tiny reference models into `root` (ae, ldm, ldmc, seg, unet) and return it."""
    data = root / "data"
    run_ldmtool("demo-data", data, "--n", 6, "--shape", "32,32,16")
    run_ldmtool("train-ae", data, "--out", root / "ae", "--config", TINY_YAML)
    run_ldmtool("train-ldm", data, "--ae", root / "ae", "--out", root / "ldm", "--config", TINY_YAML)
    run_ldmtool(
        "train-ldm",
        data,
        "--ae",
        root / "ae",
        "--out",
        root / "ldmc",
        "--config",
        TINY_YAML,
        "--condition-on",
        "lesion",
        "--steps",
        2,
    )
    run_ldmtool("train-seg", data, "--out", root / "seg", "--config", TINY_YAML)
    run_ldmtool("train-seg", data, "--out", root / "unet", "--config", TINY_YAML, "--arch", "unet")
    return root


MODEL_NAMES = ("ae", "ldm", "ldmc", "seg", "unet")


def machine() -> str:
    """What float results depend on besides the code: torch's version, the CPU kernels it picked
    (AVX2, AVX512, ...), the thread count and the processor. Bit-identity holds only on the same machine kind."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s), {cpu}"


def fingerprint(arr: np.ndarray) -> list[float]:
    """A rounding-tolerant summary of an array: its mean, its standard deviation and the means of
    up to 4 blocks per axis (a flat tensor is first folded into 16 rows, so 4 × 4 blocks). Another machine's float rounding moves
    these by far less than a change of behaviour does."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim < 2:
        a = a.reshape(-1)
        a = a[: len(a) // 16 * 16].reshape(16, -1) if a.size >= 16 else a.reshape(1, -1)
    blocks = a
    for axis in range(a.ndim):
        n = min(4, a.shape[axis])
        parts = np.array_split(np.arange(a.shape[axis]), n)
        blocks = np.stack([blocks.take(p, axis=axis).mean(axis=axis) for p in parts], axis=axis)
    return [float(a.mean()), float(a.std()), *map(float, blocks.reshape(-1))]


def fingerprint_models(root: Path) -> dict[str, list[float]]:
    """{model name: fingerprints of its checkpoint's tensors (each flattened), concatenated in name order}."""
    from safetensors.numpy import load_file

    out = {}
    for name in MODEL_NAMES:
        tensors = load_file(str(root / name / "model.safetensors"))
        out[f"train/{name}"] = [v for key in sorted(tensors) for v in fingerprint(tensors[key].reshape(-1))]
    return out


def fingerprint_outputs(root: Path) -> dict[str, list[float]]:
    """{relative path: fingerprint of the voxel array} for every NIfTI under root."""
    out = {}
    for path in sorted(root.rglob("*.nii.gz")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith("data/"):
            img = nib.load(str(path))
            out[rel] = fingerprint(np.asanyarray(img.dataobj)) + [float(v) for v in np.asarray(img.affine).ravel()]
    return out


def hash_models(root: Path) -> dict[str, str]:
    """{model name: sha256 of its checkpoint's tensors (names, dtypes, shapes, bytes)}."""
    from safetensors.numpy import load_file

    out = {}
    for name in MODEL_NAMES:
        tensors = load_file(str(root / name / "model.safetensors"))
        h = hashlib.sha256()
        for key in sorted(tensors):
            arr = tensors[key]
            h.update(f"{key}{arr.dtype.str}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        out[f"train/{name}"] = h.hexdigest()
    return out


def hash_outputs(root: Path) -> dict[str, str]:
    """{relative path: sha256 of dtype, shape, voxel bytes and affine} for every NIfTI under root."""
    out = {}
    for path in sorted(root.rglob("*.nii.gz")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("data/"):
            continue
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
        h = hashlib.sha256()
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
        h.update(np.asarray(img.affine, dtype=np.float64).tobytes())
        out[rel] = h.hexdigest()
    return out
