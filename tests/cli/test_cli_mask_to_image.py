"""`train-ldm --condition-on labels` and `sample --labels DIR [--per-label K] [--deform K [--undeformed K]]` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.cli.conftest import TINY_YAML


def _maps(trained, tmp_path: Path) -> Path:
    """Two label maps: one from the data set, one in another geometry (cropped, flipped, other spacing)."""
    folder = tmp_path / "maps"
    folder.mkdir()
    src = sorted((trained.data / "labelsTr").glob("*.nii.gz"))[0]
    img = nib.load(src)
    nib.save(img, folder / "a.nii.gz")
    arr = np.asarray(img.dataobj)[2:30, ::-1, 1:15].copy()
    affine = img.affine @ np.diag([1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = img.affine[:3, :3] @ [2, 31, 1] + img.affine[:3, 3]
    affine[:3, :3] *= 1.1
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), folder / "b.nii.gz")
    return folder


def test_mask_to_image_geometry(cli, trained, label_ldm, tmp_path):
    maps = _maps(trained, tmp_path)
    out = tmp_path / "M"
    args = ["sample", "--ae", trained.ae, "--ldm", label_ldm, "--labels", maps, "--out", out, "--steps", 2]
    r = cli(*args, "--per-label", 2, "--guidance", 2.0)
    assert r.code == 0, r.both
    for stem in ("a", "b"):
        src = nib.load(maps / f"{stem}.nii.gz")
        for j in range(2):
            name = f"synth_{stem}_{j:03d}"
            image = nib.load(out / "imagesTr" / f"{name}_0000.nii.gz")
            label = nib.load(out / "labelsTr" / f"{name}.nii.gz")
            assert image.shape == src.shape and np.allclose(image.affine, src.affine, atol=1e-4)
            assert np.array_equal(np.asarray(label.dataobj), np.asarray(src.dataobj))
            assert np.isfinite(image.get_fdata()).all()
            prov = json.loads((out / "provenance" / f"{name}.json").read_text())
            assert prov["label_map"] == str(maps / f"{stem}.nii.gz") and prov["guidance"] == 2.0
    a0 = nib.load(out / "imagesTr" / "synth_a_000_0000.nii.gz").get_fdata()
    a1 = nib.load(out / "imagesTr" / "synth_a_001_0000.nii.gz").get_fdata()
    assert not np.array_equal(a0, a1)  # two seeds, two images
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4
    again = cli(*args, "--per-label", 2, "--guidance", 2.0)  # resumes: nothing left to do
    assert again.code == 0 and "already there" in again.out


def test_mask_to_image_deform(cli, trained, label_ldm, tmp_path):
    maps = _maps(trained, tmp_path)
    (maps / "b.nii.gz").unlink()
    out = tmp_path / "D"
    r = cli("--seed", 3, "sample", "--ae", trained.ae, "--ldm", label_ldm, "--labels", maps, "--out", out,
            "--steps", 2, "--deform", 2)  # fmt: skip
    assert r.code == 0, r.both
    src = np.asarray(nib.load(maps / "a.nii.gz").dataobj)
    d0 = np.asarray(nib.load(out / "labelsTr" / "synth_a_d000_000.nii.gz").dataobj)
    d1 = np.asarray(nib.load(out / "labelsTr" / "synth_a_d001_000.nii.gz").dataobj)
    assert d0.shape == src.shape and set(np.unique(d0)) <= set(np.unique(src))
    assert not np.array_equal(d0, src) and not np.array_equal(d0, d1)
    assert (d0 > 0).sum() > 0.5 * (src > 0).sum()  # deformed, not destroyed
    both = tmp_path / "DU"  # the same deformations plus one image of the map itself, in one folder
    r = cli("--seed", 3, "sample", "--ae", trained.ae, "--ldm", label_ldm, "--labels", maps, "--out", both,
            "--steps", 2, "--deform", 2, "--undeformed", 1)  # fmt: skip
    assert r.code == 0, r.both
    names = sorted(p.name for p in (both / "labelsTr").glob("*.nii.gz"))
    assert names == ["synth_a_000.nii.gz", "synth_a_d000_000.nii.gz", "synth_a_d001_000.nii.gz"]
    kept = np.asarray(nib.load(both / "labelsTr" / "synth_a_000.nii.gz").dataobj)
    assert np.array_equal(kept, src)
    for name in ("synth_a_d000_000", "synth_a_d001_000"):  # the deformed samples do not move
        for sub, suffix in (("labelsTr", ""), ("imagesTr", "_0000")):
            a = nib.load(out / sub / f"{name}{suffix}.nii.gz").get_fdata()
            b = nib.load(both / sub / f"{name}{suffix}.nii.gz").get_fdata()
            assert np.array_equal(a, b), (sub, name)
    assert json.loads((both / "dataset.json").read_text())["numTraining"] == 3
    prov = json.loads((both / "provenance" / "synth_a_000.json").read_text())
    assert prov["deformation"] is None and prov["label_map"] == str(maps / "a.nii.gz")


def test_mask_to_image_errors(cli, trained, label_ldm, tmp_path):
    maps = _maps(trained, tmp_path)
    base = ["sample", "--ae", trained.ae, "--out", tmp_path / "E", "--steps", 2]
    r = cli(*base, "--ldm", trained.ldm, "--labels", maps)
    assert r.code == 1 and "not trained on label maps" in r.err and len(r.error_lines()) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    src = nib.load(maps / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.full(src.shape, 9, np.uint8), src.affine), bad / "x.nii.gz")
    r = cli(*base, "--ldm", label_ldm, "--labels", bad)
    assert r.code == 1 and "label values [9]" in r.err and len(r.error_lines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli(*base, "--ldm", label_ldm, "--labels", empty)
    assert r.code == 1 and "no NIfTI label maps" in r.err
    r = cli(*base, "--ldm", label_ldm, "--labels", maps, "--n", 3)
    assert r.code == 1 and "--n does not go with --labels" in r.err
    r = cli(*base, "--ldm", label_ldm, "--deform", 2)
    assert r.code == 1 and "--labels DIR" in r.err
    r = cli(*base, "--ldm", label_ldm, "--labels", maps, "--undeformed", 2)
    assert r.code == 1 and "--undeformed adds images" in r.err and len(r.error_lines()) == 1


def test_mask_to_image_controlnet_branch(cli, trained, tmp_path):
    maps = _maps(trained, tmp_path)
    ldm = tmp_path / "LDMCN"
    r = cli("train-ldm", trained.data, "--ae", trained.ae, "--out", ldm, "--config", TINY_YAML,
            "--condition-on", "labels", "--label-branch", "controlnet", "--steps", 2)  # fmt: skip
    assert r.code == 0, r.both
    out = tmp_path / "C"
    r = cli("sample", "--ae", trained.ae, "--ldm", ldm, "--labels", maps, "--out", out, "--steps", 2, "--guidance", 2)
    assert r.code == 0, r.both
    src = nib.load(maps / "b.nii.gz")
    image = nib.load(out / "imagesTr" / "synth_b_000_0000.nii.gz")
    assert image.shape == src.shape and np.allclose(image.affine, src.affine, atol=1e-4)


def test_mask_to_image_label_detail(cli, trained, label_ldm, tmp_path):
    """--label-detail 2: the map's 2×2 sub-squares of every latent voxel reach the denoiser; the
    checkpoint keeps the setting and `sample --labels` reads it back; a non-divisor is one line.
    Fine-tuning a detail-1 model at detail 2 carries its map weights over; a detail-2 model at
    detail 1 cannot, and train-ldm says so."""
    from ldmtool.models.loaders import read_denoiser

    maps = _maps(trained, tmp_path)
    ldm = tmp_path / "LDMD"
    r = cli("train-ldm", trained.data, "--ae", trained.ae, "--out", ldm, "--config", TINY_YAML,
            "--condition-on", "labels", "--label-detail", 2, "--steps", 2)  # fmt: skip
    assert r.code == 0, r.both
    assert read_denoiser(ldm)[1].model.label_detail == 2
    out = tmp_path / "D"
    r = cli("sample", "--ae", trained.ae, "--ldm", ldm, "--labels", maps, "--out", out, "--steps", 2, "--guidance", 2)
    assert r.code == 0, r.both
    src = nib.load(maps / "b.nii.gz")
    assert nib.load(out / "imagesTr" / "synth_b_000_0000.nii.gz").shape == src.shape
    r = cli("train-ldm", trained.data, "--ae", trained.ae, "--out", tmp_path / "plain", "--config", TINY_YAML,
            "--label-detail", 2, "--steps", 2)  # fmt: skip
    assert r.code == 0, r.both  # a model without a map: the setting is dropped, not stored
    assert read_denoiser(tmp_path / "plain")[1].model.label_detail == 1
    r = cli("train-ldm", trained.data, "--ae", trained.ae, "--out", tmp_path / "bad", "--config", TINY_YAML,
            "--condition-on", "labels", "--label-detail", 3, "--steps", 2)  # fmt: skip
    assert r.code == 1 and "label_detail 3 must divide" in r.err and len(r.error_lines()) == 1, r.both
    r = cli("train-ldm", trained.data, "--ae", trained.ae, "--out", tmp_path / "finer", "--config", TINY_YAML,
            "--condition-on", "labels", "--label-detail", 2, "--init", label_ldm, "--steps", 2)  # fmt: skip
    assert r.code == 0 and "start afresh" not in " ".join(r.both.split()), r.both
    r = cli("train-ldm", trained.data, "--ae", trained.ae, "--out", tmp_path / "coarser", "--config", TINY_YAML,
            "--condition-on", "labels", "--init", ldm, "--steps", 2)  # fmt: skip
    said = " ".join(r.both.split())
    assert r.code == 0 and "at label detail 2 and this one on" in said and "start afresh" in said, r.both


def test_fine_tune_from_a_model_of_normal_volumes(cli, trained, tmp_path):
    few = tmp_path / "few"  # three annotated cases
    cli("demo-data", few, "--n", 3, "--shape", "32,32,16")
    out = tmp_path / "FT"
    r = cli("train-ldm", few, "--ae", trained.ae, "--out", out, "--config", TINY_YAML, "--condition-on", "labels",
            "--init", trained.ldm, "--steps", 2)  # fmt: skip
    assert r.code == 0, r.both
    from ldmtool.models.checkpoint import file_sha256, resolve_checkpoint
    from ldmtool.models.loaders import read_denoiser

    _, cfg = read_denoiser(out)
    assert cfg.get("init_sha256") == file_sha256(resolve_checkpoint(trained.ldm))
    assert "another noise process" not in r.both
    _, start = read_denoiser(trained.ldm)
    other_objective = "v" if start.model.objective != "v" else "eps"
    r = cli("train-ldm", few, "--ae", trained.ae, "--out", tmp_path / "FTV", "--config", TINY_YAML,
            "--condition-on", "labels", "--objective", other_objective, "--init", trained.ldm, "--steps", 2)  # fmt: skip
    assert r.code == 0, r.both  # allowed (a change of objective is a known fine-tuning recipe), but said
    said = " ".join(r.both.split())  # the console wraps long lines
    assert f"objective {start.model.objective} (now {other_objective})" in said and "another noise process" in said
    other = tmp_path / "AE2"
    r = cli("train-ae", few, "--out", other, "--config", TINY_YAML)
    assert r.code == 0, r.both
    r = cli("train-ldm", few, "--ae", other, "--out", tmp_path / "FT2", "--config", TINY_YAML,
            "--condition-on", "labels", "--init", trained.ldm, "--steps", 2)  # fmt: skip
    assert r.code == 1 and "trained on another autoencoder" in r.err and len(r.error_lines()) == 1
