"""The series commands end to end on a tiny table, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ldmtool.series.reader import Grid, read_table
from ldmtool.series.writer import write_table
from tests.cli.conftest import cli  # noqa: F401  (fixture)
from tests.series.conftest import T, tiny_data

TINY = ["--grid-steps", T, "--steps", 4, "--batch-size", 8, "--channels", 8, "--latent-dim", 4, "--score-layers", 1]


def _one_line_error(r, contains):
    lines = r.error_lines()
    assert r.code == 1 and len(lines) == 1, r.both
    assert contains in lines[0] and "internal error" not in lines[0] and "Traceback" not in r.both


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from ldmtool.cli.main import main

    root = tmp_path_factory.mktemp("series_cli")
    table = write_table(tiny_data(fmt="wide-csv"), root / "stays.csv")
    assert main(["--quiet", "train-series", str(table), "--out", str(root / "m"), *map(str, TINY)]) == 0
    return root, table


def test_train_impute_sample(cli, model, tmp_path):  # noqa: F811
    root, table = model
    r = cli(
        "--quiet",
        "impute-series",
        table,
        "--model",
        root / "m",
        "--out",
        tmp_path / "imp",
        "--samples",
        2,
        "--steps",
        3,
    )
    assert r.code == 0, r.both
    data = read_table(table, static_names=("Age", "Gender"), grid=Grid(T, 1.0))
    imputed = read_table(tmp_path / "imp" / "imputed.csv", static_names=("Age", "Gender"), grid=Grid(T, 1.0))
    assert imputed.source["format"] == "wide-csv" and imputed.observed.all()
    np.testing.assert_array_equal(imputed.values[data.observed], data.values[data.observed])
    record = json.loads((tmp_path / "imp" / "impute-series.json").read_text())
    assert record["samples"] == 2 and record["imputed_cells"] == int((~data.observed).sum())
    assert record["steps"] == 3
    header = (tmp_path / "imp" / "uncertainty.csv").read_text().splitlines()[0]
    assert header == "id,time,variable,observed,median,q5,q95"
    r = cli(
        "--quiet",
        "sample-series",
        "--model",
        root / "m",
        "--out",
        tmp_path / "syn",
        "--n",
        3,
        "--steps",
        2,
        "--format",
        "physionet",
    )
    assert r.code == 0, r.both
    assert len(list((tmp_path / "syn" / "synthetic").glob("*.txt"))) == 3
    assert json.loads((tmp_path / "syn" / "sample-series.json").read_text())["guidance"] == 1.0
    r = cli("sample-series", "--model", root / "m", "--out", tmp_path / "g", "--n", 2, "--guidance", 0.5)
    _one_line_error(r, "--guidance needs a model trained with outcomes")
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


def test_impute_expected_value(cli, model, tmp_path):  # noqa: F811
    """--estimate expected: the imputed table holds SeriesModel.expected (observed cells exact);
    with --samples 0 nothing is drawn and only the table and provenance are written."""
    from ldmtool.series.pipeline import SeriesModel

    root, table = model
    r = cli("--quiet", "impute-series", table, "--model", root / "m", "--out", tmp_path / "e",
            "--estimate", "expected", "--samples", 0)  # fmt: skip
    assert r.code == 0, r.both
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["impute-series.json", "imputed.csv"]
    m = SeriesModel.load(root / "m", "cpu")
    data = m.read(table)
    expected = m.expected(data)
    imputed = read_table(tmp_path / "e" / "imputed.csv", static_names=("Age", "Gender"), grid=Grid(T, 1.0))
    np.testing.assert_array_equal(imputed.values[data.observed], data.values[data.observed])
    np.testing.assert_allclose(imputed.values, expected, rtol=1e-12)  # values are written to read back exactly
    assert not np.allclose(imputed.values[~data.observed], 0)
    record = json.loads((tmp_path / "e" / "impute-series.json").read_text())
    assert record["samples"] == 0 and "expected value" in record["estimate"] and "steps" not in record
    r = cli("--quiet", "impute-series", table, "--model", root / "m", "--out", tmp_path / "e2",
            "--estimate", "expected", "--samples", 2, "--steps", 2)  # fmt: skip
    assert r.code == 0, r.both
    assert (tmp_path / "e2" / "uncertainty.csv").is_file() and (tmp_path / "e2" / "samples.npz").is_file()
    record = json.loads((tmp_path / "e2" / "impute-series.json").read_text())
    assert record["steps"] == 2
    r = cli("--quiet", "impute-series", table, "--model", root / "m", "--out", tmp_path / "e3", "--samples", 1)
    assert r.code == 0, r.both
    total = m.model.cfg.num_train_timesteps
    assert json.loads((tmp_path / "e3" / "impute-series.json").read_text())["steps"] == min(10, total)
    assert (tmp_path / "e2" / "imputed.csv").read_text() == (tmp_path / "e" / "imputed.csv").read_text()
    _one_line_error(cli("impute-series", table, "--model", root / "m", "--out", tmp_path / "o", "--samples", 0),
                    "--samples must be at least 1")  # fmt: skip
    _one_line_error(cli("impute-series", table, "--model", root / "m", "--out", tmp_path / "o", "--estimate", "mean"),
                    "--estimate must be one of")  # fmt: skip


def test_unknown_variable_at_imputation(cli, model, tmp_path):  # noqa: F811
    root, _ = model
    bad = tmp_path / "bad.csv"
    bad.write_text("id,time,variable,value\na,0,V0,1\na,1,Lactate,2\n")
    _one_line_error(
        cli("impute-series", bad, "--model", root / "m", "--out", tmp_path / "o"), "unknown variable 'Lactate'"
    )


@pytest.mark.parametrize(
    "text,contains",
    [
        ("id,time,variable,value\na,0,HR,80\na,1,HR,x\n", "not a number"),
        ("id,time,variable,value\na,3,HR,80\na,1,HR,81\n", "comes before"),
        ("id,time,variable,value\na,0,HR,80\nb,0,Age,3\n", "no observation"),
    ],
)
def test_bad_tables_at_training(cli, tmp_path, text, contains):  # noqa: F811
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    out = tmp_path / "out"
    _one_line_error(cli("train-series", bad, "--out", out, *TINY), contains)
    assert not out.exists() or not any(out.iterdir())


def test_help(cli):  # noqa: F811
    for command in ("train-series", "impute-series", "sample-series"):
        r = cli(command, "--help")
        assert r.code == 0 and "Usage" in r.out
