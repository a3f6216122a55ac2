"""benchmarks/real_data.py's autoencoder ceiling: every case through the trained autoencoder."""

from __future__ import annotations

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
