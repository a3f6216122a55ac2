"""Procedural head phantoms, so every command can run without user data.

A phantom is an MR-like head: an ellipsoidal head with a bright thin skull/scalp ring, a dark
CSF gap, brain tissue with a smooth grey/white texture, two dark lateral ventricles and zero to
three tumour-like lesions (bright, irregular, with a slightly darker rim). Arrays are in RAS
voxel order: I = x (left -> right), J = y (posterior -> anterior), K = z (inferior -> superior).

Labels: 0 background, 1 head (skull + brain + ventricles), 2 lesion (overrides 1).

Several contrasts (`make_phantom(..., contrasts=("t1", "t2", "flair"))`): the same head, ventricles
and lesions rendered with each contrast's tissue intensities (`CONTRASTS`), every channel with
its own bias field and noise. Lesions are dark in T1, bright in T2 and brightest in FLAIR, where
CSF is suppressed; T1ce adds an enhancing rim.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_write_text
from ldmtool.io.nifti import write_nifti
from ldmtool.io.volume import Volume

__all__ = ["CONTRASTS", "DEMO_DATASET_NAME", "make_phantom", "write_demo_dataset"]

DEMO_DATASET_NAME = "ldmtool demo phantoms"

# Intensities in arbitrary MR-like units (roughly [0, 1]).
_SKULL = 0.90
_CSF_GAP = 0.18
_GREY = 0.42
_WHITE = 0.58
_VENTRICLE = 0.14


@dataclass(frozen=True)
class Contrast:
    """Tissue intensities of one MR contrast (arbitrary units, roughly [0, 1])."""

    skull: float
    csf: float  # the CSF gap under the skull
    grey: float
    white: float
    ventricle: float
    lesion: float  # lesion core
    rim: float  # lesion rim


# Relative T1/T2/FLAIR tissue contrast as in brain MR: CSF dark in T1 and FLAIR, bright in T2;
# white matter brighter than grey in T1, darker in T2/FLAIR; lesions (oedema) hypointense in T1,
# hyperintense in T2 and FLAIR; T1 with contrast agent: an enhancing rim.
CONTRASTS: dict[str, Contrast] = {
    "t1": Contrast(skull=0.80, csf=0.12, grey=0.45, white=0.62, ventricle=0.10, lesion=0.25, rim=0.30),
    "t1ce": Contrast(skull=0.80, csf=0.12, grey=0.45, white=0.62, ventricle=0.10, lesion=0.30, rim=0.85),
    "t2": Contrast(skull=0.35, csf=0.90, grey=0.55, white=0.42, ventricle=0.92, lesion=0.78, rim=0.70),
    "flair": Contrast(skull=0.40, csf=0.10, grey=0.55, white=0.45, ventricle=0.08, lesion=0.92, rim=0.82),
}


def check_contrasts(names) -> tuple[str, ...]:
    """Contrast names as given (case-insensitive, no repeats), each one of `CONTRASTS`; else an LdmError."""
    out = tuple(str(n).strip().lower() for n in names)
    unknown = [n for n in out if n not in CONTRASTS]
    if unknown or not out:
        raise LdmError(f"unknown contrast {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(CONTRASTS)}")
    if len(set(out)) != len(out):
        raise LdmError(f"contrasts must differ from each other; got {', '.join(out)}")
    return out


_SKULL_THICKNESS = 2.0  # voxels (in-plane units) of bright scalp/skull
_GAP_THICKNESS = 1.0  # voxels of dark CSF between skull and brain


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    std = float(field.std())
    return (field - field.mean()) / (std if std > 0 else 1.0)


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise LdmError(f"phantom shape must be three integers, got {shape!r}") from None
    if len(out) != 3 or min(out) < 8:
        raise LdmError(f"phantom shape must be three integers >= 8, got {shape!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class _HeadFrame:
    """Voxel coordinates relative to the head centre, in the grid and in the rotated head frame.

    x, y, z broadcast over the (I, J, K) grid; xr is left-right and yr back-front in the head
    frame; ax, ay, az are the ellipsoid's semi-axes in voxels.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    xr: np.ndarray
    yr: np.ndarray
    ax: float
    ay: float
    az: float


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (64, 64, 32),
    lesions: bool = True,
    contrasts: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one head phantom (`lesions` False: its lesion-free twin, the same head and noise
    from the same generator state, without the lesions; `contrasts`: names of `CONTRASTS`, for an
    image of one channel per contrast, (I, J, K, C)).

    Args:
        rng: the only source of randomness; the same generator state gives identical output.
        shape: (I, J, K) voxel grid, RAS order. Sizes are relative to the grid, so other shapes
            give the same anatomy at another resolution (lesion radii are 3-7 voxels in-plane at
            64 voxels and scale with the in-plane size). The in-plane voxel is assumed to be
            3/4 of the slice thickness (e.g. 3 x 3 x 4 mm), so lesions are round in world space.

    Returns:
        (image float32 in roughly [0, 1], label uint8 with values in {0, 1, 2}).
    """
    nx, ny, nz = _check_shape(shape)
    names = None if contrasts is None else check_contrasts(contrasts)
    zr = 4.0 / 3.0  # slice thickness in units of the in-plane voxel size
    scale = min(nx, ny) / 64.0
    frame = _head_frame(rng, (nx, ny, nz))
    head, skull, brain = _head_masks(rng, frame)
    # Depth into the brain in in-plane voxel units (slices are thicker), for lesion placement.
    brain_depth = ndi.distance_transform_edt(brain, sampling=(1.0, 1.0, zr))
    image, texture, white = _brain_image(rng, head, skull, brain, brain_depth, scale)
    ventricles = _ventricles(rng, frame, brain)
    image[ventricles] = _VENTRICLE
    # the lesions are drawn either way (the same random numbers follow), painted only when asked
    drawn, core = _add_lesions(rng, image if lesions else image.copy(), texture, brain_depth, ventricles, scale, zr)
    if names is None:
        image = _acquire(rng, image, frame)
    else:  # the same anatomy in every contrast, each channel acquired with its own bias and noise
        tissues = (head, skull, brain, white, texture, ventricles, (drawn & ~core, core) if lesions else None)
        image = np.stack([_acquire(rng, _render(CONTRASTS[n], *tissues), frame) for n in names], axis=-1)

    label = np.zeros(head.shape, dtype=np.uint8)
    label[head] = 1
    if lesions:
        label[drawn] = 2
    return image, label


def _head_frame(rng: np.random.Generator, shape: tuple[int, int, int]) -> _HeadFrame:
    """Draw the head ellipsoid's size, in-plane rotation and shift; return its coordinate frame."""
    nx, ny, nz = shape
    ax = rng.uniform(0.70, 0.80) * nx / 2.0  # left-right semi-axis (heads are narrower ...)
    ay = rng.uniform(0.75, 0.85) * ny / 2.0  # ... than they are long front-to-back)
    az = rng.uniform(0.80, 0.95) * nz / 2.0
    theta = np.deg2rad(rng.uniform(-10.0, 10.0))
    cx = (nx - 1) / 2.0 + rng.uniform(-0.04, 0.04) * nx
    cy = (ny - 1) / 2.0 + rng.uniform(-0.04, 0.04) * ny
    cz = (nz - 1) / 2.0

    x = np.arange(nx, dtype=np.float32)[:, None, None] - np.float32(cx)
    y = np.arange(ny, dtype=np.float32)[None, :, None] - np.float32(cy)
    z = np.arange(nz, dtype=np.float32)[None, None, :] - np.float32(cz)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    xr = c * x + s * y  # head frame: xr left-right, yr back-front
    yr = -s * x + c * y
    return _HeadFrame(x, y, z, xr, yr, ax, ay, az)


