"""`ldmtool evaluate` end to end on tiny phantom sets: report.json, report.html, subsets, errors."""

from __future__ import annotations

import json
import warnings

import pytest

from ldmtool.cli.main import main

TINY = [
    "--views",
    "axial,coronal",
    "--slices-per-view",
    "1",
    "--image-size",
    "32",
    "--seg-steps",
    "4",
    "--seg-channels",
    "4,8",
    "--q",
    "3",
    "--repeats",
    "2",
    "--pairs",
    "2",
]


def run(capsys, *args):
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def full_report(sets_dir, tmp_path_factory):
    """One full run: synthetic = copies of the training volumes (with provenance sidecars)."""
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "evaluate",
                "--real",
                str(sets_dir / "test"),
                "--synthetic",
                str(sets_dir / "copies"),
                "--train",
                str(sets_dir / "train"),
                "--test",
                str(sets_dir / "test"),
                "--out",
                str(out),
                *TINY,
            ]
        )
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_has_all_six_criteria(full_report):
    out, rep = full_report
    for crit in ("fidelity", "diversity", "speed", "utility", "robustness", "privacy"):
        assert crit in rep, crit
    assert rep["skipped"] == {}
    assert "efficientnet-lite0" in rep["feature_extractor"]["name"]
    assert 0 <= rep["fidelity"]["precision"] <= 1 and rep["fidelity"]["fid"] >= 0
    assert set(rep["fidelity"]["per_view"]) == {"axial", "coronal"}
    # speed is read from the provenance sidecars (0.5 s per sample), not measured here
    assert rep["speed"]["samples_per_second"] == pytest.approx(2.0)
    assert rep["speed"]["devices"] == {"cpu (test)": 6}
    # copies of training volumes: SSIM ≈ 1, all flagged, closer than held-out real data
    priv = rep["privacy"]
    assert priv["max_ssim_mean"] == pytest.approx(1.0, abs=1e-4)
    assert priv["flagged"] == 6 and priv["q"] == 3 and priv["repeats"] == 2
    assert priv["heldout_max_ssim_mean"] < 0.95
    assert priv["memorisation"]["ratio"] < 0.05
    assert len(priv["suspicious_pairs"]) == 2
    # the contrastive audit finds every copy, and every training case copied
    assert priv["audit"]["copy_share"] == 1.0 and priv["audit"]["training_share_copied"] == 1.0
    assert priv["search"]["recall_vs_exhaustive"]["recall"] == 1.0
    assert rep["utility"]["task"] == "segmentation"
    assert set(rep["utility"]["results"]) == {"real", "synthetic", "real+synthetic"}
    for res in rep["utility"]["results"].values():  # Dice, IoU and HD95 per class (MONAI)
        assert set(res["iou"]) == set(res["dice"]) == set(res["hd95_voxels"])
        for c in res["dice"]:
            assert 0 <= res["iou"][c] <= res["dice"][c] + 1e-6 <= 1 + 1e-6  # IoU ≤ Dice per volume
    assert set(rep["robustness"]["results"]["real"]) == {"noise", "fgsm", "pgd"}
    assert rep["robustness"]["epsilon"] == 0.03


def test_report_html_is_self_contained(full_report):
    out, rep = full_report
    html = (out / "report.html").read_text()
    n_figs = len(rep["figures"]) + len(rep["privacy"]["suspicious_pairs"])
    assert n_figs >= 6
    assert html.count('src="data:image/png;base64,') == n_figs
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    for rel in rep["figures"].values():
        assert (out / rel).stat().st_size > 1000


