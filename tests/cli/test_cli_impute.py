"""`ldmtool impute` end to end, and training on incomplete data (tiny config)."""

import json

import nibabel as nib
import numpy as np
import pytest

from tests.cli.conftest import TINY_YAML, _must


def _image(trained):
    return sorted((trained.data / "imagesTr").glob("*.nii.gz"))[0]


def test_impute_missing_slices_keeps_observed_voxels_bit_exactly(cli, trained, tmp_path):
    src = _image(trained)
    out = tmp_path / "imp"
    r = cli(
        "impute",
        src,
        "--ae",
        trained.ae,
        "--ldm",
        trained.ldm,
        "--out",
        out,
        "--missing-slices",
        "1,3,5-7",
        "--samples",
        2,
        "--steps",
        3,
    )
    assert r.code == 0, r.both
    stem = src.name.replace("_0000.nii.gz", "")
    img, imp = nib.load(src), nib.load(out / f"{stem}_imputed.nii.gz")
    x, y = np.asanyarray(img.dataobj), np.asanyarray(imp.dataobj)
    gone = np.asanyarray(nib.load(out / f"{stem}_missing.nii.gz").dataobj).astype(bool)
    assert gone[..., [1, 3, 5, 6, 7]].all() and gone.sum() == 5 * x.shape[0] * x.shape[1]
    assert np.array_equal(x[~gone], y[~gone])  # bit for bit
    assert np.isfinite(y).all() and not np.array_equal(x[gone], y[gone])
    assert np.allclose(imp.affine, img.affine) and y.shape == x.shape
    std = np.asanyarray(nib.load(out / f"{stem}_std.nii.gz").dataobj)
    assert (std[~gone] == 0).all() and (std[gone] > 0).any()
    prov = json.loads((out / f"{stem}_impute.json").read_text())
    assert prov["missing_voxels"] == int(gone.sum()) and prov["samples"] == 2 and prov["steps"] == 3
    assert prov["missing_from"]["slices"] == "1,3,5-7"
    # imputations are seeded: the same command gives the same volume
    r = cli(
        "impute",
        src,
        "--ae",
        trained.ae,
        "--ldm",
        trained.ldm,
        "--out",
        tmp_path / "again",
        "--missing-slices",
        "1,3,5-7",
        "--samples",
        2,
        "--steps",
        3,
    )
    assert r.code == 0 and np.array_equal(
        np.asanyarray(nib.load(tmp_path / "again" / f"{stem}_imputed.nii.gz").dataobj), y
    )


def test_impute_nan_voxels_and_a_mask_file(cli, trained, tmp_path):
    src = nib.load(_image(trained))
    x = np.asanyarray(src.dataobj).astype(np.float32)
    x[10:14, 10:14, 4:6] = np.nan
    nan_path = tmp_path / "holes.nii.gz"
    nib.save(nib.Nifti1Image(x, src.affine), nan_path)
    mask = np.zeros(x.shape, dtype=np.uint8)
    mask[:, :5, :] = 1
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, src.affine), mask_path)
    r = cli(
        "impute",
        nan_path,
        "--ae",
        trained.ae,
        "--ldm",
        trained.ldm,
        "--out",
        tmp_path / "o",
        "--mask",
        mask_path,
        "--steps",
        2,
    )
    assert r.code == 0, r.both
    y = np.asanyarray(nib.load(tmp_path / "o" / "holes_imputed.nii.gz").dataobj)
    gone = np.isnan(x) | mask.astype(bool)
    assert np.isfinite(y).all() and np.array_equal(x[~gone], y[~gone])
    assert not (tmp_path / "o" / "holes_std.nii.gz").exists()  # one sample: no std map


