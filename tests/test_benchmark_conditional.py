"""benchmarks/conditional.py --quick: the whole chain (train, mask-to-image, segment, inpaint) runs and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_conditional_benchmark_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conditional.py"), "--quick", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "## Mask-to-image: segmenter Dice" in proc.stdout and "## Lesion insertion" in proc.stdout
    assert "| repaint | 2/2 |" in proc.stdout and "| guidance | 2/2 |" in proc.stdout  # outside bit-exact


@pytest.mark.slow
def test_conditional_benchmark_fewshot_quick(tmp_path):
    """--fewshot: K annotated lesion cases, a normal model fine-tuned on them, lesions inpainted into
    the lesion-free phantoms (1 and 2 cases per phantom), and the downstream comparison table."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "conditional.py"),
            "--quick",
            "--fewshot",
            "3",
            "--fewshot-copies",
            "1,2",
            "--fewshot-label-from",
            "region,painted,segmenter",
            "--ae-steps",
            "7",
            "--fewshot-lesion-weight",
            "8",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "real training phantoms: 8: 3 with lesions" in proc.stdout
    assert "autoencoder on the 8 training phantoms: 7 steps" in proc.stdout  # --ae-steps, not the time limit
    assert "fine-tuning lesion weight (`train-ldm --lesion-weight`, FEW's config): 8" in proc.stdout
    few_config = json.loads((tmp_path / "FEW" / "config.json").read_text())
    assert few_config["train"]["lesion_weight"] == 8.0
    assert "labelled lesion brightness" in proc.stdout and "for the 3 real lesion cases" in proc.stdout
    assert (
        "| real + inpainted (8 + " in proc.stdout
        and "real + inpainted (label from region, 1 per lesion-free phantom) − real alone" in proc.stdout
        and "real + inpainted (label from painted, 2 per lesion-free phantom) − real alone" in proc.stdout
    )
    import numpy as np

    from benchmarks.conditional import read

    assert "label from region" in proc.stdout and "label from painted" in proc.stdout
    assert "real + inpainted (label from segmenter, 2 per lesion-free phantom) − real alone" in proc.stdout
    inpainted = sorted((tmp_path / "inpainted" / "labelsTr").glob("*.nii.gz"))
    normals = sorted((tmp_path / "normal" / "labelsTr").glob("*.nii.gz"))
    assert inpainted and len(inpainted) <= 2 * len(normals)
    once = sorted(p.name for p in (tmp_path / "inpainted-x1" / "labelsTr").glob("*.nii.gz"))
    # the 1-per-phantom set: the first round's cases of the 2-per-phantom one (no "_1" round suffix)
    assert once and once == sorted(p.name for p in inpainted if not p.name.endswith("_1.nii.gz"))
    assert len({n.split("_from_")[0] for n in once}) == len(once)
    for path in inpainted:  # every new label map: lesion only inside the region, else the normal twin's
        label = read(path)[0]
        region = read(tmp_path / "regions" / path.name)[0] > 0
        normal = read(tmp_path / "normal" / "labelsTr" / f"{path.name.split('_from_')[0]}.nii.gz")[0]
        assert region.any() and not (label[~region] == 2).any()
        kept = ~region | (label != 2)  # outside, and the region's voxels not read as lesion
        assert np.array_equal(label[kept], normal[kept])
        whole = read(tmp_path / "inpainted-region" / "labelsTr" / path.name)[0]  # --label-from region
        assert (whole[region] == 2).all() and np.array_equal(whole[~region], normal[~region])
        same = [read(tmp_path / d / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz"))[0]
                for d in ("inpainted", "inpainted-region", "inpainted-segmenter")]  # fmt: skip
        assert all(np.array_equal(same[0], other) for other in same[1:])  # the same images, labelled three ways
        # --label-from segmenter: lesion where the real-phantom segmenter reads it inside the region
        by_seg = read(tmp_path / "inpainted-segmenter" / "labelsTr" / path.name)[0]
        found = read(tmp_path / "SEG-REAL-inpainted" / path.name.replace(".nii.gz", "_seg.nii.gz"))[0] == 2
        assert np.array_equal(by_seg == 2, region & found)
        assert np.array_equal(by_seg[by_seg != 2], normal[by_seg != 2])
    # --reuse: the same models, inpainted again with RePaint's resampling
    models = {m: (tmp_path / m / "model.safetensors").read_bytes() for m in ("AE", "NORMAL", "FEW", "SEG-REAL")}
    again = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conditional.py"), "--quick", "--fewshot", "3", "--ae-steps", "7",
         "--fewshot-label-from", "segmenter", "--inpaint-sampler", "ddpm", "--inpaint-resample", "2", "--reuse",
         "--fewshot-strength", "0.5", "--fewshot-sketch", "lesion", "--fewshot-pasted", "--fewshot-headroom",
         "--fewshot-keep-drawn", "0.000001", "--work",
         str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert all(f"--reuse: {m} kept as it is" in again.stderr for m in models)
    assert all((tmp_path / m / "model.safetensors").read_bytes() == b for m, b in models.items())
    assert "--sampler ddpm --resample 2 --label-from M" in again.stdout
    records = list((tmp_path / "inpainted-segmenter" / "runs").glob("*/*_inpaint.json"))
    assert records and all(json.loads(r.read_text())["resample"] == 2 for r in records)
    # --fewshot-strength: every region started from its sketch; --fewshot-headroom: more real lesion cases
    assert "every region started from a sketch (`inpaint --init SKETCH --strength 0.5`, `--fewshot-sketch lesion`)" in (
        again.stdout
    )
    # --fewshot-pasted: the sketches themselves, the region labelled lesion, as a control
    assert (
        "| real + pasted (8 + " in again.stdout and "real + pasted lesions (no diffusion) − real alone" in again.stdout
    )
    for path in sorted((tmp_path / "pasted" / "labelsTr").glob("*.nii.gz")):
        region = read(tmp_path / "regions" / path.name)[0] > 0
        assert np.array_equal(read(path)[0] == 2, region)
        pasted = read(tmp_path / "pasted" / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz"))[0]
        host = read(tmp_path / "normal" / "imagesTr" / f"{path.name.split('_from_')[0]}_0000.nii.gz")[0]
        assert np.array_equal(pasted[~region], host[~region]) and not np.array_equal(pasted[region], host[region])
    for r in records:
        rec = json.loads(r.read_text())
        assert rec["strength"] == 0.5 and Path(rec["init"]).parent == tmp_path / "sketches"
    assert "more real lesion phantoms (headroom; demo-data seed 2)" in again.stdout
    assert "more real lesion phantoms − real alone, lesion Dice (the headroom" in again.stdout
    assert "kept for the downstream models: " in again.stdout
    more = sorted((tmp_path / "more" / "labelsTr").glob("*.nii.gz"))
    assert more and all((read(p)[0] == 2).any() for p in more)


def test_transplanted_lesions_keep_their_shapes_inside_the_head():
    """The few-shot regions: each donor lesion moved whole to a random place at least the margin
    inside the head, apart from the others; nothing placed where it cannot fit."""
    import numpy as np
    from scipy import ndimage as ndi

    from ldmtool.data.lesions import transplant

    grid = np.indices((40, 40, 20))
    head = ((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + ((grid[2] - 10) * 2) ** 2) <= 17**2
    label = head.astype(np.uint8)
    donor = np.zeros_like(label)
    donor[5:9, 5:8, 3:6] = 2  # a 4×3×3 box
    donor[20:22, 20:22, 10:12] = 2  # a 2×2×2 cube
    donor[30, 30, 15] = 2  # a single voxel
    zooms = (1.0, 1.0, 2.0)
    depth = ndi.distance_transform_edt(head, sampling=zooms)
    for seed in range(5):
        region = transplant(label, donor, 2, zooms, np.random.default_rng(seed), margin_mm=4.0)[0]
        comps, n = ndi.label(region)
        assert n == 3
        sizes = sorted(int((comps == i).sum()) for i in range(1, n + 1))
        assert sizes == [1, 8, 36]
        assert (depth[region] >= 4.0).all()
        boxes = sorted(tuple(b - a for a, b in ((s.start, s.stop) for s in sl)) for sl in ndi.find_objects(comps))
        assert boxes == sorted([(4, 3, 3), (2, 2, 2), (1, 1, 1)])
    other = transplant(label, donor, 2, zooms, np.random.default_rng(1), margin_mm=4.0)[0]
    assert not np.array_equal(other, transplant(label, donor, 2, zooms, np.random.default_rng(2), margin_mm=4.0)[0])
    tiny = np.zeros_like(label)
    tiny[18:22, 18:22, 9:11] = 1  # a head too small for any lesion at this margin
    assert not transplant(tiny, donor, 2, zooms, np.random.default_rng(0), margin_mm=4.0)[0].any()


def test_lesion_brightness_is_the_lesion_mean_over_the_rest_of_the_head(tmp_path):
    """Per case: mean lesion intensity / median of the other head voxels; a case without lesion
    voxels is left out."""
    import nibabel as nib
    import numpy as np

    from benchmarks.conditional import lesion_brightness

    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    label = np.zeros((8, 8, 4), np.uint8)
    label[1:7, 1:7] = 1
    image = np.where(label > 0, 100.0, 0.0).astype(np.float32)
    image[3, 1:7] = 80.0  # a sixth of the head darker: its median stays 100, its mean does not
    label[2, 2, 1:3], label[2, 3, 1:3] = 2, 2
    image[2, 2, 1:3], image[2, 3, 1:3] = 150.0, 130.0
    for case, lab in (("a", label), ("b", np.where(label == 2, 1, label).astype(np.uint8))):
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "labelsTr" / f"{case}.nii.gz")
    assert lesion_brightness(tmp_path, ["a", "b"], 2) == pytest.approx([1.4])


def test_lesion_tissue_keeps_lesions_off_dark_ventricles():
    """Few-shot placement: tissue as bright as that around the donor's lesions is allowed, a dark
    ventricle (and the voxel next to it) is not; a transplanted lesion lands in allowed tissue only."""
    import numpy as np

    from benchmarks.conditional import lesion_surroundings, lesion_tissue
    from ldmtool.data.lesions import transplant

    label = np.zeros((40, 40, 20), np.uint8)
    label[4:36, 4:36, 2:18] = 1
    image = np.where(label > 0, 100.0, 0.0)
    donor_label, donor_image = label.copy(), image.copy()
    donor_label[18:21, 18:21, 9:12] = 2
    donor_image[18:21, 18:21, 9:12] = 160.0
    surroundings = lesion_surroundings([(donor_image, donor_label)], 2)
    assert surroundings == 1.0
    image[10:30, 10:20, 4:16] = 10.0  # a dark ventricle filling half of the inner head
    allowed = lesion_tissue(image, label, 2, surroundings)
    # the ventricle but its outermost edges and corners, which the smoothing brightens, and the voxel beside a face
    assert not allowed[11:29, 11:19, 5:15].any() and not allowed[15, 20, 10]
    assert allowed[15, 25, 10]
    for seed in range(3):
        region = transplant(label, donor_label, 2, (1.0, 1.0, 1.0), np.random.default_rng(seed), 3.0, allowed)[0]
        assert region.sum() == 27 and allowed[region].all()


def test_insertion_region_in_lesion_tissue_avoids_the_ventricle_and_lesions():
    """Insertion placement: without `allowed` the ball sits at the head's centre (over a central
    ventricle); with `lesion_tissue` it lies wholly in bright tissue, off the ventricle and away
    from the case's own lesion, and keeps its size."""
    import numpy as np

    from benchmarks.conditional import insertion_region, lesion_tissue

    i, j, k = np.indices((48, 48, 24))
    label = (((i - 23.5) / 20) ** 2 + ((j - 23.5) / 20) ** 2 + ((k - 11.5) / 10) ** 2 <= 1).astype(np.uint8)
    image = np.where(label > 0, 100.0, 0.0)
    image[20:28, 20:28, 8:16] = 10.0  # a dark ventricle in the middle
    label[12:16, 12:16, 10:14] = 2  # a lesion off-centre
    image[label == 2] = 150.0
    centre = insertion_region(label, 2, 3.0)
    assert (image[centre] == 10.0).any()
    allowed = lesion_tissue(image, label, 2, 1.0)
    region = insertion_region(label, 2, 3.0, allowed)
    assert region.sum() == centre.sum() == 123
    assert (image[region] == 100.0).all() and allowed[region].all()
    near = np.zeros_like(region)
    near[9:19, 9:19, 7:17] = True  # the lesion grown by three voxels
    assert not (region & near).any()


def test_ixi_tissue_maps_are_majority_classes_on_the_4mm_grid(tmp_path):
    """`conditional.py --ixi` data: DLMUSE ids merged to tissue classes, 2×2×2 blocks → one voxel
    whose label is the block's most frequent class and whose intensity is the block's mean, in RAS."""
    import json

    import nibabel as nib
    import numpy as np

    from benchmarks.conditional import ixi_tissues

    src = tmp_path / "ixi"
    for sub in ("imagesTr", "labelsTr"):
        (src / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ras = np.zeros((4, 6, 8), np.int16)  # labels in RAS voxel order; blocks of 2×2×2
    ras[0:2, 0:2, 0:2] = 100  # grey matter (cortex)…
    ras[0, 0, 0:2] = 1  # …with 2 of 8 voxels outer CSF: still grey matter
    ras[2:4, 0:2, 0:2] = 81  # white matter, 4 of 8 voxels…
    ras[2:4, 0, 0:2] = 51  # …and 4 of 8 ventricle: a tie goes to the first class named (csf)
    ras[0:2, 2:4, 0:2] = 59  # thalamus: deep grey, 5 of 8 voxels
    ras[0:2, 2:4, 0] = [[59, 0], [0, 0]]
    image = rng.random(ras.shape).astype(np.float32)
    # stored PSR like the real files: array axes (P, S, R) = RAS axes (1 reversed, 2, 0)
    psr = np.transpose(ras, (1, 2, 0))[::-1]
    img_psr = np.transpose(image, (1, 2, 0))[::-1]
    affine = np.array([[0, 0, 2, -3], [-2, 0, 0, 10], [0, 2, 0, -7], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(img_psr.copy(), affine), src / "imagesTr" / "IXI001_0000.nii.gz")
    nib.save(nib.Nifti1Image(psr.copy(), affine), src / "labelsTr" / "IXI001.nii.gz")

    out = ixi_tissues(src, tmp_path / "out", ["IXI001"])
    lab = nib.load(out / "labelsTr" / "IXI001.nii.gz")
    img = nib.load(out / "imagesTr" / "IXI001_0000.nii.gz")
    names = json.loads((out / "dataset.json").read_text())["labels"]
    assert names == {"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3, "deep_grey": 4}
    got = np.asarray(lab.dataobj)
    assert got.shape == (2, 3, 4) and nib.aff2axcodes(lab.affine) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(lab.affine)[:3]), 4.0)
    assert got[0, 0, 0] == names["grey_matter"] and got[1, 0, 0] == names["csf"]
    assert got[0, 1, 0] == names["deep_grey"] and got[1, 1, 0] == 0 and got[0, 0, 1] == 0
    assert np.isclose(np.asarray(img.dataobj)[1, 2, 3], image[2:4, 4:6, 6:8].mean(), atol=1e-6)
    # the output voxel's centre is the mean of its block's input voxel centres
    block = nib.as_closest_canonical(nib.load(src / "imagesTr" / "IXI001_0000.nii.gz")).affine
    centres = [block @ np.array([i, j, k, 1.0]) for i in (2, 3) for j in (4, 5) for k in (6, 7)]
    assert np.allclose(img.affine @ np.array([1, 2, 3, 1.0]), np.mean(centres, axis=0))

    # factor 1 (`--ixi-spacing 2`): the data's own 2 mm grid in RAS, every voxel its own class
    own = ixi_tissues(src, tmp_path / "own", ["IXI001"], factor=1)
    lab1 = nib.load(own / "labelsTr" / "IXI001.nii.gz")
    img1 = nib.load(own / "imagesTr" / "IXI001_0000.nii.gz")
    assert lab1.shape == ras.shape and nib.aff2axcodes(lab1.affine) == ("R", "A", "S")
    assert np.allclose(lab1.affine, block) and np.allclose(img1.affine, block)
    assert np.allclose(np.asarray(img1.dataobj), image)
    got1 = np.asarray(lab1.dataobj)
    assert got1[0, 0, 0] == names["csf"] and got1[0, 0, 1] == names["csf"]
    assert got1[1, 1, 1] == names["grey_matter"] and got1[3, 0, 0] == names["csf"]
    assert got1[3, 1, 0] == names["white_matter"] and got1[0, 2, 1] == names["deep_grey"]


def test_reuse_keeps_only_finished_training_runs(tmp_path, monkeypatch, capsys):
    """--reuse: a folder whose state.json says complete (and that holds the model) is kept; an
    unfinished or absent one is trained; without --reuse everything is trained."""
    import json

    import benchmarks.conditional as cond

    calls = []
    monkeypatch.setattr(cond, "ldmtool", lambda *a: calls.append(a))
    done, partial = tmp_path / "AE", tmp_path / "LDM-concat"
    for folder, complete in ((done, True), (partial, False)):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        (folder / "state.json").write_text(json.dumps({"step": 5, "elapsed_seconds": 3.0, "complete": complete}))
    assert cond.train(True, done, "train-ae") is False and calls == []
    assert "--reuse: AE kept as it is (5 steps, 3 s)" in capsys.readouterr().err
    assert cond.train(True, partial, "train-ldm") is True and calls == [("train-ldm",)]
    assert cond.train(True, tmp_path / "SEG", "train-seg") is True
    assert cond.train(False, done, "train-ae") is True and len(calls) == 3


def test_reuse_needs_ixi_or_fewshot_and_work():
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conditional.py"), "--reuse"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == "--reuse: only with --ixi or --fewshot, and --work (the folder holding the models to keep)"
    )


def test_fewshot_lesion_weight_is_checked_before_any_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conditional.py"), "--fewshot", "5", "--fewshot-lesion-weight",
         "-1", "--work", str(tmp_path / "w")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and not (tmp_path / "w").exists()
    assert proc.stderr.strip() == "--fewshot-lesion-weight -1: expected a number ≥ 0 (0: no extra weight)"


def test_fewshot_strength_is_checked_before_any_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "conditional.py"), "--fewshot", "5", "--fewshot-strength", "1.5",
         "--work", str(tmp_path / "W")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and not (tmp_path / "W").exists()
    assert proc.stderr.strip() == "--fewshot-strength must lie in (0, 1]; got 1.5"


def test_region_rise_measures_how_much_brighter_the_region_became(tmp_path):
    import nibabel as nib
    import numpy as np

    from benchmarks.conditional import region_rise

    for sub in ("n/imagesTr", "s/imagesTr", "r"):
        (tmp_path / sub).mkdir(parents=True)
    before = np.full((6, 6, 4), 10.0, np.float32)
    after = before.copy()
    region = np.zeros(before.shape, np.uint8)
    region[1:3, 1:3, 1:3] = 1
    after[region > 0] = 13.0
    after[0, 0, 0] = 500.0  # outside the region: not counted
    for arr, path in ((before, "n/imagesTr/a_0000"), (after, "s/imagesTr/b_0000"), (region, "r/b")):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{path}.nii.gz")
    rise = region_rise(tmp_path / "n", tmp_path / "s", tmp_path / "r", "a", "b")
    assert rise == pytest.approx(0.3)


def test_write_sketch_brightens_the_region_only(tmp_path):
    """The few-shot sketch: the host's voxels times the gain inside the region, untouched outside,
    in the host's grid and value type."""
    import nibabel as nib
    import numpy as np

    from benchmarks.conditional import write_sketch

    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    host = (np.arange(6 * 5 * 4).reshape(6, 5, 4) % 50 + 10).astype(np.int16)
    region = np.zeros(host.shape, np.uint8)
    region[2:4, 1:3, 1:3] = 1
    nib.save(nib.Nifti1Image(host, affine), tmp_path / "h.nii.gz")
    nib.save(nib.Nifti1Image(region, affine), tmp_path / "r.nii.gz")
    out = write_sketch(tmp_path / "h.nii.gz", tmp_path / "r.nii.gz", 1.5, tmp_path / "s" / "x.nii.gz")
    img = nib.load(out)
    got = np.asarray(img.dataobj)
    assert got.dtype == np.int16 and np.allclose(img.affine, affine)
    inside = region > 0
    assert np.array_equal(got[~inside], host[~inside])
    assert np.array_equal(got[inside], np.rint(host[inside] * 1.5).astype(np.int16))


def test_pasted_sketch_carries_the_donor_lesion_to_its_new_place(tmp_path):
    """--fewshot-sketch lesion: the donor's lesion voxels (× the ratio) written where `transplant`
    moved that lesion, the host untouched elsewhere, in the host's grid and value type."""
    import nibabel as nib
    import numpy as np

    from benchmarks.conditional import pasted_sketch, transplant

    grid = np.indices((40, 40, 20))
    label = (((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + ((grid[2] - 10) * 2) ** 2) <= 17**2).astype(np.uint8)
    donor_label = label.copy()
    donor_label[18:22, 17:20, 9:12] = 2
    donor_label[24:26, 24:26, 10:12] = 2
    donor = (np.random.default_rng(0).uniform(100, 200, label.shape)).astype(np.float32)
    region, moves = transplant(label, donor_label, 2, (1.0, 1.0, 2.0), np.random.default_rng(3), 4.0)
    assert len(moves) == 2 and region.sum() == (donor_label == 2).sum()
    host = (np.arange(label.size).reshape(label.shape) % 97).astype(np.int16)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(host, affine), tmp_path / "h.nii.gz")
    img = nib.load(pasted_sketch(tmp_path / "h.nii.gz", donor, 0.5, moves, tmp_path / "s" / "x.nii.gz"))
    got = np.asarray(img.dataobj)
    assert got.dtype == np.int16 and np.allclose(img.affine, affine)
    assert np.array_equal(got[~region], host[~region])
    for src, dst, blob in moves:
        assert (donor_label[src][blob] == 2).all() and region[dst][blob].all()
        assert np.array_equal(got[dst][blob], np.rint(donor[src][blob] * 0.5).astype(np.int16))


def test_fewshot_label_from_is_checked_before_any_training():
    import subprocess

    for value in ("decoder", ",", "painted,segmentor"):
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "benchmarks" / "conditional.py"),
                "--fewshot",
                "5",
                "--fewshot-label-from",
                value,
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            f"--fewshot-label-from {value}: expected region, painted or segmenter, e.g. painted,segmenter"
        )
