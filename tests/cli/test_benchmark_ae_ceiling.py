"""benchmarks/real_data.py's autoencoder ceiling: every case through the trained autoencoder."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import torch

from benchmarks.real_data import ae_reconstructions
from ldmtool.data.prepared import prepare_dataset, slices_to_volume
from ldmtool.models.loaders import load_autoencoder


def test_reconstructions_in_the_preprocessed_grid_follow_their_case(trained, tmp_path):
    out = ae_reconstructions(trained.ae, trained.data, tmp_path / "recon")
    _, cfg = load_autoencoder(trained.ae / "model.safetensors", torch.device("cpu"))
    ref = prepare_dataset(trained.data, cfg.preprocess, shapes="pad")
    recon = [nib.load(out / "imagesTr" / f"{c}_0000.nii.gz") for c in ref.case_ids]
    originals = [slices_to_volume(ref.images[i].numpy()) for i in range(len(ref.case_ids))]
    for i, img in enumerate(recon):
        assert img.shape == originals[i].shape
        np.testing.assert_allclose(img.affine, ref.affines[i], atol=1e-5)
    # the autoencoder's output, not a copy of its input: it differs from the case yet follows it
    # (the tiny test autoencoder learns the head against the background, not each case's detail)
    for r, o in zip(recon, originals):
        r = np.asarray(r.dataobj, dtype=np.float64)
        assert np.isfinite(r).all() and np.abs(r - o).mean() > 1e-3
        assert np.corrcoef(r.ravel(), o.ravel())[0, 1] > 0.5


def test_reconstructions_come_back_into_each_case_grid_with_its_labels(trained, tmp_path):
    from benchmarks.real_data import reconstructions_in_source_grid

    # a copy of the demo data whose first case is cropped (2, 3 voxels off the low ends of I, J):
    # the autoencoder pads it to its training grid, the reconstruction must come back into the crop's
    src = tmp_path / "src"
    shutil.copytree(trained.data, src)
    case = sorted(p.name[: -len("_0000.nii.gz")] for p in (src / "imagesTr").glob("*_0000.nii.gz"))[0]
    for path in (src / "imagesTr" / f"{case}_0000.nii.gz", src / "labelsTr" / f"{case}.nii.gz"):
        img = nib.load(path)
        nib.save(img.slicer[2:, 3:, :], path)
    out = reconstructions_in_source_grid(trained.ae, src, tmp_path / "recon")

    assert (out / "dataset.json").read_bytes() == (src / "dataset.json").read_bytes()
    for image in sorted((src / "imagesTr").glob("*_0000.nii.gz")):
        real, recon = nib.load(image), nib.load(out / "imagesTr" / image.name)
        assert recon.shape == real.shape
        np.testing.assert_allclose(recon.affine, real.affine, atol=1e-5)
        label = image.name.replace("_0000", "")
        assert (out / "labelsTr" / label).read_bytes() == (src / "labelsTr" / label).read_bytes()
        r, o = np.asarray(recon.dataobj, dtype=np.float64), np.asarray(real.dataobj, dtype=np.float64)
        assert np.isfinite(r).all() and np.corrcoef(r.ravel(), o.ravel())[0, 1] > 0.5
    # the padded reconstruction, cropped back: the same voxels as the model-grid one at the crop
    grid = nib.load(tmp_path / "recon-model-grid" / "imagesTr" / f"{case}_0000.nii.gz")
    back = nib.load(out / "imagesTr" / f"{case}_0000.nii.gz")
    offset = np.linalg.solve(grid.affine, back.affine)[:3, 3]
    assert np.allclose(offset, np.round(offset)) and (offset >= 0).all()
    i, j, k = np.round(offset).astype(int)
    a, b, c = back.shape
    np.testing.assert_allclose(
        np.asarray(back.dataobj), np.asarray(grid.dataobj)[i : i + a, j : j + b, k : k + c], atol=1e-4
    )