def test_only_subset_and_terminal_table(sets_dir, tmp_path, capsys):
    code, out, err = run(
        capsys,
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        sets_dir / "copies",
        "--train",
        sets_dir / "train",
        "--out",
        tmp_path / "r",
        "--only",
        "fidelity,privacy",
        *TINY,
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "fidelity" in rep and "privacy" in rep
    assert not {"diversity", "speed", "utility", "robustness"} & set(rep)
    assert "precision" in out and "max SSIM" in out and "report.html" in out
    # without --test, the held-out set for privacy is --real (distinct from --train)
    assert rep["privacy"]["heldout_set"] == "real"


def test_skipped_criteria_say_why(sets_dir, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        sets_dir / "train",
        "--out",
        tmp_path / "r",
        "--only",
        "speed,privacy,utility",
        *TINY,
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "--train" in rep["skipped"]["privacy"]
    assert "--test" in rep["skipped"]["utility"]
    assert "provenance" in rep["skipped"]["speed"]


def test_classification_from_csv(sets_dir, tmp_path, capsys):
    from ldmtool.io import load_dataset

    rows = ["case,label"]
    for name in ("train", "copies", "test"):
        for c in load_dataset(sets_dir / name).cases:
            rows.append(
                f"{'synthetic' if name == 'copies' else name}/{c.case_id},{'a' if int(c.case_id[-1]) % 2 else 'b'}"
            )
    csv = tmp_path / "classes.csv"
    csv.write_text("\n".join(rows) + "\n")
    code, _, err = run(
        capsys,
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        sets_dir / "copies",
        "--train",
        sets_dir / "train",
        "--test",
        sets_dir / "test",
        "--out",
        tmp_path / "r",
        "--only",
        "utility,robustness",
        "--class-labels",
        csv,
        *TINY,
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["utility"]["task"] == "classification" and rep["utility"]["classes"] == ["a", "b"]
    for res in rep["robustness"]["results"].values():
        assert set(res) == {"noise", "deepfool"}
        assert 0 <= res["deepfool"]["accuracy"] <= 1 and res["deepfool"]["mean_relative_l2_perturbation"] >= 0


@pytest.mark.parametrize("case", ["missing", "only", "empty", "views", "extractor"])
def test_bad_input_is_one_red_line(sets_dir, tmp_path, capsys, case):
    args = ["evaluate", "--real", sets_dir / "test", "--synthetic", sets_dir / "copies", "--out", tmp_path / "r"]
    if case == "missing":
        args[4] = tmp_path / "nope"
    elif case == "only":
        args += ["--only", "fidelity,beauty"]
    elif case == "empty":
        (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
        args[4] = tmp_path / "empty"
    elif case == "views":
        args += ["--views", "axial,oblique"]
    elif case == "extractor":
        bad = tmp_path / "model.pt"
        bad.write_bytes(b"not a torchscript file")
        args += ["--feature-extractor", bad]
    code, out, err = run(capsys, *args)
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0], err
    assert "Traceback" not in out + err


def test_torchscript_extractor(sets_dir, tmp_path, capsys):
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    path = tmp_path / "feat.pt"
    torch.jit.script(net).save(str(path))
    code, _, err = run(
        capsys,
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        sets_dir / "test",
        "--out",
        tmp_path / "r",
        "--only",
        "fidelity",
        "--feature-extractor",
        path,
        *TINY,
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["feature_extractor"]["name"] == "torchscript:feat.pt"
    assert rep["fidelity"]["precision"] == pytest.approx(1.0) and rep["fidelity"]["fid"] == pytest.approx(0, abs=1e-6)


def test_mixed_shapes_are_resized(sets_dir, tmp_path, capsys):
    from ldmtool.data.phantoms import write_demo_dataset

    write_demo_dataset(tmp_path / "big", n_cases=3, shape=(40, 40, 16), seed=5)
    code, _, err = run(
        capsys,
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        tmp_path / "big",
        "--out",
        tmp_path / "r",
        "--only",
        "fidelity",
        *TINY,
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["inputs"]["synthetic"]["shape"] == [32, 32, 16]


def test_config_file_and_flag_override(sets_dir, tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        "evaluate:\n  only: [fidelity]\n  views: [sagittal]\n  slices_per_view: 2\n  image_size: 32\n  k: 2\n"
    )
    code, _, err = run(
        capsys,
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        sets_dir / "train",
        "--out",
        tmp_path / "r",
        "--config",
        cfg,
        "--k",
        "1",
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["settings"]["views"] == ["sagittal"] and rep["settings"]["k"] == 1
    assert rep["fidelity"]["k"] == 1 and rep["fidelity"]["real_points"] == 4 * 2
    assert list(rep["fidelity"]["per_view"]) == ["sagittal"]


def test_warns_when_real_training_set_is_the_test_set(sets_dir, tmp_path, capsys):
    code, out, err = run(
        capsys,
        "evaluate",
        "--real",
        sets_dir / "test",
        "--synthetic",
        sets_dir / "copies",
        "--test",
        sets_dir / "test",
        "--out",
        tmp_path / "r",
        "--only",
        "utility",
        *TINY,
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert any("is the test set" in w for w in rep["warnings"])
    assert "warning" in out
