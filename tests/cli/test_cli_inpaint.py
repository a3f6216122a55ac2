"""`ldmtool inpaint` on tiny models: bit-exact outside the region, the input's geometry and dtype,
the label map updated, and one-line errors for bad regions."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="module")
def case(trained, tmp_path_factory):
    """A demo volume stored as int16 with a scale factor, its label map, and a region (a small cube)."""
    root = tmp_path_factory.mktemp("inpaint")
    image = sorted((trained.data / "imagesTr").glob("*.nii.gz"))[0]
    label = trained.data / "labelsTr" / image.name.replace("_0000", "")
    img = nib.load(image)
    data = img.get_fdata()
    ints = nib.Nifti1Image(np.rint(data / data.max() * 3000).astype(np.int16), img.affine)
    nib.save(ints, root / "vol.nii.gz")
    region = np.zeros(img.shape, np.uint8)
    region[12:18, 10:16, 6:10] = 1
    nib.save(nib.Nifti1Image(region, img.affine), root / "region.nii.gz")
    return root / "vol.nii.gz", label, root / "region.nii.gz"


def _check_outside(src: Path, out: Path, region: np.ndarray) -> np.ndarray:
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape and np.allclose(b.affine, a.affine) and b.get_data_dtype() == a.get_data_dtype()
    raw_a, raw_b = np.asarray(a.dataobj), np.asarray(b.dataobj)
    assert raw_a.dtype == raw_b.dtype and np.array_equal(raw_a[~region], raw_b[~region])
    return raw_b


@pytest.mark.parametrize("method", ["repaint", "guidance"])
def test_inpaint_bit_exact_outside(cli, trained, case, tmp_path, method):
    vol, label, region_path = case
    region = np.asarray(nib.load(region_path).dataobj).astype(bool)
    out = tmp_path / "I"
    r = cli("inpaint", vol, "--region", region_path, "--labels", label, "--label", "lesion", "--ae", trained.ae,
            "--ldm", trained.ldm, "--out", out, "--steps", 3, "--method", method)  # fmt: skip
    assert r.code == 0, r.both
    filled = _check_outside(vol, out / "vol_inpainted.nii.gz", region)
    assert not np.array_equal(filled[region], np.asarray(nib.load(vol).dataobj)[region])
    lab_in = np.asarray(nib.load(label).dataobj)
    lab_out = np.asarray(nib.load(out / "vol_inpainted_label.nii.gz").dataobj)
    assert (lab_out[region] == 2).all() and np.array_equal(lab_out[~region], lab_in[~region])
    prov = json.loads((out / "vol_inpaint.json").read_text())
    assert prov["method"] == method and set(prov["seam"]) >= {"border_gradient", "tissue_gradient_p95"}
    assert prov["margin"] == 2


@pytest.mark.parametrize(
    "flag,values,extra",
    [("--margin", (0, 3), ()), ("--resample", (1, 3), ("--sampler", "ddpm"))],
)
def test_inpaint_setting_changes_the_fill_not_the_outside(cli, trained, case, tmp_path, flag, values, extra):
    """--margin 0 and 3 regenerate different latent voxels around the region, --resample 3 (RePaint's
    resampling) takes every step three times: the region's content differs (same seed), everything
    outside it stays the input's, and the run record names the setting."""
    vol, label, region_path = case
    region = np.asarray(nib.load(region_path).dataobj).astype(bool)
    fills = {}
    for value in values:
        out = tmp_path / f"{flag[2:]}{value}"
        r = cli("inpaint", vol, "--region", region_path, "--labels", label, "--label", "lesion", "--ae", trained.ae,
                "--ldm", trained.ldm, "--out", out, "--steps", 3, flag, value, *extra)  # fmt: skip
        assert r.code == 0, r.both
        fills[value] = _check_outside(vol, out / "vol_inpainted.nii.gz", region)[region]
        assert json.loads((out / "vol_inpaint.json").read_text())[flag[2:]] == value
    assert not np.array_equal(*fills.values())


