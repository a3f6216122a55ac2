"""train-ldm --condition-on COLUMNS --covariates TABLE → sample --condition age=… --condition sex=…."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ldmtool.cli.main import main
from ldmtool.models.checkpoint import load_checkpoint

TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"
TINY = ("--config", TINY_YAML, "--steps", 2)


@pytest.fixture(scope="module")
def table(trained, tmp_path_factory):
    """age for 5 of the 6 demo cases (phantom_003 has none), a two-level sex and a three-level site."""
    path = tmp_path_factory.mktemp("cov") / "participants.csv"
    rows = ["case,age,sex,site"]
    for i, (age, sex, site) in enumerate([(20, "M", "A"), (30, "F", "B"), (40, "F", "C")] * 2):
        rows.append(f"phantom_{i:03d},{'' if i == 3 else age},{sex},{site}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _train(cli, trained, out, table, condition_on):
    return cli(
        "train-ldm",
        trained.data,
        "--ae",
        trained.ae,
        "--out",
        out,
        "--condition-on",
        condition_on,
        "--covariates",
        table,
        *TINY,
    )


@pytest.fixture(scope="module")
def covariate_ldm(trained, table, tmp_path_factory):
    out = tmp_path_factory.mktemp("cov") / "LDM"
    args = ["train-ldm", trained.data, "--ae", trained.ae, "--out", out, "--condition-on", "age,sex"]
    assert main(["--quiet", *map(str, args), "--covariates", str(table), *map(str, TINY)]) == 0
    return out


def test_covariate_checkpoint_record(covariate_ldm, table):
    _, cfg = load_checkpoint(covariate_ldm)
    cond = cfg["conditioning"]
    assert cfg["model"]["condition_on"] == "age,sex"
    assert cond["attributes"] == ["age", "sex"] and cond["levels"] == {"sex": ["F", "M"]}
    assert cond["mean"] == pytest.approx([32.0, 1 / 3])  # ages 20 30 40 _ 30 40; M F F M F F
    assert cond["train_range"] == [[20.0, 0.0], [40.0, 1.0]]
    assert cond["covariates"]["missing"] == {"age": 1, "sex": 0}
    assert cond["covariates"]["table"] == str(table)


def test_covariate_sampling_provenance(trained, covariate_ldm, cli, tmp_path):
    out = tmp_path / "S"
    r = cli("sample", "--ae", trained.ae, "--ldm", covariate_ldm, "--out", out, "--n", 1, "--steps", 2,
            "--condition", "age=40", "--condition", "sex=F", "--guidance", 2)  # fmt: skip
    assert r.code == 0, r.both
    prov = json.loads((out / "provenance" / "synth_00000.json").read_text())
    assert prov["conditions"] == {"age": 40.0, "sex": "F"} and prov["guidance"] == 2.0
    r = cli("sample", "--ae", trained.ae, "--ldm", covariate_ldm, "--out", tmp_path / "S2", "--n", 1,
            "--steps", 1, "--condition", "age=90")  # fmt: skip
    assert r.code == 0 and "outside the training range [20, 40]" in r.both


def _one_error(r, *words):
    lines = r.error_lines()
    assert r.code == 1 and len(lines) == 1, r.both
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in r.both


def test_unknown_and_three_level_columns(trained, table, cli, tmp_path):
    _one_error(_train(cli, trained, tmp_path / "a", table, "weight"), "no column 'weight'", "age, sex, site")
    _one_error(_train(cli, trained, tmp_path / "b", table, "age,site"), "column site has 3 levels")


def test_sample_condition_the_model_lacks(trained, covariate_ldm, cli, tmp_path):
    r = cli("sample", "--ae", trained.ae, "--ldm", covariate_ldm, "--out", tmp_path / "x", "--n", 1,
            "--condition", "lesion_volume=2")  # fmt: skip
    _one_error(r, "conditioned on age, sex")
    r = cli("sample", "--ae", trained.ae, "--ldm", covariate_ldm, "--out", tmp_path / "y", "--n", 1,
            "--condition", "sex=X")  # fmt: skip
    _one_error(r, "sex must be one of F, M")
