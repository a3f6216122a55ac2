"""`evaluate --only condition`: condition fidelity of mask-to-image samples and inpainting outputs.

Known answers: real images presented as samples of their own maps score exactly the segmenter's
Dice on the real images; paired with another case's map they score clearly lower; an "inserted"
region that is the case's own lesion is found with Dice 1 and no centroid error.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from ldmtool.cli.main import main
from ldmtool.errors import LdmError
from ldmtool.evaluate import condition as cond

SHAPE = (32, 32, 16)
NAMES = {"background": 0, "head": 1, "lesion": 2}
TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    from ldmtool.data.phantoms import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("cond") / "real", n_cases=4, shape=SHAPE, seed=3)


def _cases(real: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (real / "labelsTr").glob("*.nii.gz"))


def fake_samples(real: Path, out: Path, shift: int = 0, prov_extra: dict | None = None) -> Path:
    """A `sample --labels`-like folder whose images are the real images; case i is said to follow
    the map of case i + shift (0: its own map)."""
    cases = _cases(real)
    for sub in ("imagesTr", "labelsTr", "provenance"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(real / "dataset.json", out / "dataset.json")
    for i, case in enumerate(cases):
        name = f"synth_{case}_000"
        shutil.copy(real / "imagesTr" / f"{case}_0000.nii.gz", out / "imagesTr" / f"{name}_0000.nii.gz")
        asked = real / "labelsTr" / f"{cases[(i + shift) % len(cases)]}.nii.gz"
        shutil.copy(asked, out / "labelsTr" / f"{name}.nii.gz")
        prov = {
            "sample": name,
            "label_map": str(asked),
            "deformation": None,
            "files": {"image": f"imagesTr/{name}_0000.nii.gz", "label": f"labelsTr/{name}.nii.gz"},
            **(prov_extra or {}),
        }
        (out / "provenance" / f"{name}.json").write_text(json.dumps(prov))
    return out


def _key(path: Path) -> bytes:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32).tobytes()


@pytest.fixture(scope="module")
def oracle(real):
    """An imperfect segmenter that knows the phantoms: the true map with the lesion grown by a voxel."""
    table = {}
    for case in _cases(real):
        label = np.asarray(nib.load(real / "labelsTr" / f"{case}.nii.gz").dataobj).astype(np.uint8)
        grown = label.copy()
        grown[ndi.binary_dilation(label == 2) & (label > 0)] = 2
        table[_key(real / "imagesTr" / f"{case}_0000.nii.gz")] = grown
    return lambda path: table[_key(Path(path))]


def test_own_maps_score_the_real_dice_and_shuffled_maps_score_lower(real, oracle, tmp_path):
    own = cond.condition_fidelity(fake_samples(real, tmp_path / "own"), real, oracle, NAMES)["mask_to_image"]
    assert own["n_samples"] == 4 and own["n_maps_with_real_image"] == 4
    assert own["synthetic"]["dice"] == pytest.approx(own["real"]["dice"], abs=0)
    assert own["gap_dice_mean"] == 0.0 and own["real"]["dice"]["lesion"] < 1  # imperfect segmenter
    wrong = cond.condition_fidelity(fake_samples(real, tmp_path / "wrong", shift=1), real, oracle, NAMES)
    wrong = wrong["mask_to_image"]
    assert wrong["real"]["dice_mean"] == pytest.approx(own["real"]["dice_mean"])  # the maps' real images
    assert wrong["synthetic"]["dice"]["lesion"] < own["synthetic"]["dice"]["lesion"] - 0.3
    assert wrong["gap_dice_mean"] < -0.15


def test_missing_map_and_provenance_without_a_map_are_one_line_errors(real, oracle, tmp_path):
    folder = fake_samples(real, tmp_path / "s")
    prov = sorted((folder / "provenance").glob("*.json"))[0]
    rec = json.loads(prov.read_text())
    rec["label_map"] = str(tmp_path / "gone.nii.gz")
    prov.write_text(json.dumps(rec))
    with pytest.raises(LdmError, match="gone.nii.gz named by .* is missing"):
        cond.condition_fidelity(folder, real, oracle, NAMES)
    del rec["label_map"]
    prov.write_text(json.dumps(rec))
    with pytest.raises(LdmError, match="names no label map"):
        cond.condition_fidelity(folder, real, oracle, NAMES)
    with pytest.raises(LdmError, match="holds no conditioned outputs"):
        cond.condition_fidelity(real, real, oracle, NAMES)


def _inpaint_folder(real: Path, out: Path, shift: tuple[int, int, int]) -> Path:
    """An `inpaint`-like output: each image unchanged, the "region" its own lesion moved by `shift`."""
    out.mkdir(parents=True)
    for case in _cases(real):
        src = real / "imagesTr" / f"{case}_0000.nii.gz"
        label = nib.load(real / "labelsTr" / f"{case}.nii.gz")
        region = np.roll(np.asarray(label.dataobj) == 2, shift, axis=(0, 1, 2))
        shutil.copy(src, out / f"{case}_inpainted.nii.gz")
        nib.save(nib.Nifti1Image(region.astype(np.uint8), label.affine), out / f"{case}_region.nii.gz")
        seam = {"border_gradient": 1.0, "tissue_gradient_p50": 0.5, "tissue_gradient_p95": 2.0, "within": True}
        rec = {"source": str(src), "labels": None, "label": "lesion", "healthy": False, "method": "repaint",
               "seam": seam, "outputs": {"inpainted": f"{case}_inpainted.nii.gz", "region": f"{case}_region.nii.gz"}}  # fmt: skip
        (out / f"{case}_inpaint.json").write_text(json.dumps(rec))
    return out


def test_inpainting_region_on_the_lesion_is_found_and_elsewhere_is_missed(real, tmp_path):
    def truth(path):  # a perfect segmenter
        case = Path(path).name[: -len("_inpainted.nii.gz")]
        return np.asarray(nib.load(real / "labelsTr" / f"{case}.nii.gz").dataobj)

    res = cond.condition_fidelity(_inpaint_folder(real, tmp_path / "on", (0, 0, 0)), None, truth, NAMES)
    p = res["inpainting"]
    with_lesion = [c for c in p["cases"] if c["volume_ratio"] > 0]
    assert p["n_cases"] == 4 and p["outside_exact"] == 4 and p["seam_within"] == 4 and with_lesion
    for c in with_lesion:
        assert c["dice"] == 1.0 and c["volume_ratio"] == 1.0 and c["centroid_error_mm"] == pytest.approx(0, abs=1e-9)
    far = cond.condition_fidelity(_inpaint_folder(real, tmp_path / "far", (0, 0, 8)), None, truth, NAMES)
    assert far["inpainting"]["dice_mean"] < 0.2


def _run(*args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["--quiet", *[str(a) for a in args]])


def test_cli_condition_stage_with_a_trained_segmenter(real, tmp_path, capsys):
    seg = tmp_path / "SEG"
    assert _run("train-seg", real, "--out", seg, "--config", TINY_YAML, "--arch", "unet", "--epochs", 1) == 0
    syn = fake_samples(real, tmp_path / "S")
    out = tmp_path / "R"
    assert (
        _run("evaluate", "--real", real, "--synthetic", syn, "--out", out, "--only", "condition", "--segmenter", seg)
        == 0
    )
    rep = json.loads((out / "report.json").read_text())
    m = rep["condition_fidelity"]["mask_to_image"]
    assert m["synthetic"]["dice"] == m["real"]["dice"]  # the same images: the same segmentation
    assert rep["condition_fidelity"]["segmenter"]["arch"] == "unet" and rep["skipped"] == {}
    assert "Condition fidelity" in (out / "report.html").read_text()
    # --segmenter adds the criterion to the others asked for
    assert _run("evaluate", "--real", real, "--synthetic", syn, "--out", tmp_path / "R1", "--only", "speed", "--segmenter", seg) == 0  # fmt: skip
    rep1 = json.loads((tmp_path / "R1" / "report.json").read_text())
    assert rep1["settings"]["only"] == ["speed", "condition"] and "condition_fidelity" in rep1
    # without a segmenter: listed as not computed; a folder of plain samples: one-line error
    assert _run("evaluate", "--real", real, "--synthetic", syn, "--out", tmp_path / "R2", "--only", "condition") == 0
    assert "--segmenter" in json.loads((tmp_path / "R2" / "report.json").read_text())["skipped"]["condition"]
    capsys.readouterr()
    plain = tmp_path / "plain"
    shutil.copytree(syn, plain)
    for p in (plain / "provenance").glob("*.json"):
        p.write_text(json.dumps({"sample": p.stem, "seconds": 1.0}))
    assert _run("evaluate", "--real", real, "--synthetic", plain, "--out", tmp_path / "R3", "--segmenter", seg, "--only", "condition") == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no label map" in err[0]