def test_inpaint_label_conditioned_healthy(cli, trained, label_ldm, case, tmp_path):
    vol, label, region_path = case
    region = np.asarray(nib.load(region_path).dataobj).astype(bool)
    lab = np.asarray(nib.load(label).dataobj).copy()
    lab[region] = 2  # a lesion to remove
    nib.save(nib.Nifti1Image(lab, nib.load(label).affine), tmp_path / "lab.nii.gz")
    out = tmp_path / "H"
    r = cli("inpaint", vol, "--region", region_path, "--labels", tmp_path / "lab.nii.gz", "--healthy",
            "--ae", trained.ae, "--ldm", label_ldm, "--out", out, "--steps", 3, "--guidance", 2)  # fmt: skip
    assert r.code == 0, r.both
    _check_outside(vol, out / "vol_inpainted.nii.gz", region)
    lab_out = np.asarray(nib.load(out / "vol_inpainted_label.nii.gz").dataobj)
    assert (lab_out[region] != 2).all() and np.array_equal(lab_out[~region], lab[~region])
    r = cli("inpaint", vol, "--region", region_path, "--ae", trained.ae, "--ldm", label_ldm, "--out", tmp_path / "N",
            "--steps", 2)  # fmt: skip
    assert r.code == 0, r.both  # without --labels: the autoencoder's reading of the volume
    assert (tmp_path / "N" / "vol_inpainted_label.nii.gz").is_file()


def test_inpaint_label_from_painted(cli, trained, label_ldm, case, tmp_path):
    """--label-from painted: the same image as --label-from region (same seed), the class only where
    the decoder reads it; every other voxel of the region keeps the input's class."""
    vol, label, region_path = case
    region = np.asarray(nib.load(region_path).dataobj).astype(bool)
    lab_in = np.asarray(nib.load(label).dataobj)
    outs = {}
    for mode in ("region", "painted"):
        r = cli("inpaint", vol, "--region", region_path, "--labels", label, "--label", "lesion", "--ae", trained.ae,
                "--ldm", label_ldm, "--out", tmp_path / mode, "--steps", 3, "--guidance", 2, "--label-from", mode)  # fmt: skip
        assert r.code == 0, r.both
        outs[mode] = [
            np.asarray(nib.load(tmp_path / mode / f"vol_{s}.nii.gz").dataobj) for s in ("inpainted", "inpainted_label")
        ]
    assert np.array_equal(outs["region"][0], outs["painted"][0])
    assert (outs["region"][1][region] == 2).all()
    painted = outs["painted"][1]
    assert np.array_equal(painted[~region], lab_in[~region])
    assert np.array_equal(painted[region & (painted != 2)], lab_in[region & (painted != 2)])
    prov = json.loads((tmp_path / "painted" / "vol_inpaint.json").read_text())
    assert prov["label_from"] == "painted" and prov["label_voxels"] == int((painted[region] == 2).sum())


def test_inpaint_grow_widens_the_drawn_class_not_the_written_one(cli, trained, label_ldm, case, tmp_path):
    """--grow 2 asks the model for the lesion over a wider region: another fill (same seed), yet
    the same outside, and the label map written is the region's alone."""
    vol, label, region_path = case
    region = np.asarray(nib.load(region_path).dataobj).astype(bool)
    lab_in = np.asarray(nib.load(label).dataobj)
    fills = {}
    for grow in (0, 2):
        out = tmp_path / f"G{grow}"
        r = cli("inpaint", vol, "--region", region_path, "--labels", label, "--label", "lesion", "--ae", trained.ae,
                "--ldm", label_ldm, "--out", out, "--steps", 3, "--guidance", 2, "--grow", grow)  # fmt: skip
        assert r.code == 0, r.both
        fills[grow] = _check_outside(vol, out / "vol_inpainted.nii.gz", region)[region]
        lab_out = np.asarray(nib.load(out / "vol_inpainted_label.nii.gz").dataobj)
        assert (lab_out[region] == 2).all() and np.array_equal(lab_out[~region], lab_in[~region])
        assert json.loads((out / "vol_inpaint.json").read_text())["grow"] == grow
    assert not np.array_equal(fills[0], fills[2])


