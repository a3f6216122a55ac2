"""benchmarks/multicontrast.py: its scores and baselines, and a tiny end-to-end run that writes the results file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_multicontrast", REPO / "benchmarks" / "multicontrast.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def _phantom(seed: int, contrast: str) -> tuple[np.ndarray, np.ndarray]:
    from ldmtool.data.phantoms import make_phantom

    image, label = make_phantom(np.random.default_rng(seed), (32, 32, 16), contrasts=("t1", "t2", "flair"))[:2]
    return image[..., ("t1", "t2", "flair").index(contrast)].astype(np.float32), np.asarray(label)


def test_image_scores_order_and_mask(bench):
    truth, label = _phantom(0, "flair")
    head = label > 0
    same = bench.image_scores(truth, truth, head)
    assert same["ssim"] == pytest.approx(1.0) and same["ssim_head"] == pytest.approx(1.0)
    assert same["psnr"] > 60 and same["psnr_head"] > 60  # identical: MSE 0 (or rounding)
    lo, hi = bench.percentile_range(truth)
    rng = np.random.default_rng(1)
    small, large = (truth + s * (hi - lo) * rng.standard_normal(truth.shape).astype(np.float32) for s in (0.02, 0.1))
    a, b = bench.image_scores(small, truth, head), bench.image_scores(large, truth, head)
    assert a["psnr_head"] > b["psnr_head"] and a["ssim_head"] > b["ssim_head"] and a["ssim"] > b["ssim"]
    # errors in the background only: the head scores do not see them, the whole-volume ones do
    outside = np.where(head, truth, truth + 0.3 * (hi - lo))
    c = bench.image_scores(outside, truth, head)
    assert c["psnr_head"] > 60 and c["psnr"] < 30


def test_histogram_copy_takes_the_reference_intensities(bench):
    pytest.importorskip("SimpleITK")  # pip install -e '.[bench]'
    t2, _ = _phantom(0, "t2")
    reference = np.concatenate([_phantom(s, "flair")[0] for s in (1, 2)], axis=2)
    matched = bench.histogram_copy(t2, reference)
    assert matched.shape == t2.shape
    q = (50, 90, 99)
    ref_q = np.percentile(reference, q)
    assert np.abs(np.percentile(matched, q) - ref_q).sum() < np.abs(np.percentile(t2, q) - ref_q).sum()


def test_unet_regression_learns(bench, tmp_path):
    """More steps of the supervised baseline: a lower L1 error on its training phantoms."""
    from ldmtool.data.phantoms import write_demo_dataset

    data = write_demo_dataset(tmp_path / "d", n_cases=2, shape=(32, 32, 16), contrasts=("t1", "t2", "flair"))
    cases = bench.cases_of(data)
    flair = np.concatenate([bench.read(bench.channel(data, c, 2))[0] for c in cases], axis=2)
    rng = bench.percentile_range(flair)
    t1, t2 = (bench.read(bench.channel(data, cases[0], c))[0] for c in (0, 1))
    assert bench.unet_inputs(t1, t2).shape == (16, 2, 32, 32)

    def error(steps: int) -> float:
        net = bench.train_unet(data, cases, rng, steps, seed=0)
        return float(np.abs(bench.unet_predict(net, t1, t2, rng) - flair[..., :16]).mean())

    assert error(60) < 0.7 * error(2)


@pytest.mark.slow
def test_tiny_run_writes_the_table_and_results_file(tmp_path):
    pytest.importorskip("SimpleITK")  # the contrast-copy baseline: pip install -e '.[bench]'
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LDMTOOL_RESULTS_DIR": str(tmp_path / "r")}
    tiny = ["--n", 6, "--test", 2, "--shape", "32,32,16", "--ae-steps", 4, "--ldm-steps", 4, "--seg-steps", 4,
            "--unet-steps", 4, "--steps", 3, "--samples", 2]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "multicontrast.py"), *map(str, tiny), "--work", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = (tmp_path / "r").glob("multicontrast-*.md")
    text = path.read_text()
    assert text.startswith("# benchmarks/multicontrast.py results") and "- command: `python " in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| true FLAIR (reference)",
        "| LDM impute (mean of K)",
        "| T2 → FLAIR, histogram-matched",
        "| T1 → FLAIR, histogram-matched",
        "| UNet regression (supervised)",
    ]
    for row in rows[1:]:  # every method scored on both cases: finite means
        psnr = float(row.split(" | ")[1].split(" ± ")[0])
        assert np.isfinite(psnr)
    assert "best (highest mean): PSNR head:" in text
    # the imputation saw T1 and T2 only, and wrote an uncertainty map per channel of every case
    assert not list((tmp_path / "w" / "observed" / "imagesTr").glob("*_0002.nii.gz"))
    assert len(list((tmp_path / "w" / "imputed").glob("*_std_0002.nii.gz"))) == 2
