"""Covariates tables: columns, levels, missing values and case-id matching."""

from __future__ import annotations

import numpy as np
import pytest

from ldmtool.config import DenoiserConfig, from_dict
from ldmtool.data.covariates import read_covariates
from ldmtool.errors import LdmError


def _table(path, text):
    path.write_text(text)
    return path


def test_read_covariates_numeric_two_level_and_missing(tmp_path):
    t = _table(tmp_path / "t.csv", "id,age,sex,site\nc1,30,M,A\nc2,,F,B\nc3,50.5,NA,C\nextra,1,F,A\n")
    values, names, levels = read_covariates(t, ["c1", "c2", "c3", "c4"], ["age", "sex"])
    assert names == ["age", "sex"] and levels == {"sex": ["F", "M"]}
    np.testing.assert_array_equal(values[:, 0], [30.0, np.nan, 50.5, np.nan])
    np.testing.assert_array_equal(values[:, 1], [1.0, 0.0, np.nan, np.nan])


def test_read_covariates_tsv_and_prefix_ids(tmp_path):
    t = _table(tmp_path / "t.tsv", "MRID\tage\nIXI002\t35\nIXI012\t40\n")
    values, _, levels = read_covariates(t, ["IXI002-Guys-0828-T1", "IXI012-HH-1211-T1", "IXI0021-x"], ["age"])
    np.testing.assert_array_equal(values[:, 0], [35.0, 40.0, np.nan])
    assert levels == {}


def test_read_covariates_column_names_ignore_case_when_unambiguous(tmp_path):
    t = _table(tmp_path / "t.csv", "MRID,Age,Sex\nc1,30,M\nc2,40,F\n")
    values, names, levels = read_covariates(t, ["c1", "c2"], ["age", "sex"])
    assert names == ["age", "sex"] and levels == {"sex": ["F", "M"]}
    np.testing.assert_array_equal(values[:, 0], [30.0, 40.0])
    both = _table(tmp_path / "b.csv", "id,Age,AGE\nc1,30,31\n")
    with pytest.raises(LdmError, match="has no column 'age'"):
        read_covariates(both, ["c1"], ["age"])
    assert read_covariates(both, ["c1"], ["AGE"])[0][0, 0] == 31.0


@pytest.mark.parametrize(
    "column,match",
    [
        ("site", "column site has 3 levels; only numeric or two-level columns can condition"),
        ("weight", "has no column 'weight'; columns: age, sex, site"),
        ("empty", "no case of the data set has a value of column empty"),
    ],
)
def test_read_covariates_errors(tmp_path, column, match):
    t = _table(tmp_path / "t.csv", "id,age,sex,site\nc1,30,M,A\nc2,40,F,B\nc3,50,F,C\n")
    if column == "empty":
        t = _table(tmp_path / "t.csv", "id,empty\nc1,\nc2,NA\n")
    with pytest.raises(LdmError, match=match) as err:
        read_covariates(t, ["c1", "c2", "c3"], [column])
    assert "\n" not in str(err.value)


def test_condition_on_lists():
    assert DenoiserConfig(condition_on="none").condition_names == ()
    assert DenoiserConfig(condition_on="lesion").condition_on == "lesion"
    cfg = DenoiserConfig(condition_on=("lesion", "age"))
    assert cfg.condition_on == "lesion,age" and cfg.condition_names == ("lesion", "age")
    assert DenoiserConfig(condition_on=" age , sex").condition_names == ("age", "sex")
    assert from_dict(DenoiserConfig, {"condition_on": ["lesion", "sex"]}).condition_on == "lesion,sex"
    with pytest.raises(LdmError, match="distinct"):
        DenoiserConfig(condition_on="age,age")