def test_inpaint_bad_input(cli, trained, case, tmp_path):
    vol, label, region_path = case
    img = nib.load(vol)
    base = ["inpaint", vol, "--ae", trained.ae, "--ldm", trained.ldm, "--steps", 2]

    def fails(region_array, affine, text, *extra):
        path = tmp_path / "r.nii.gz"
        nib.save(nib.Nifti1Image(region_array.astype(np.uint8), affine), path)
        r = cli(*base, "--region", path, "--out", tmp_path / "E", *extra)
        assert r.code == 1 and text in r.err and len(r.error_lines()) == 1, r.both
        assert not (tmp_path / "E").exists()

    fails(np.zeros(img.shape), img.affine, "is empty")
    fails(np.ones((8, 8, 8)), img.affine, "has shape (8, 8, 8) but its image has shape")
    shifted = img.affine.copy()
    shifted[:3, 3] += 500
    fails(np.ones(img.shape), shifted, "not aligned")
    fails(np.ones(img.shape), img.affine, "covers the whole volume")
    cube = np.zeros(img.shape)
    cube[2:4, 2:4, 2:4] = 1
    fails(cube, img.affine, "not one of the model's labels", "--label", "tumour")
    fails(cube, img.affine, "exclude each other", "--label", "lesion", "--healthy")
    fails(cube, img.affine, "--label-from painted needs --label", "--label-from", "painted")
    fails(cube, img.affine, "--margin", "--margin", "-1")
    fails(cube, img.affine, "--grow needs --label", "--grow", "1")
    fails(cube, img.affine, "--grow", "--label", "lesion", "--grow", "-1")
    fails(cube, img.affine, "--label-from must be one of", "--label", "lesion", "--label-from", "decoder")
    fails(cube, img.affine, "needs --label NAME and --method repaint", "--label", "lesion", "--label-from", "painted",
          "--method", "guidance")  # fmt: skip
    fails(cube, img.affine, "--resample must be ≥ 1", "--resample", "0")
    fails(
        cube, img.affine, "needs --method repaint and --sampler ddim or ddpm", "--resample", "3", "--method", "guidance"
    )
    fails(
        cube, img.affine, "needs --method repaint and --sampler ddim or ddpm", "--resample", "3", "--sampler", "dpmpp2m"
    )
    # a volume larger than the model's field of view, the region in slices the crop leaves out
    big = np.concatenate([np.asarray(img.dataobj)] * 3, axis=2)
    nib.save(nib.Nifti1Image(big, img.affine), tmp_path / "big.nii.gz")
    edge = np.zeros(big.shape, np.uint8)
    edge[10:20, 10:20, :3] = 1
    nib.save(nib.Nifti1Image(edge, img.affine), tmp_path / "edge.nii.gz")
    r = cli("inpaint", tmp_path / "big.nii.gz", "--region", tmp_path / "edge.nii.gz", "--ae", trained.ae,
            "--ldm", trained.ldm, "--out", tmp_path / "E2")  # fmt: skip
    assert r.code == 1 and "outside the model's field of view" in r.err and len(r.error_lines()) == 1, r.both


def test_inpaint_strength_and_init_start_the_region_from_content(cli, trained, case, tmp_path):
    """--strength below 1 starts the region from the input's own content noised part-way (SDEdit);
    --init starts it from another volume's content there instead: a region made bright in --init
    comes out brighter than from the input's own content (same seed), and the outside stays the
    input's either way; the run record names both."""
    vol, label, region_path = case
    region = np.asarray(nib.load(region_path).dataobj).astype(bool)
    img = nib.load(vol)
    raw = np.asarray(img.dataobj)
    bright = raw.copy()
    bright[region] = raw.max()
    nib.save(nib.Nifti1Image(bright, img.affine), tmp_path / "init.nii.gz")
    fills = {}
    for name, extra in (("own", ()), ("init", ("--init", tmp_path / "init.nii.gz"))):
        out = tmp_path / name
        r = cli("inpaint", vol, "--region", region_path, "--labels", label, "--label", "lesion", "--ae", trained.ae,
                "--ldm", trained.ldm, "--out", out, "--steps", 4, "--strength", 0.4, *extra)  # fmt: skip
        assert r.code == 0, r.both
        fills[name] = _check_outside(vol, out / "vol_inpainted.nii.gz", region)[region].astype(np.float64)
        prov = json.loads((out / "vol_inpaint.json").read_text())
        assert prov["strength"] == 0.4 and (prov["init"] is None) == (name == "own")
    assert fills["init"].mean() > fills["own"].mean()


def test_inpaint_strength_and_init_bad_input(cli, trained, case, tmp_path):
    vol, label, region_path = case
    img = nib.load(vol)
    base = ["inpaint", vol, "--region", region_path, "--ae", trained.ae, "--ldm", trained.ldm, "--steps", 2]

    def fails(text, *extra):
        r = cli(*base, "--out", tmp_path / "E", *extra)
        assert r.code == 1 and text in r.err and len(r.error_lines()) == 1, r.both
        assert not (tmp_path / "E").exists()

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), img.affine), tmp_path / "small.nii.gz")
    fails("--strength", "--strength", "0")
    fails("--strength", "--strength", "1.5")
    fails("needs --method repaint", "--strength", "0.5", "--method", "guidance")
    fails("--init needs --strength below 1", "--init", vol)
    fails("has shape (8, 8, 8) but its image has shape", "--init", tmp_path / "small.nii.gz", "--strength", "0.5")
    fails("--init", "--init", tmp_path / "absent.nii.gz", "--strength", "0.5")