def _head_masks(rng: np.random.Generator, f: _HeadFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head, skull, brain) masks: an egg-shaped head, a thin outer skull, the brain inside the CSF gap."""
    # Egg-shaped: a little narrower at the front than at the back.
    width = f.ax * (1.0 - np.float32(rng.uniform(0.05, 0.10)) * np.clip(f.yr / f.ay, -1.0, 1.0))
    head = (f.xr / width) ** 2 + (f.yr / f.ay) ** 2 + (f.z / f.az) ** 2 <= 1.0
    depth = ndi.distance_transform_edt(head)  # in voxels; 1 at the outer surface
    skull = head & (depth <= _SKULL_THICKNESS)
    brain = head & (depth > _SKULL_THICKNESS + _GAP_THICKNESS)
    return head, skull, brain


def _brain_image(
    rng: np.random.Generator,
    head: np.ndarray,
    skull: np.ndarray,
    brain: np.ndarray,
    brain_depth: np.ndarray,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Intensities of skull, CSF gap and brain (grey cortex over white matter, boundary wobbling).

    Returns:
        (image, texture, white): the image, the smooth noise field that textures the tissue and
        the white-matter fraction of each voxel.
    """
    wobble = _smooth_noise(rng, head.shape, 3.0 * scale)
    texture = _smooth_noise(rng, head.shape, 1.5 * scale)
    cortex = 3.5 * scale + 1.5 * scale * wobble
    white = 1.0 / (1.0 + np.exp(-(brain_depth - cortex) / (0.7 * scale)))
    image = np.zeros(head.shape, dtype=np.float32)
    image[head] = _CSF_GAP
    tissue = _GREY + (_WHITE - _GREY) * white + 0.025 * texture
    image[brain] = tissue[brain]
    image[skull] = _SKULL
    return image, texture, white


