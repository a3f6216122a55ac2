"""Reading and writing tables of stays: round trips of the three layouts, grids, bad tables."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from ldmtool.errors import LdmError
from ldmtool.series.reader import Grid, read_table
from ldmtool.series.writer import write_table
from tests.series.conftest import T, tiny_data

STATIC = ("Age", "Gender")


def _same(a, b):
    assert a.ids == b.ids and a.variables == b.variables
    np.testing.assert_array_equal(a.values, b.values)  # NaN where NaN, every value bit for bit
    np.testing.assert_array_equal(a.static, b.static)


@pytest.mark.parametrize(
    "fmt,name,style",
    [
        ("long-csv", "t.csv", "hours"),
        ("long-csv", "t.tsv", "hhmm"),
        ("wide-csv", "t.csv", "hours"),
        ("wide-csv", "t.csv", "hhmm"),
        ("physionet", "set", "hhmm"),
    ],
)
def test_round_trip(tmp_path, fmt, name, style):
    data = tiny_data(style=style, fmt=fmt)
    path = write_table(data, tmp_path / name)
    back = read_table(path, static_names=STATIC, grid=Grid(T, 1.0))
    assert back.source["format"] == fmt and back.source["time_style"] == style
    _same(data, back)


def test_physionet_archive_outcomes_and_unknown_descriptors(tmp_path):
    data = tiny_data(fmt="physionet", style="hhmm")
    folder = write_table(data, tmp_path / "files")
    archive = tmp_path / "set-a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="set-a")
    rows = ["RecordID,In-hospital_death"] + [f"{i},{int(y)}" for i, y in zip(data.ids, data.outcome)]
    (tmp_path / "Outcomes-a.txt").write_text("\n".join(rows) + "\n")
    assert "00:00,Gender,-1" in (folder / f"{data.ids[1]}.txt").read_text()  # unknown written as −1 …
    back = read_table(archive, static_names=STATIC, grid=Grid(T, 1.0))
    _same(data, back)  # … and read back as unknown
    np.testing.assert_array_equal(back.outcome, data.outcome)


def test_binning_hhmm_and_end_of_grid(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(
        "id,time,variable,value\na,00:10,HR,80\na,00:50,HR,90\na,03:00,HR,70\na,04:00,HR,60\na,05:30,HR,1\n"
    )
    data = read_table(path, grid=Grid(4, 1.0))
    assert data.values[0, 0, 0] == 85.0 and np.isnan(data.values[0, 1, 0]) and data.values[0, 3, 0] == 65.0
    assert data.outside == 1  # 05:30 is after the 4-hour grid


def test_parquet_needs_pyarrow_or_round_trips(tmp_path):
    data = tiny_data(fmt="long-parquet")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(LdmError, match="pyarrow"):
            write_table(data, tmp_path / "t.parquet")
        return
    _same(data, read_table(write_table(data, tmp_path / "t.parquet"), static_names=STATIC, grid=Grid(T, 1.0)))


BAD = {
    "non-numeric": ("id,time,variable,value\na,0,HR,80\na,1,HR,high\n", "not a number"),
    "out of order": ("id,time,variable,value\na,0,HR,80\na,2,HR,81\na,1,HR,82\n", "comes before"),
    "bad time": ("id,time,variable,value\na,noon,HR,80\n", "neither hours"),
    "empty stay": ("id,time,variable,value\na,0,HR,80\nb,0,Age,50\n", "no observation"),
    "no columns": ("stay,when,what\na,0,HR\n", "id,time,variable,value"),
    "unknown variable": ("id,time,variable,value\na,0,HR,80\na,1,Foo,1\n", "unknown variable 'Foo'"),
    "wide non-numeric": ("id,time,HR,Temp\na,0,80,37\na,1,?,37\n", "not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tables_are_one_line_errors(tmp_path, case):
    text, contains = BAD[case]
    path = tmp_path / "t.csv"
    path.write_text(text)
    variables = ["HR"] if case == "unknown variable" else None
    with pytest.raises(LdmError) as err:
        read_table(path, variables=variables)
    assert contains in str(err.value) and "\n" not in str(err.value)


def test_empty_stays_can_be_skipped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(BAD["empty stay"][0])
    assert read_table(path, skip_empty=True).ids == ["a"]
