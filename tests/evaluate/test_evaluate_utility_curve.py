"""`evaluate --utility-curve`: the augmentation curve on tiny phantom sets, its errors and settings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from ldmtool.cli.main import main
from ldmtool.errors import LdmError

TINY = ["--seg-steps", "3", "--seg-channels", "4,8", "--seg-batch-size", "4"]


def run(capsys, *args):
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def base_args(sets_dir, out, *extra):
    return [
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        sets_dir / "copies",
        "--train",
        sets_dir / "train",
        "--out",
        out,
        "--only",
        "utility",
        *TINY,
        *extra,
    ]


def test_curve_report_figure_and_html(sets_dir, tmp_path, capsys):
    # train: 6 real cases, copies: 6 synthetic cases; N=100 does not fit and is dropped
    args = base_args(sets_dir, tmp_path / "r", "--test", sets_dir / "test")
    code, out, err = run(capsys, *args, "--utility-curve", "2,4,100", "--curve-ratios", "1,2", "--curve-seeds", "2")
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    curve = rep["utility_curve"]
    assert curve["task"] == "segmentation" and curve["sizes"] == [2, 4] and curve["ratios"] == [1.0, 2.0]
    assert curve["seeds"] == 2 and "permutation" in curve["subset_rule"]
    conds = ["real", "real+1x syn", "real+2x syn", "synthetic only"]
    assert curve["conditions"] == conds and set(curve["results"]) == {"2", "4"}
    for n in (2, 4):
        res = curve["results"][str(n)]
        assert list(res) == conds
        want = {
            "real": (n, 0),
            "real+1x syn": (n, n),
            "real+2x syn": (n, min(2 * n, 6)),
            "synthetic only": (0, min(2 * n, 6)),
        }
        for c, (n_real, n_syn) in want.items():
            assert (res[c]["n_real"], res[c]["n_synthetic"]) == (n_real, n_syn), (n, c)
            assert len(res[c]["per_seed"]) == 2 and 0 <= res[c]["mean"] <= 1
            assert res[c]["mean"] == pytest.approx(np.mean(res[c]["per_seed"]))
            assert res[c]["std"] == pytest.approx(np.std(res[c]["per_seed"]))
            assert set(res[c]["per_class"]) == {"head", "lesion"}
    two = curve["results"]["2"]
    best = curve["best_at_smallest_N"]
    assert curve["smallest_N"] == 2 and best in ("real+1x syn", "real+2x syn")
    assert curve["gain_at_smallest_N"] == pytest.approx(two[best]["mean"] - two["real"]["mean"])
    assert any("N=100 dropped" in w for w in rep["warnings"])
    assert any("N=4, ratio 2 asks for 8 synthetic cases, 6 exist" in w for w in rep["warnings"])
    assert (tmp_path / "r" / rep["figures"]["utility_curve"]).stat().st_size > 1000
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Augmentation curve" in html and "gain at N=2" in html
    assert "gain at N=2" in out
    assert "utility" in rep and "utility_curve" not in rep["skipped"]


def test_curve_without_test_is_skipped(sets_dir, tmp_path, capsys):
    code, _, err = run(capsys, *base_args(sets_dir, tmp_path / "r", "--utility-curve", "2"))
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "--test" in rep["skipped"]["utility_curve"] and "utility_curve" not in rep


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--utility-curve", "7,9"], "exceed the 6 real training cases"),
        (["--utility-curve", "2,2"], "distinct"),
        (["--utility-curve", "0,2"], "≥ 1"),
        (["--utility-curve", "2", "--curve-ratios", "1,-2"], "curve-ratios"),
        (["--utility-curve", "2", "--curve-ratios", "one"], "--curve-ratios"),
        (["--utility-curve", "2", "--curve-seeds", "0"], "curve-seeds"),
        (["--utility-curve", "2", "--real-share", "1.5"], "real-share"),
    ],
)
def test_bad_curve_settings_are_one_red_line(sets_dir, tmp_path, capsys, extra, words):
    code, out, err = run(capsys, *base_args(sets_dir, tmp_path / "r", "--test", sets_dir / "test", *extra))
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and words in lines[0], err
    assert "Traceback" not in out + err
    assert not (tmp_path / "r" / "report.json").exists()


def test_curve_config_validation():
    from ldmtool.config import EvaluateConfig, from_dict

    cfg = from_dict(EvaluateConfig, {"utility_curve": [10, 20], "curve_ratios": [0.5, 1], "curve_seeds": 2})
    assert cfg.utility_curve == (10, 20) and cfg.curve_ratios == (0.5, 1.0) and cfg.curve_seeds == 2
    assert EvaluateConfig().utility_curve == () and EvaluateConfig().curve_ratios == (1.0, 2.0, 5.0)
    for bad in ({"utility_curve": (3, 3)}, {"utility_curve": (0,)}, {"curve_ratios": ()}, {"curve_ratios": (0,)}):
        with pytest.raises(LdmError):
            EvaluateConfig(**bad)
    with pytest.raises(LdmError, match="curve-seeds"):
        EvaluateConfig(curve_seeds=0)


def test_subsets_are_nested_and_seeded():
    from ldmtool.evaluate.utility_curve import subsets, usable_sizes

    a = subsets(10, 7, 3, (1.0, 2.0), seed=0, repeat=1)
    b = subsets(10, 7, 5, (1.0, 2.0), seed=0, repeat=1)
    assert list(a) == ["real", "real+1x syn", "real+2x syn", "synthetic only"]
    assert np.array_equal(b["real"][0][:3], a["real"][0])  # nested across N
    assert np.array_equal(a["real+2x syn"][1][:3], a["real+1x syn"][1])  # nested across ratios
    assert len(b["real+2x syn"][1]) == 7 and len(a["synthetic only"][0]) == 0  # capped at the 7 that exist
    assert not np.array_equal(subsets(10, 7, 5, (1.0,), 0, 0)["real"][0], b["real"][0])  # repeats differ
    assert usable_sizes((20, 5, 10), 12) == (
        [5, 10],
        ["utility curve: size N=20 dropped, the real training set has 12 cases"],
    )


def test_mixed_batch_keeps_the_real_share_and_oversamples_inside_each_part():
    from ldmtool.evaluate.downstream import _mixed_batch

    rare = torch.tensor([3, 50, 51])  # one rare slice among the real ones, two among the synthetic
    for _ in range(20):
        idx = _mixed_batch(10, 100, 16, 0.5, torch.Generator().manual_seed(_), rare, 0.5)
        real, syn = idx[:8], idx[8:]
        assert len(idx) == 16 and bool((real < 10).all()) and bool((syn >= 10).all())
        assert (real == 3).sum() >= 4 and torch.isin(syn, torch.tensor([50, 51])).sum() >= 4
    only_real = _mixed_batch(10, 100, 4, 1.0, torch.Generator().manual_seed(0), torch.empty(0, dtype=torch.long), 0.5)
    assert bool((only_real < 10).all())


class _Recorder(torch.nn.Module):
    """A real (trainable) 2D segmenter that records the mean intensity of every batch it sees."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, n_classes, 1)
        self.means: list[float] = []

    def forward(self, x):
        self.means.append(float(x.mean()))
        return self.conv(x)


@pytest.mark.parametrize("share", [0.0, 0.75])
def test_segmenter_batches_take_the_real_share(monkeypatch, share):
    from ldmtool.evaluate import downstream as ds
    from ldmtool.evaluate.cases import cases_from_arrays

    # 1 real volume of ones, 9 synthetic volumes of zeros, labels everywhere class 1 (no rare class)
    x = np.concatenate([np.ones((1, 8, 8, 4)), np.zeros((9, 8, 8, 4))]).astype(np.float32)
    y = np.ones(x.shape, dtype=np.int64)
    rec = _Recorder(2)
    monkeypatch.setattr(ds, "build_segmenter", lambda n_classes, cfg: rec)
    cfg = ds.DownstreamConfig(channels=(4, 8), steps=30, batch_size=16, real_share=share)
    ds.train_segmenter(cases_from_arrays(x, y), 2, cfg, torch.device("cpu"), 0, n_real=1)
    means = np.array(rec.means)
    if share:
        assert np.allclose(means, 0.75)  # every batch: 12 of its 16 slices from the real volume
    else:
        assert abs(means.mean() - 0.1) < 0.05 and means.std() > 0  # in proportion: 1 volume in 10