@pytest.mark.parametrize(
    "case", ["mask shape", "nothing missing", "everything missing", "bad slices", "slice out of range"]
)
def test_impute_bad_input_is_one_clear_line(cli, trained, tmp_path, case):
    src = _image(trained)
    img = nib.load(src)
    args = ["impute", src, "--ae", trained.ae, "--ldm", trained.ldm, "--out", tmp_path / "o"]
    if case == "mask shape":
        p = tmp_path / "m.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), img.affine), p)
        args += ["--mask", p]
        expect = "shape"
    elif case == "everything missing":
        p = tmp_path / "m.nii.gz"
        nib.save(nib.Nifti1Image(np.ones(img.shape, np.uint8), img.affine), p)
        args += ["--mask", p]
        expect = "every voxel is missing"
    elif case == "bad slices":
        args += ["--missing-slices", "a-b"]
        expect = "--missing-slices"
    elif case == "slice out of range":
        args += ["--missing-slices", "99"]
        expect = "outside"
    else:
        expect = "nothing is missing"
    r = cli(*args)
    assert r.code == 1
    lines = r.error_lines()
    assert len(lines) == 1 and expect in lines[0], r.err
    assert "Traceback" not in r.both
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_training_on_incomplete_data(cli, trained, tmp_path):
    """masksTr/ masks + a simulated MCAR rate (the observed-mask channel comes on): train-ae, then train-ldm
    (which draws the same simulated masks), then impute with the result."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained.data, data)
    (data / "masksTr").mkdir()
    for f in sorted((data / "imagesTr").glob("*.nii.gz"))[:2]:
        img = nib.load(f)
        m = np.zeros(img.shape, np.uint8)
        m[..., 2:4] = 1  # two missing slices
        nib.save(nib.Nifti1Image(m, img.affine), data / "masksTr" / f.name.replace("_0000", ""))
    ae, ldm = tmp_path / "AE", tmp_path / "LDM"
    r = cli("train-ae", data, "--out", ae, "--config", TINY_YAML, "--missing-rate", 0.3, "--epochs", 1)
    assert r.code == 0, r.both
    assert "missing" in r.out
    cfg = json.loads((ae / "config.json").read_text())
    assert cfg["missing_rate"] == 0.3 and cfg["model"]["mask_channel"] is True  # on by default for incomplete data
    assert 0.3 < cfg["missing_fraction"] < 0.4
    assert json.loads((trained.ae / "config.json").read_text())["model"]["mask_channel"] is False  # complete data
    _must("train-ldm", data, "--ae", ae, "--out", ldm, "--config", TINY_YAML, "--steps", 2)
    r = cli(
        "impute",
        _image(trained),
        "--ae",
        ae,
        "--ldm",
        ldm,
        "--out",
        tmp_path / "o",
        "--simulate-mcar",
        0.5,
        "--steps",
        2,
    )
    assert r.code == 0, r.both
    r = cli("train-ae", data, "--out", tmp_path / "bad", "--config", TINY_YAML, "--missing-rate", 1.0)
    assert r.code == 1 and "--missing-rate" in r.err


def test_impute_from_the_interpolation(cli, trained, tmp_path):
    src = _image(trained)
    base = ["impute", src, "--ae", trained.ae, "--ldm", trained.ldm, "--missing-slices", "1,3,5"]
    r = cli(*base, "--out", tmp_path / "o", "--init", "interpolation", "--strength", "0.4", "--steps", 5)
    assert r.code == 0, r.both
    stem = src.name.replace("_0000.nii.gz", "")
    x = np.asanyarray(nib.load(src).dataobj)
    y = np.asanyarray(nib.load(tmp_path / "o" / f"{stem}_imputed.nii.gz").dataobj)
    gone = np.zeros(x.shape, dtype=bool)
    gone[..., [1, 3, 5]] = True
    assert np.array_equal(x[~gone], y[~gone]) and np.isfinite(y).all()
    prov = json.loads((tmp_path / "o" / f"{stem}_impute.json").read_text())
    assert prov["init"] == "interpolation" and prov["strength"] == 0.4
    for extra, expect in ((["--strength", "0"], "--strength"), (["--init", "linear"], "--init")):
        r = cli(*base, "--out", tmp_path / "bad", *extra)
        lines = r.error_lines()
        assert r.code == 1 and len(lines) == 1 and expect in lines[0], r.both
        assert not (tmp_path / "bad").exists()


def test_impute_from_the_interpolation_refuses_a_missing_channel(tmp_path):
    from ldmtool.errors import LdmError
    from ldmtool.pipelines.impute import impute_file

    with pytest.raises(LdmError, match="--init noise with --missing-channel"):
        impute_file(
            tmp_path / "x_0000.nii.gz",
            tmp_path / "ae",
            tmp_path / "ldm",
            tmp_path / "o",
            missing_channel="flair",
            init="interpolation",
        )
