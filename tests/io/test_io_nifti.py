"""NIfTI reading/writing: exact round trips and one-line errors for bad inputs."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from ldmtool.errors import LdmError
from ldmtool.io import Volume, read_nifti, read_volume, write_nifti, write_volume


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("flip_x", [False, True], ids=["RAS", "LAS"])
def test_round_trip(tmp_path, make_volume, suffix, flip_x):
    vol = make_volume(flip_x=flip_x)
    path = write_nifti(vol, tmp_path / f"vol{suffix}")
    back = read_nifti(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_array_equal(back.affine, vol.affine.astype(np.float32))
    assert nib.aff2axcodes(back.affine) == (("L" if flip_x else "R"), "A", "S")
    assert back.meta["format"] == "nifti"
    assert back.meta["zooms"] == pytest.approx((1.0, 1.5, 2.0))
    assert back.meta["qform_code"] == 1 and back.meta["sform_code"] == 1
    img = nib.load(str(path))
    assert img.header.get_xyzt_units()[0] == "mm"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_oblique_affine_round_trip(tmp_path, make_volume):
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[c, -s, 0, 1.0], [s, c, 0, 2.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
    vol = make_volume(affine=affine)
    back = read_nifti(write_nifti(vol, tmp_path / "obl.nii.gz"))
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)


def test_label_dtype_kept_and_int64_narrowed(tmp_path, make_volume):
    labels = make_volume(dtype=np.int64, high=3)
    back = read_nifti(write_nifti(labels, tmp_path / "lab.nii.gz"))
    assert np.issubdtype(back.array.dtype, np.integer)
    np.testing.assert_array_equal(back.array, labels.array)
    back16 = read_nifti(write_nifti(labels, tmp_path / "lab16.nii.gz", dtype=np.int16))
    assert back16.array.dtype == np.int16


def test_scaled_file_reads_as_float(tmp_path, make_volume):
    data = make_volume(dtype=np.int16, high=100).array
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    vol = read_nifti(tmp_path / "scaled.nii.gz")
    assert np.issubdtype(vol.array.dtype, np.floating)
    np.testing.assert_allclose(vol.array, data * 0.5 - 3.0)


def test_singleton_4th_dim_is_squeezed(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    assert read_nifti(tmp_path / "a.nii").shape == (4, 5, 6)


def test_truncated_gz(tmp_path, make_volume):
    path = write_nifti(make_volume(shape=(16, 16, 16)), tmp_path / "t.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LdmError, match="truncated or corrupt"):
        read_nifti(path)


def test_text_file_named_nifti(tmp_path):
    for name, data in [("fake.nii.gz", b"hello, not an image\n"), ("fake2.nii", b"plain text")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LdmError, match="not a NIfTI file|truncated or corrupt"):
            read_nifti(tmp_path / name)
    (tmp_path / "gz.nii.gz").write_bytes(gzip.compress(b"short text"))
    with pytest.raises(LdmError):
        read_nifti(tmp_path / "gz.nii.gz")


def test_2d_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(LdmError, match="is 2D"):
        read_nifti(tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 1), np.float32), np.eye(4)), str(tmp_path / "one.nii.gz"))
    with pytest.raises(LdmError, match="is 2D"):
        read_nifti(tmp_path / "one.nii.gz")
    assert read_nifti(tmp_path / "one.nii.gz", allow_single_slice=True).shape == (8, 9, 1)


def test_4d_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "ts.nii.gz"))
    with pytest.raises(LdmError, match=r"is 4D \(shape \(4, 4, 4, 3\)\); ldmtool needs a 3D volume"):
        read_nifti(tmp_path / "ts.nii.gz")


def test_missing_path(tmp_path):
    with pytest.raises(LdmError, match="does not exist"):
        read_nifti(tmp_path / "nope.nii.gz")
    with pytest.raises(LdmError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


def test_nan_and_inf_voxels(tmp_path, make_volume):
    vol = make_volume()
    vol.array[0, 0, 0] = np.nan
    vol.array[1, 0, 0] = np.nan
    path = write_volume(vol, tmp_path / "nan.nii.gz")
    with pytest.raises(LdmError, match="contains 2 NaN voxels"):
        read_volume(path)
    assert np.isnan(read_volume(path, allow_nan=True).array).sum() == 2
    vol.array[2, 0, 0] = np.inf
    path = write_volume(vol, tmp_path / "inf.nii.gz")
    with pytest.raises(LdmError, match="infinite"):
        read_volume(path, allow_nan=True)


def test_write_needs_nifti_suffix(tmp_path, make_volume):
    with pytest.raises(LdmError, match=r"\.nii"):
        write_nifti(make_volume(), tmp_path / "vol.img")


def test_nibabel_example4d(nibabel_files):
    path = nibabel_files / "example4d.nii.gz"
    shape = nib.load(str(path)).shape
    assert len(shape) == 4 and shape[3] > 1
    with pytest.raises(LdmError, match=r"is 4D \(shape \(128, 96, 24, 2\)\)"):
        read_volume(path)


def test_nibabel_anatomical(nibabel_files):
    path = nibabel_files / "anatomical.nii"
    img = nib.load(str(path))
    vol = read_volume(path)
    assert isinstance(vol, Volume)
    assert vol.shape == img.shape == (33, 41, 25)
    np.testing.assert_array_equal(vol.affine, img.affine)
    np.testing.assert_array_equal(vol.array, np.asanyarray(img.dataobj))
    assert nib.aff2axcodes(vol.affine) == ("L", "A", "S")
    assert vol.array.dtype.isnative  # stored big-endian; returned in native byte order


def _nifti_bytes(shape, dtype=np.int16) -> bytes:
    img = nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4))
    return img.header.binaryblock + b"\x00" * 4 + np.zeros(shape, dtype).tobytes()


def test_memory_guard_refuses_huge_declared_shape(tmp_path):
    """A tiny .nii.gz declaring 1024x1024x512 voxels is refused before anything is allocated."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1024, 1024, 512))
    hdr.set_data_dtype(np.float32)
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000))
    assert path.stat().st_size < 10_000
    with pytest.raises(
        LdmError, match=r"huge.nii.gz declares 1024x1024x512 voxels .*above the limit .*LDMTOOL_MAX_VOXELS"
    ):
        read_volume(path)


