"""Label maps given as conditions (mask-to-image, inpainting): into the model's space, and new
anatomy from seeded random deformations of real maps.

A map goes through the geometry of the autoencoder's preprocessing (label mapping, orientation,
resampling with nearest neighbours, centre crop/pad to the trained shape), so the returned affine
maps its voxels to the same world points as the input's; the inverse (back to the map's grid) is
`ldmtool.pipelines.impute.to_input_grid`.
"""

from __future__ import annotations

import numpy as np

from ldmtool.data.preprocess import PreprocessConfig, _crop_or_pad, _reorient, _resample
from ldmtool.errors import LdmError
from ldmtool.io.volume import Volume


def label_to_model_space(
    label: Volume, pre: PreprocessConfig, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(label map (I, J, K) uint8 in model space, its affine) for a label map in its own geometry."""
    lab = np.asarray(label.array)
    if lab.ndim != 3:
        raise LdmError(f"a label map must be a 3D volume, got an array of shape {lab.shape}")
    if pre.labels is not None:
        lab = pre.label_map.apply(lab)
    lab = lab.astype(np.uint8)
    affine = np.asarray(label.affine, dtype=np.float64)
    if pre.orientation != "none":
        (lab,), affine = _reorient([lab], affine, pre.orientation)
    if pre.spacing is not None:
        _, lab, affine = _resample(np.zeros(lab.shape, np.float32), lab, affine, pre.spacing)
    if tuple(lab.shape) != tuple(shape):
        lab, shift = _crop_or_pad(lab, tuple(shape), 0)
        translate = np.eye(4)
        translate[:3, 3] = shift
        affine = affine @ translate
    return np.ascontiguousarray(lab, dtype=np.uint8), affine


def remap_labels(label: np.ndarray, names: dict[str, int], model_names: dict[str, int], source: str) -> np.ndarray:
    """A map written with the label values `names` (its dataset.json) in the model's values, by name."""
    missing = sorted(set(names) - set(model_names))
    if missing:
        raise LdmError(
            f"{source}: label {missing[0]!r} is not one of the model's labels ({', '.join(model_names)}); "
            "rename it in dataset.json or merge it away"
        )
    if all(model_names[n] == v for n, v in names.items()):
        return label
    lut = np.arange(max(256, int(label.max()) + 1), dtype=np.int64)
    for name, value in names.items():
        lut[value] = model_names[name]
    return lut[label.astype(np.int64)].astype(label.dtype)


def deform_label_map(label: np.ndarray, seed: int) -> np.ndarray:
    """A new label map from one: a seeded random elastic + affine deformation (MONAI Rand3DElastic:
    rotation up to ±0.15 rad, scaling ±10 %, shifts up to 5 % of the size, a smooth displacement
    field), nearest-neighbour so every value stays a label; same shape and dtype."""
    from monai.transforms import Rand3DElastic

    size = np.asarray(label.shape, dtype=np.float64)
    transform = Rand3DElastic(
        sigma_range=(max(2.0, size.min() / 8), max(3.0, size.min() / 5)),
        magnitude_range=(size.min() / 4, size.min() / 2),
        prob=1.0,
        rotate_range=(0.15, 0.15, 0.15),
        scale_range=(0.1, 0.1, 0.1),
        translate_range=tuple(float(0.05 * n) for n in size),
        mode="nearest",
        padding_mode="zeros",
    )
    transform.set_random_state(int(seed) % 2**32)  # numpy RandomState seeds are 32-bit
    warped = np.asarray(transform(np.asarray(label).astype(np.float32)[None]))[0]
    return np.rint(warped).astype(label.dtype)
