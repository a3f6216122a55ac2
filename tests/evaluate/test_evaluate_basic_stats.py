"""Per-volume statistics of `ldmtool stats` on label maps with known answers."""

import numpy as np
import pytest

from ldmtool.evaluate.basic import volume_stats


def test_lesion_placement_size_and_count():
    image = np.zeros((20, 20, 10), dtype=np.float32)
    image[:, :, 5:] = 2.0  # one step between slices 4 and 5
    label = np.zeros((20, 20, 10), dtype=np.uint8)
    label[2:18, 2:18, 1:9] = 1  # head
    label[5:8, 5:8, 3:6] = 2  # a lesion well inside: 27 voxels
    label[2, 10:12, 4] = 2  # a lesion on the head's edge: 2 voxels, both next to background
    s = volume_stats(image, label, lesion=2)
    assert s["lesion_present"] == 1.0
    assert s["lesion_components"] == 2.0
    assert s["lesion_voxels"] == 29.0
    assert s["lesion_inside"] == 27 / 29
    assert s["head_fraction"] == (16 * 16 * 8) / (20 * 20 * 10)
    assert s["slice_mad"] == np.float64(2.0 / 9)


def test_no_lesion():
    label = np.ones((8, 8, 4), dtype=np.uint8)
    s = volume_stats(np.ones((8, 8, 4)), label, lesion=2)
    assert s["lesion_present"] == 0.0 and "lesion_inside" not in s and "lesion_components" not in s


def test_compare_folders_reads_2d_images(tmp_path):
    from PIL import Image

    from ldmtool.evaluate.basic import compare_folders

    base = np.random.default_rng(0).integers(0, 100, size=(3, 20, 24)) * 2
    for name, scale in (("real", 2), ("syn", 1)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray((base[i] * scale // 2).astype(np.uint8)).save(tmp_path / name / f"case{i}.png")
    rows = {r[0]: r for r in compare_folders(tmp_path / "real", tmp_path / "syn")}
    _, real_mean, syn_mean, _, ok = rows["mean intensity"]
    assert syn_mean == pytest.approx(real_mean / 2) and ok is False
    assert np.isnan(rows["adjacent-slice mean abs difference"][1])  # one slice: no neighbours