def _render(c: Contrast, head, skull, brain, white, texture, ventricles, lesion_parts) -> np.ndarray:
    """The anatomy in one contrast's intensities (`lesion_parts`: (rim, core) masks, or None)."""
    image = np.zeros(head.shape, dtype=np.float32)
    image[head] = c.csf
    tissue = c.grey + (c.white - c.grey) * white + 0.025 * texture
    image[brain] = tissue[brain]
    image[skull] = c.skull
    image[ventricles] = c.ventricle
    if lesion_parts is not None:
        rim, core = lesion_parts
        image[rim] = c.rim
        image[core] = c.lesion + 0.02 * texture[core]
    return image


def _ventricles(rng: np.random.Generator, f: _HeadFrame, brain: np.ndarray) -> np.ndarray:
    """Two lateral ventricles near the centre, inside the brain: close at the front, diverging towards the back."""
    ventricles = np.zeros(brain.shape, dtype=bool)
    v_off = rng.uniform(0.10, 0.14) * f.ax
    v_len = rng.uniform(0.30, 0.38) * f.ay
    v_wid = rng.uniform(0.07, 0.10) * f.ax
    v_hgt = rng.uniform(0.18, 0.25) * f.az
    v_y = rng.uniform(-0.05, 0.05) * f.ay
    v_z = rng.uniform(0.0, 0.10) * f.az
    for side in (-1.0, 1.0):
        phi = np.float32(-side * np.deg2rad(rng.uniform(8.0, 16.0)))
        dx = f.xr - np.float32(side * v_off)
        dy = f.yr - np.float32(v_y)
        u = np.cos(phi) * dx - np.sin(phi) * dy
        v = np.sin(phi) * dx + np.cos(phi) * dy
        ventricles |= (u / v_wid) ** 2 + (v / v_len) ** 2 + ((f.z - v_z) / v_hgt) ** 2 <= 1.0
    return ventricles & brain


def _add_lesions(
    rng: np.random.Generator,
    image: np.ndarray,
    texture: np.ndarray,
    brain_depth: np.ndarray,
    ventricles: np.ndarray,
    scale: float,
    zr: float,
) -> np.ndarray:
    """Paint zero to three lesions (bright core, slightly darker rim) into `image`; returns their
    mask and that of their cores."""
    lesions = np.zeros(image.shape, dtype=bool)
    cores = np.zeros(image.shape, dtype=bool)
    n_lesions = int(rng.integers(0, 4))
    for _ in range(n_lesions):
        blob = _place_lesion(rng, brain_depth, ventricles, lesions, scale, zr)
        if blob is None:
            continue
        sl, mask = blob
        core = mask & ndi.binary_erosion(mask)
        rim = mask & ~core
        level = rng.uniform(0.82, 0.88)
        patch = image[sl]
        patch[rim] = level - rng.uniform(0.04, 0.06)
        patch[core] = level + 0.02 * texture[sl][core]
        lesions[sl] |= mask
        cores[sl] |= core
    return lesions, cores


