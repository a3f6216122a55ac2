"""Optional runs on the real data beside the project (`../shared/data` from the repository root):
marked slow, skipped when the folder is absent (a fresh clone has no data)."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest

from ldmtool.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("LDMTOOL_SHARED_DATA", ROOT.parent / "shared" / "data"))
TINY_YAML = ROOT / "examples" / "tiny.yaml"


def _subset(src: Path, dst: Path, n: int, with_json: bool) -> Path:
    """Links to the first `n` cases of an nnU-Net folder (the data stay where they are)."""
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    for image in sorted((src / "imagesTr").glob("*_0000.nii.gz"))[:n]:
        case = image.name[: -len("_0000.nii.gz")]
        (dst / "imagesTr" / image.name).symlink_to(image)
        (dst / "labelsTr" / f"{case}.nii.gz").symlink_to(src / "labelsTr" / f"{case}.nii.gz")
    if with_json and (src / "dataset.json").is_file():
        (dst / "dataset.json").symlink_to(src / "dataset.json")
    return dst


def _run(*args) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return main(["--quiet", *map(str, args)])


@pytest.mark.slow
def test_train_seg_and_segment_on_hippocampus_cases_of_different_shapes(tmp_path):
    src = DATA / "msd_hippocampus"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    data = _subset(src, tmp_path / "hippo", 6, with_json=True)
    assert _run("train-seg", data, "--out", tmp_path / "M", "--config", TINY_YAML, "--steps", "4") == 0
    assert _run("segment", data / "imagesTr", "--model", tmp_path / "M", "--out", tmp_path / "S") == 0
    assert len(list((tmp_path / "S").glob("*_seg.nii.gz"))) == 6


@pytest.mark.slow
def test_train_ae_on_ixi_with_brain_label_merged(tmp_path):
    src = DATA / "ixi_t1_2mm"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    data = _subset(src, tmp_path / "ixi", 4, with_json=False)
    out = tmp_path / "A"
    args = ("train-ae", data, "--out", out, "--config", TINY_YAML, "--steps", "2", "--spacing", "4,4,4")
    assert _run(*args, "--labels", "brain=1-255") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == {"background": 0, "brain": 1}
    assert config["preprocess"]["shape"] is not None  # chosen from the data (a multiple of the downsampling)


@pytest.mark.slow
def test_ixi_tissue_mapping_file_covers_every_parcellation_id(tmp_path):
    """examples/labels/ixi_tissues.yaml as `--labels`: four named classes, and no brain voxel of the
    DLMUSE parcellations left as background."""
    import nibabel as nib
    import numpy as np

    from ldmtool.data.labels import parse_labels

    src = DATA / "ixi_t1_2mm"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    mapping_file = ROOT / "examples" / "labels" / "ixi_tissues.yaml"
    mapping = parse_labels(str(mapping_file))
    for lab in sorted((src / "labelsTr").glob("*.nii.gz"))[:10]:
        values = np.unique(np.asarray(nib.load(lab).dataobj))
        assert (mapping.apply(values[values > 0]) > 0).all(), lab.name
    data = _subset(src, tmp_path / "ixi", 2, with_json=False)
    out = tmp_path / "A"
    args = ("train-ae", data, "--out", out, "--config", TINY_YAML, "--steps", "2", "--spacing", "4,4,4")
    assert _run(*args, "--labels", mapping_file) == 0
    names = json.loads((out / "config.json").read_text())["label_names"]
    assert names == {"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3, "deep_grey": 4}


@pytest.mark.slow
def test_conditional_benchmark_on_ixi_quick(tmp_path):
    """benchmarks/conditional.py --ixi --quick: mask-to-image on real tissue maps, the guidance table
    and the autoencoder's ceiling (reconstructions segmented in the maps' own grids)."""
    import subprocess
    import sys

    src = DATA / "ixi_t1_2mm"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "conditional.py"), "--ixi", str(src), "--quick"]
    cmd += ["--label-branch", "concat", "--ixi-guidance", "1,3", "--work", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "## Guidance and the autoencoder's ceiling (concat;" in proc.stdout
    for row in ("| samples, guidance 1 |", "| samples, guidance 2 |", "| samples, guidance 3 |"):
        assert row in proc.stdout
    assert "| autoencoder reconstructions of the real images |" in proc.stdout
    recon = sorted((tmp_path / "recon" / "imagesTr").glob("*_0000.nii.gz"))
    assert len(recon) == 2  # the two held-out maps, each in its map's grid
    import nibabel as nib

    for image in recon:
        ref = nib.load(tmp_path / "test" / "imagesTr" / image.name)
        assert nib.load(image).shape == ref.shape
    # --reuse: the finished models in --work are kept as they are, only sampling and scoring run again
    models = [tmp_path / d / "model.safetensors" for d in ("AE", "SEG", "LDM-concat")]
    before = [m.read_bytes() for m in models]
    cmd[cmd.index("1,3")] = "1"
    proc = subprocess.run(cmd + ["--reuse"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("AE", "SEG", "LDM-concat"):
        assert f"--reuse: {name} kept as it is" in proc.stderr
    assert [m.read_bytes() for m in models] == before
    assert "| samples, guidance 1 |" in proc.stdout
    assert re.search(r"autoencoder \d+ steps, \d+ s, segmenter", proc.stdout)  # the kept models' own budgets
