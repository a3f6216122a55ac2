"""The latent voxels `inpaint --method repaint` regenerates: those over the region, grown by --margin."""

from __future__ import annotations

import numpy as np
import torch

from ldmtool.pipelines.inpaint import regeneration_mask


def test_regeneration_mask_covers_the_region_and_grows_by_the_margin():
    region = torch.zeros((9, 32, 32), dtype=torch.bool)
    region[4, 9:11, 13] = True  # latent rows 2, column 3 (4× downsampling), slice 4
    m0 = regeneration_mask(region, 4, 0)
    assert m0.shape == (9, 8, 8) and m0.sum() == 1 and m0[4, 2, 3] == 1
    for margin in (1, 2):
        m = regeneration_mask(region, 4, margin).numpy()
        idx = np.argwhere(m == 1)
        assert m.sum() == (2 * margin + 1) ** 3  # a cube, clipped nowhere here
        assert (idx.min(0) == np.array([4, 2, 3]) - margin).all() and (idx.max(0) == np.array([4, 2, 3]) + margin).all()
    edge = torch.zeros((3, 8, 8), dtype=torch.bool)
    edge[0, 0, 0] = True  # at the corner: the growth stops at the volume's border
    assert regeneration_mask(edge, 4, 2).shape == (3, 2, 2) and regeneration_mask(edge, 4, 2).sum() == 3 * 2 * 2