@pytest.mark.parametrize("method,strength", [("repaint", 0.2), ("guidance", 1.0)])
def test_inpaint_keep_detail_adds_the_change_to_the_start(cli, trained, case, tmp_path, method, strength):
    """--keep-detail writes the start (here the input's own content) plus what the model changed,
    i.e. the decoded result plus the start's autoencoder reconstruction error: what it adds does not
    depend on the seed, and part-way from the input's content (repaint, strength below 1) the region
    stays nearer that content than the decoded result does. The outside is the input's either way;
    the run record names it."""
    vol, label, region_path = case
    region = np.asarray(nib.load(region_path).dataobj).astype(bool)
    raw = np.asarray(nib.load(vol).dataobj)[region].astype(np.float64)
    fills = {}
    for seed in (1, 2):
        for name, extra in (("decoded", ()), ("detail", ("--keep-detail",))):
            out = tmp_path / f"{name}{seed}"
            r = cli("--seed", seed, "inpaint", vol, "--region", region_path, "--labels", label, "--ae", trained.ae,
                    "--ldm", trained.ldm, "--out", out, "--steps", 4, "--method", method, "--strength", strength,
                    *extra)  # fmt: skip
            assert r.code == 0, r.both
            fills[name, seed] = _check_outside(vol, out / "vol_inpainted.nii.gz", region)[region].astype(np.float64)
            assert json.loads((out / "vol_inpaint.json").read_text())["keep_detail"] == (name == "detail")
    added = [fills["detail", s] - fills["decoded", s] for s in (1, 2)]
    assert np.abs(added[0]).max() > 10  # the reconstruction error of a tiny autoencoder is not small
    assert np.abs(added[0] - added[1]).max() <= 1  # the same for every seed, up to the int16 rounding
    if strength < 1:
        assert np.abs(fills["detail", 1] - raw).mean() < np.abs(fills["decoded", 1] - raw).mean()


def _donor(trained, case) -> tuple[Path, Path]:
    """A demo case other than the input with lesion voxels: (image, label map)."""
    label = case[1]
    for path in sorted((trained.data / "labelsTr").glob("*.nii.gz")):
        if path.name != label.name and (np.asarray(nib.load(path).dataobj) == 2).any():
            return trained.data / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz"), path
    pytest.skip("no other demo case drew a lesion")


def test_inpaint_lesion_from_moves_a_donor_lesion_in(cli, trained, case, tmp_path):
    """--lesion-from: the donor's lesions moved whole into the input's head; the region is where
    they land (each as many voxels as in the donor), labelled lesion, the outside bit-exact, the
    same seed the same places; and the run equals `--region` of that region with `--init` the input
    with the donor's voxels pasted there (× the record's ratio): the moved lesion is the start."""
    from scipy import ndimage as ndi

    vol, label, _ = case
    donor_img, donor_lab = _donor(trained, case)
    common = ["inpaint", vol, "--labels", label, "--label", "lesion", "--ae", trained.ae, "--ldm", trained.ldm,
              "--steps", 4, "--strength", 0.3, "--keep-detail"]  # fmt: skip
    moved = ["--lesion-from", donor_img, "--lesion-labels", donor_lab, "--lesion-margin", 1]
    r = cli("--seed", 5, *common, *moved, "--out", tmp_path / "L")
    assert r.code == 0, r.both
    region = np.asarray(nib.load(tmp_path / "L" / "vol_region.nii.gz").dataobj) > 0
    filled = _check_outside(vol, tmp_path / "L" / "vol_inpainted.nii.gz", region)
    lab_out = np.asarray(nib.load(tmp_path / "L" / "vol_inpainted_label.nii.gz").dataobj)
    assert (lab_out[region] == 2).all()
    assert np.array_equal(lab_out[~region], np.asarray(nib.load(label).dataobj)[~region])
    prov = json.loads((tmp_path / "L" / "vol_inpaint.json").read_text())
    assert prov["region"] is None and prov["lesion_from"] == str(donor_img) and prov["lesions_moved"]
    donor_labels = np.asarray(nib.load(donor_lab).dataobj)
    comps, _ = ndi.label(donor_labels == 2)
    boxes = {tuple(s.start for s in sl): (sl, comps[sl] == i + 1) for i, sl in enumerate(ndi.find_objects(comps))}
    sketch = np.asarray(nib.load(vol).dataobj).astype(np.float32)
    donor = np.asarray(nib.load(donor_img).dataobj).astype(np.float32)
    for move in prov["lesions_moved"]:
        src, blob = boxes[tuple(move["from"])]
        dst = tuple(slice(a, a + n) for a, n in zip(move["to"], blob.shape))
        assert region[dst][blob].all()
        sketch[dst][blob] = donor[src][blob] * np.float32(prov["lesion_intensity_ratio"])
    assert region.sum() == sum(boxes[tuple(m["from"])][1].sum() for m in prov["lesions_moved"])
    again = cli("--seed", 5, *common, *moved, "--out", tmp_path / "L2")
    assert again.code == 0 and np.array_equal(
        np.asarray(nib.load(tmp_path / "L2" / "vol_region.nii.gz").dataobj) > 0, region
    )
    nib.save(nib.Nifti1Image(sketch, nib.load(vol).affine), tmp_path / "sketch.nii.gz")
    by_hand = cli("--seed", 5, *common, "--region", tmp_path / "L" / "vol_region.nii.gz", "--init",
                  tmp_path / "sketch.nii.gz", "--out", tmp_path / "H")  # fmt: skip
    assert by_hand.code == 0, by_hand.both
    assert np.array_equal(np.asarray(nib.load(tmp_path / "H" / "vol_inpainted.nii.gz").dataobj), filled)


