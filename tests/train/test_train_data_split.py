"""Case splits, lesion attributes computed from label maps, and --condition parsing."""

import numpy as np
import pytest
import torch

from ldmtool.data.lesions import ATTRIBUTES, lesion_attributes, lesion_class, parse_conditions
from ldmtool.data.prepared import PreparedData, slices_to_volume, volume_to_slices
from ldmtool.errors import LdmError


def _data(n):
    return PreparedData(
        images=torch.zeros(n, 2, 4, 4),
        labels=None,
        case_ids=[f"c{i}" for i in range(n)],
        affines=[np.eye(4) * (i + 1) for i in range(n)],
        intensity_ranges=[(float(i), i + 1.0) for i in range(n)],
    )


@pytest.mark.parametrize(
    "n,frac,n_val", [(10, 0.2, 2), (7, 0.1, 1), (2, 0.1, 1), (1, 0.5, 0), (5, 0.0, 0), (20, 0.5, 10)]
)
def test_split_indices(n, frac, n_val):
    data = _data(n)
    train, val = data.split_indices(frac, seed=3)
    assert len(val) == n_val
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(n))
    assert train == sorted(train) and val == sorted(val)
    assert data.split_indices(frac, seed=3) == (train, val)  # deterministic


def test_split_depends_on_seed():
    data = _data(20)
    vals = {tuple(data.split_indices(0.25, seed=s)[1]) for s in range(6)}
    assert len(vals) > 1


def test_split_subsets():
    data = _data(6)
    train, val = data.split(0.34, seed=1)
    ti, vi = data.split_indices(0.34, seed=1)
    assert train.case_ids == [f"c{i}" for i in ti] and val.case_ids == [f"c{i}" for i in vi]
    assert [r[0] for r in val.intensity_ranges] == [float(i) for i in vi]
    assert np.allclose(val.affines[0], np.eye(4) * (vi[0] + 1))
    assert train.images.shape == (len(ti), 2, 4, 4)
    assert data.split(0.0)[1] is None


def test_volume_slices_round_trip():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    s = volume_to_slices(a)
    assert s.shape == (4, 2, 3)
    np.testing.assert_array_equal(s[1], a[:, :, 1])
    np.testing.assert_array_equal(slices_to_volume(s), a)


def test_lesion_attributes_known_values():
    label = np.zeros((10, 20, 8), dtype=np.uint8)
    label[2:4, 5:10, 1:4] = 2  # 2 x 5 x 3 = 30 lesion voxels
    label[0, 0, 0] = 1  # another class is ignored
    spacing = (1.5, 2.0, 4.0)
    attrs = lesion_attributes(label, 2, spacing)
    assert attrs.shape == (len(ATTRIBUTES),)
    vol, cx, cy, cz, extent = attrs
    assert vol == pytest.approx(30 * 1.5 * 2.0 * 4.0 / 1000.0)  # ml
    assert cx == pytest.approx((2.5 + 0.5) / 10)  # voxel centres 2, 3 → mean 2.5; centre of voxel → +0.5
    assert cy == pytest.approx((7.0 + 0.5) / 20)
    assert cz == pytest.approx((2.0 + 0.5) / 8)
    assert extent == pytest.approx(max(2 * 1.5, 5 * 2.0, 3 * 4.0))  # 12 mm along K


def test_lesion_attributes_two_lesions_and_no_lesion():
    label = np.zeros((8, 8, 8), dtype=np.uint8)
    label[0, 0, 0] = 3
    label[7, 7, 7] = 3
    attrs = lesion_attributes(label, 3, (1.0, 1.0, 1.0))
    assert attrs[0] == pytest.approx(0.002)
    np.testing.assert_allclose(attrs[1:4], [0.5, 0.5, 0.5])
    assert attrs[4] == pytest.approx(8.0)
    none = lesion_attributes(np.ones((4, 4, 4), np.uint8), 2, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(none, [0.0, 0.5, 0.5, 0.5, 0.0])


def test_lesion_class():
    assert lesion_class({"background": 0, "head": 1, "lesion": 2}) == 2
    assert lesion_class({"background": 0, "Tumour": 1, "organ": 2}) == 1
    assert lesion_class({"background": 0, "liver": 1, "kidney": 2}) == 2


def test_parse_conditions_valid():
    assert parse_conditions(None) == {}
    assert parse_conditions([]) == {}
    out = parse_conditions(["lesion_volume=2.5", "lesion_x = 0.3, lesion_z=1e-1", "lesion_extent=-4,"])
    assert out == {"lesion_volume": 2.5, "lesion_x": 0.3, "lesion_z": 0.1, "lesion_extent": -4.0}
    assert parse_conditions(["lesion_y=1", "lesion_y=2"]) == {"lesion_y": 2.0}
    assert parse_conditions(["age=40", "sex=F"]) == {"age": 40.0, "sex": "F"}  # the model checks the names


@pytest.mark.parametrize(
    "items,match",
    [
        (["lesion_volume"], "name=value"),
        (["size="], "name=value"),
        (["lesion_volume=big"], "needs a number"),
        (["lesion_x=0.5,lesion_y"], "name=value"),
    ],
)
def test_parse_conditions_invalid(items, match):
    with pytest.raises(LdmError, match=match) as err:
        parse_conditions(items)
    assert "\n" not in str(err.value)