def test_memory_guard_environment_override(tmp_path, make_volume, monkeypatch):
    path = write_nifti(make_volume(shape=(6, 5, 4)), tmp_path / "a.nii.gz")
    monkeypatch.setenv("LDMTOOL_MAX_VOXELS", "100")
    with pytest.raises(LdmError, match="6x5x4 voxels .*limit of 100 voxels"):
        read_nifti(path)
    monkeypatch.setenv("LDMTOOL_MAX_VOXELS", "120")
    assert read_nifti(path).shape == (6, 5, 4)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_declares_more_than_the_file_holds(tmp_path, suffix):
    full = _nifti_bytes((8, 8, 16))
    short = full[: 352 + 8 * 8 * 8 * 2]  # half of the voxels
    path = tmp_path / f"short{suffix}"
    path.write_bytes(gzip.compress(short) if suffix == ".nii.gz" else short)
    with pytest.raises(
        LdmError, match=r"short.nii(.gz)? is truncated.*8x8x16 voxels of int16.*replace the file"
    ) as err:
        read_volume(path)
    assert "\n" not in str(err.value)


def test_dtypes_in_meta_and_integer_output_clipped(tmp_path, make_volume):
    vol = make_volume(dtype=np.int16, low=-1000, high=1000)
    back = read_nifti(write_nifti(vol, tmp_path / "ct.nii.gz"))
    assert back.meta["dtype"] == "int16" and back.meta["value_dtype"] == "int16"
    # a float result written in the input's dtype: rounded and clipped, never wrapped
    result = back.array.astype(np.float32) * 100.0 + 0.4
    out = read_nifti(write_nifti(back.with_array(result), tmp_path / "out.nii.gz", dtype=back.meta["value_dtype"]))
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, np.clip(np.rint(result), -32768, 32767))
    values = np.zeros((6, 5, 4))
    values[0, 0, :3] = [-5.0, 3.6, 300.0]
    u8 = read_nifti(write_nifti(vol.with_array(values), tmp_path / "u8.nii", dtype="uint8"))
    np.testing.assert_array_equal(u8.array[0, 0, :3], [0, 4, 255])
    wide = vol.with_array(np.full((6, 5, 4), 70000, np.int32))
    assert read_nifti(write_nifti(wide, tmp_path / "i16.nii", dtype=np.int16)).array.max() == 32767


def test_scaled_file_value_dtype_is_float(tmp_path, make_volume):
    data = make_volume(dtype=np.int16, high=100).array
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, tmp_path / "s.nii.gz")
    vol = read_nifti(tmp_path / "s.nii.gz")
    assert vol.meta["dtype"] == "int16" and np.dtype(vol.meta["value_dtype"]).kind == "f"
