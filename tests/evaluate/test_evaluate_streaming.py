"""Streaming evaluation: one read per folder, provenance only for speed, the per-volume feature cache."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from ldmtool.config import EvaluateConfig
from ldmtool.evaluate.report import run_evaluation
from ldmtool.evaluate.volumes import open_volume_set

TINY = dict(views=("axial",), slices_per_view=1, image_size=32, q=3, repeats=2, pairs=1)


@pytest.fixture
def reads(monkeypatch):
    """Count image reads per file."""
    from ldmtool.io.dataset import Dataset

    count: Counter = Counter()
    original = Dataset.read

    def counting(self, case, *a, **kw):
        count[case.image.name] += 1
        return original(self, case, *a, **kw)

    monkeypatch.setattr(Dataset, "read", counting)
    return count


def _run(sets_dir, out, cache, **kw):
    cfg = EvaluateConfig(cache_dir=str(cache), **{**TINY, **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_evaluation(sets_dir / "train", sets_dir / "copies", out, cfg, train_dir=sets_dir / "train")


def test_same_folder_is_read_once_and_second_run_hits_the_cache(sets_dir, tmp_path, reads):
    rep = _run(sets_dir, tmp_path / "a", tmp_path / "cache", only=("fidelity", "privacy"))
    # --real and --train are one folder: embedded once (6 + 6 synthetic volumes, not 18); the
    # copies hold the training files' bytes, so they already hit the cache in the first run
    assert rep["feature_cache"]["misses"] == 6 and rep["feature_cache"]["hits"] == 6
    assert rep["inputs"]["train"]["n"] == 6
    assert rep["privacy"]["max_ssim_mean"] == pytest.approx(1.0, abs=1e-4)
    search = rep["privacy"]["search"]
    assert search["method"] == "two-stage" and search["recall_vs_exhaustive"]["recall"] == 1.0
    assert search["exact_pairs_per_query"] == pytest.approx(1.0)  # copies stand out in the coarse stage
    rep2 = _run(sets_dir, tmp_path / "b", tmp_path / "cache", only=("fidelity",))
    assert rep2["feature_cache"]["hits"] == 12 and rep2["feature_cache"]["misses"] == 0
    assert rep2["fidelity"]["fid"] == pytest.approx(rep["fidelity"]["fid"], rel=1e-6)
    # synthetic = the real volumes: radiomic statistics identical
    attrs = rep2["attributes"]
    assert attrs["frd"] == pytest.approx(0, abs=1e-6) and attrs["sad"] < 0.01 and attrs["attributes_used"] > 10
    from ldmtool.evaluate.html import write_report

    page = write_report(rep2, tmp_path / "b")["html"].read_text()
    assert "Most different attributes" in page and "FRD (radiomics)" in page


def test_only_speed_reads_provenance_only(sets_dir, tmp_path, reads):
    rep = _run(sets_dir, tmp_path / "r", "none", only=("speed",))
    assert rep["speed"]["n_samples"] == 6 and sum(reads.values()) == 0
    from ldmtool.evaluate.html import write_report

    write_report(rep, tmp_path / "r")


def test_exhaustive_search_matches_two_stage(sets_dir, tmp_path):
    a = _run(sets_dir, tmp_path / "a", "none", only=("privacy",))
    b = _run(sets_dir, tmp_path / "b", "none", only=("privacy",), nn_candidates=0)
    assert b["privacy"]["search"]["method"] == "exhaustive"
    assert [p["nearest_train"] for p in a["privacy"]["per_sample"]] == [
        p["nearest_train"] for p in b["privacy"]["per_sample"]
    ]


def test_labels_are_uint8_and_volumes_stream(sets_dir):
    vs = open_volume_set(sets_dir / "train", "train")
    assert not vs.in_memory
    img, lab = vs.read(2)
    assert img.dtype == np.float32 and lab.dtype == np.uint8 and img.shape == vs.shape
    assert not vs.in_memory
    twin = vs.alias("real")
    assert twin.key == vs.key and twin.labels.dtype == np.uint8 and vs.in_memory
