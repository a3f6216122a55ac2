"""Left–right mirroring of prepared data (`PreparedData.mirrored`, `ldm_train.mirror`)."""

import numpy as np
import pytest
import torch

from ldmtool.data.prepared import PreparedData
from ldmtool.errors import LdmError


def _data(affine, shapes=None, channels=1, names=None):
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 5, 6) if channels == 1 else (2, 4, channels, 5, 6)
    images = torch.rand(shape, generator=g)
    labels = (torch.rand((2, 4, 5, 6), generator=g) * 3).to(torch.uint8)
    return PreparedData(
        images=images,
        labels=labels,
        case_ids=["a", "b"],
        affines=[np.asarray(affine, dtype=float)] * 2,
        label_names=names or {"background": 0, "brain": 1, "lesion": 2},
        intensity_ranges=[(0.0, 1.0)] * 2,
        observed=(images > 0.2).to(torch.uint8),
        shapes=shapes,
        channel_names=[f"c{i}" for i in range(channels)],
    )


RAS = np.diag([2.0, 2.0, 3.0, 1.0])
# array axis J runs left–right, I anterior–posterior
J_IS_LR = np.array([[0, -2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])


def test_ras_volumes_mirror_along_rows():
    data = _data(RAS)
    assert data.left_right_axis(0) == 1  # I → H of (D, H, W)
    m = data.mirrored()
    torch.testing.assert_close(m.images, data.images.flip(2))
    assert torch.equal(m.labels, data.labels.flip(2))
    assert torch.equal(m.observed, data.observed.flip(2))
    assert m.case_ids == data.case_ids and m.affines[0] is data.affines[0]
    assert torch.equal(m.mirrored().images, data.images)  # an involution
    assert not torch.equal(m.images, data.images)  # the data were left as they were
    assert torch.equal(data.images, _data(RAS).images)


def test_left_right_along_columns_and_channels():
    data = _data(J_IS_LR, channels=2)
    assert data.left_right_axis(0) == 2
    m = data.mirrored()
    torch.testing.assert_close(m.images, data.images.flip(-1))  # (N, D, C, H, W): W
    assert torch.equal(m.labels, data.labels.flip(-1))


def test_padded_cases_mirror_inside_their_extent():
    data = _data(RAS, shapes=[(4, 5, 6), (3, 4, 6)])
    m = data.mirrored()
    torch.testing.assert_close(m.images[1, :3, :4], data.images[1, :3, :4].flip(1))
    torch.testing.assert_close(m.images[1, 3:], data.images[1, 3:])  # the padding stays where it is
    torch.testing.assert_close(m.images[1, :, 4:], data.images[1, :, 4:])
    torch.testing.assert_close(m.images[0], data.images[0].flip(1))


def test_concat_keeps_every_per_case_field():
    data = _data(RAS)
    both = data.concat(data.mirrored())
    assert both.images.shape[0] == 4 and both.labels.shape[0] == 4 and both.observed.shape[0] == 4
    assert both.case_ids == ["a", "b", "a", "b"] and len(both.affines) == len(both.intensity_ranges) == 4
    torch.testing.assert_close(both.images[2], data.images[0].flip(1))


@pytest.mark.parametrize("name", ["Left-Hippocampus", "hippocampus_R", "right lung", "L.amygdala"])
def test_sided_classes_are_refused(name):
    data = _data(RAS, names={"background": 0, name: 1, "other": 2})
    with pytest.raises(LdmError, match="names a side"):
        data.mirrored()


def test_unsided_class_names_pass():
    data = _data(RAS, names={"background": 0, "hippocampus": 1, "cerebral_cortex": 2})
    data.mirrored()  # "cerebral" and "cortex" hold an l/r but name no side


def test_2d_images_are_refused():
    data = _data(RAS)
    data.image_dims = 2
    with pytest.raises(LdmError, match="3D volumes"):
        data.mirrored()