def _acquire(rng: np.random.Generator, image: np.ndarray, f: _HeadFrame) -> np.ndarray:
    """Acquisition: partial volume blur, a smooth linear bias field and Rician noise."""
    nx, ny, nz = image.shape
    image = ndi.gaussian_filter(image, 0.5)
    grad = rng.standard_normal(3)
    grad *= rng.uniform(0.02, 0.06) / max(float(np.linalg.norm(grad)), 1e-6)
    image *= 1.0 + (grad[0] * f.x / nx + grad[1] * f.y / ny + grad[2] * f.z / nz) * 2.0
    sigma = np.float32(rng.uniform(0.012, 0.022))
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def _place_lesion(
    rng: np.random.Generator,
    brain_depth: np.ndarray,
    ventricles: np.ndarray,
    taken: np.ndarray,
    scale: float,
    zr: float,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """An irregular blob fully inside the brain, not touching earlier lesions.

    Returns (bounding-box slices, blob mask in that box), or None when nothing fits.
    """
    max_warp = 0.3  # the surface moves by at most this fraction of the radius
    radius = rng.uniform(3.0, 7.0) * scale
    for attempt in range(60):
        if attempt and attempt % 15 == 0:
            radius = max(2.0 * scale, radius * 0.8)
        reach = radius * (1.0 + max_warp)
        candidates = np.argwhere(brain_depth >= reach + 1.0)
        if len(candidates) == 0:
            continue
        centre = candidates[rng.integers(len(candidates))]
        half = np.array([reach, reach, reach / zr]) + 2.0
        lo = np.maximum(np.floor(centre - half).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half).astype(int) + 1, brain_depth.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        box = tuple(int(b - a) for a, b in zip(lo, hi))
        gx, gy, gz = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        rho = np.sqrt(
            ((gx - centre[0]) / radius) ** 2 + ((gy - centre[1]) / radius) ** 2 + ((gz - centre[2]) * zr / radius) ** 2
        )
        warp = np.clip(_smooth_noise(rng, box, max(radius / 2.5, 1.0)), -1.0, 1.0)
        mask = rho <= 1.0 + max_warp * warp
        mask = _component_at(mask, tuple(int(c - a) for c, a in zip(centre, lo)))
        near = ndi.binary_dilation(mask, iterations=2)
        if np.any(near & taken[sl]):
            continue
        # Prefer tissue away from the ventricles; late attempts may displace one.
        if attempt < 40 and np.any(near & ventricles[sl]):
            continue
        if np.any(mask & (brain_depth[sl] <= 0.0)):
            continue
        return sl, mask
    return None


def _component_at(mask: np.ndarray, point: tuple[int, int, int]) -> np.ndarray:
    """The connected component of `mask` that contains `point`."""
    labels, _ = ndi.label(mask)
    keep = labels[point]
    return labels == keep if keep else mask


# ------------------------------------------------------------------------------------------------
# demo dataset on disk (nnU-Net v2 layout)
# ------------------------------------------------------------------------------------------------

_CASE_RE = re.compile(r"^phantom_\d{3,}(_\d{4})?\.nii\.gz$")


def _demo_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Diagonal RAS affine whose volume centre is at world (0, 0, 0)."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing)
    return affine


def _is_demo_set(folder: Path) -> bool:
    try:
        info = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("name") == DEMO_DATASET_NAME


def write_demo_dataset(
    out_dir: str | os.PathLike[str],
    n_cases: int = 48,
    shape: tuple[int, int, int] = (64, 64, 32),
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0),
    seed: int = 0,
    lesion_cases: int | None = None,
    contrasts: tuple[str, ...] | None = None,
) -> Path:
    """Write `n_cases` phantoms as an nnU-Net v2 raw dataset and return the folder.

    `lesion_cases` K: only the first K phantoms have lesions, the others are their lesion-free
    twins (normal anatomy, e.g. to train on normal volumes and fine-tune on a few lesions).
    `contrasts` (names of `CONTRASTS`): one image file per contrast, phantom_000_0000 … _000C,
    named in dataset.json's channel_names.

    Layout: imagesTr/phantom_000_0000.nii.gz (float32, MR-like units ~0..1000),
    labelsTr/phantom_000.nii.gz (uint8: 0 background, 1 head, 2 lesion), dataset.json.
    Case i depends only on (seed, i), so a larger set extends a smaller one. The folder must be
    empty, missing, or an earlier demo set (whose phantom files are replaced).
    """
    shape = _check_shape(shape)
    contrasts = None if contrasts is None else check_contrasts(contrasts)
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise LdmError(f"number of demo cases must be a positive integer, got {n_cases!r}")
    if lesion_cases is not None and not 0 <= lesion_cases <= n_cases:
        raise LdmError(f"--lesion-cases must be in 0..{n_cases} (the number of phantoms); got {lesion_cases}")
    try:
        spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    except (TypeError, ValueError):
        raise LdmError(f"spacing must be three positive numbers (mm), got {spacing!r}") from None
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise LdmError(f"spacing must be three positive numbers (mm), got {spacing!r}")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LdmError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not _is_demo_set(out):
        raise LdmError(f"{out} is not empty and is not an ldmtool demo dataset; choose an empty folder")
    images_dir, labels_dir = out / "imagesTr", out / "labelsTr"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        # Remove phantoms of an earlier (possibly larger) demo set so counts match dataset.json.
        for folder in (images_dir, labels_dir):
            for old in folder.iterdir():
                stale_tmp = old.name.startswith(".phantom_") and ".tmp-" in old.name
                if old.is_file() and (_CASE_RE.match(old.name) or stale_tmp):
                    old.unlink()

        affine = _demo_affine(shape, spacing)  # type: ignore[arg-type]
        for i in range(int(n_cases)):
            rng = np.random.default_rng([int(seed), i])
            image, label = make_phantom(
                rng, shape, lesions=lesion_cases is None or i < lesion_cases, contrasts=contrasts
            )
            channels = [image] if contrasts is None else [image[..., c] for c in range(len(contrasts))]
            case = f"phantom_{i:03d}"
            meta = {"source": "ldmtool phantom", "case": case}
            for c, channel in enumerate(channels):
                gain = rng.uniform(900.0, 1100.0)  # scanner-like global scale; preprocessing undoes it
                write_nifti(
                    Volume((channel * gain).astype(np.float32), affine, meta),
                    images_dir / f"{case}_{c:04d}.nii.gz",
                )
            write_nifti(Volume(label, affine, meta), labels_dir / f"{case}.nii.gz")

        info = {
            "name": DEMO_DATASET_NAME,
            "description": (
                f"Procedural MR-like head phantoms with 0-3 lesions (seed {int(seed)}, "
                f"shape {list(shape)}, spacing {list(spacing)} mm"
                + ("" if lesion_cases is None else f"; lesions in the first {int(lesion_cases)} only")
                + ("" if contrasts is None else f"; contrasts {', '.join(contrasts)}")
                + "); not real patient data."
            ),
            "channel_names": {"0": "MR"} if contrasts is None else {str(c): n for c, n in enumerate(contrasts)},
            "labels": {"background": 0, "head": 1, "lesion": 2},
            "numTraining": int(n_cases),
            "file_ending": ".nii.gz",
        }
        atomic_write_text(out / "dataset.json", json.dumps(info, indent=2) + "\n")
    except OSError as exc:
        raise LdmError(f"cannot write demo dataset to {out}: {exc.strerror or exc}") from None
    return out