def test_inpaint_lesion_from_bad_input(cli, trained, case, tmp_path):
    vol, label, region_path = case
    donor_img, donor_lab = _donor(trained, case)
    img = nib.load(vol)
    base = ["inpaint", vol, "--ae", trained.ae, "--ldm", trained.ldm, "--steps", 2]
    moved = ["--lesion-from", donor_img, "--lesion-labels", donor_lab]

    def fails(text, *extra):
        r = cli(*base, "--out", tmp_path / "E", *extra)
        assert r.code == 1 and text in r.err and len(r.error_lines()) == 1, r.both
        assert not (tmp_path / "E").exists()

    clean = np.asarray(nib.load(donor_lab).dataobj).copy()
    clean[clean == 2] = 1
    nib.save(nib.Nifti1Image(clean, img.affine), tmp_path / "clean.nii.gz")
    coarse = nib.load(donor_img)
    nib.save(nib.Nifti1Image(np.asarray(coarse.dataobj), np.diag([9.0, 9.0, 9.0, 1.0])), tmp_path / "coarse.nii.gz")
    nib.save(nib.Nifti1Image(clean, np.diag([9.0, 9.0, 9.0, 1.0])), tmp_path / "coarse_lab.nii.gz")
    fails("give --region MASK", "--label", "lesion", "--labels", label)
    fails("give --region MASK", "--region", region_path, *moved, "--label", "lesion", "--labels", label)
    fails("--lesion-from needs --lesion-labels", "--lesion-from", donor_img, "--label", "lesion", "--labels", label)
    fails("--lesion-from needs", *moved, "--labels", label)
    fails("go with --lesion-from", "--region", region_path, "--lesion-labels", donor_lab)
    fails("exclude each other", *moved, "--label", "lesion", "--labels", label, "--init", vol, "--strength", 0.5)
    fails("no voxel of class lesion", "--lesion-from", donor_img, "--lesion-labels", tmp_path / "clean.nii.gz",
          "--label", "lesion", "--labels", label)  # fmt: skip
    fails("resample one to the other's voxel size", "--lesion-from", tmp_path / "coarse.nii.gz", "--lesion-labels",
          tmp_path / "coarse_lab.nii.gz", "--label", "lesion", "--labels", label)  # fmt: skip
    fails("fits inside the head at least 1000 mm", *moved, "--label", "lesion", "--labels", label,
          "--lesion-margin", 1000)  # fmt: skip
    fails("is not one of the model's labels", *moved, "--label", "tumour", "--labels", label)
    fails("--lesion-margin must be", *moved, "--label", "lesion", "--labels", label, "--lesion-margin", -1)
    fails("--lesion-from", "--lesion-from", tmp_path / "absent.nii.gz", "--lesion-labels", donor_lab)
