"""Stays on a grid → a table in the layout they were read from (long, wide or PhysioNet files).

Cells are written at the start time of their bin; numbers in their shortest exact form (`repr`),
so a table on the grid reads back bit for bit. Everything is written atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_dir, atomic_path
from ldmtool.series.reader import FORMATS, SeriesData, _pyarrow


def number(v: float) -> str:
    """A value's shortest text that reads back exactly ("83" for 83.0)."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def time_text(hours: float, style: str) -> str:
    """Hours as hh:mm (`style` "hhmm") or as a number of hours."""
    if style == "hhmm":
        minutes = int(round(hours * 60))
        return f"{minutes // 60:02d}:{minutes % 60:02d}"
    return number(hours)


def _long_rows(data: SeriesData, values: np.ndarray, style: str) -> list[list[str]]:
    """id, time, variable, value rows: known descriptors at time 0, then every filled cell by time."""
    rows = []
    times = [time_text(k * data.grid.step_hours, style) for k in range(data.grid.steps)]
    for n, sid in enumerate(data.ids):
        for s, name in enumerate(data.static_names):
            if not np.isnan(data.static[n, s]):
                rows.append([sid, times[0], name, number(data.static[n, s])])
        for k in range(values.shape[1]):
            for v, name in enumerate(data.variables):
                if not np.isnan(values[n, k, v]):
                    rows.append([sid, times[k], name, number(values[n, k, v])])
    return rows


def _csv_text(rows: list[list[str]], delimiter: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_wide(data: SeriesData, values: np.ndarray, path: Path, style: str, delimiter: str) -> None:
    statics = [s for s in range(len(data.static_names)) if not np.isnan(data.static[:, s]).all()]
    header = ["id", "time", *[data.static_names[s] for s in statics], *data.variables]
    rows = [header]
    for n, sid in enumerate(data.ids):
        cells = ["" if np.isnan(data.static[n, s]) else number(data.static[n, s]) for s in statics]
        for k in range(values.shape[1]):
            row = ["" if np.isnan(x) else number(x) for x in values[n, k]]
            rows.append([sid, time_text(k * data.grid.step_hours, style), *cells, *row])
    _write_text(path, _csv_text(rows, delimiter))


def _physionet_text(data: SeriesData, values: np.ndarray, n: int) -> str:
    rows = [["Time", "Parameter", "Value"], ["00:00", "RecordID", data.ids[n]]]
    for s, name in enumerate(data.static_names):
        v = data.static[n, s]
        rows.append(["00:00", name, "-1" if np.isnan(v) else number(v)])
    for k in range(values.shape[1]):
        for v, name in enumerate(data.variables):
            if not np.isnan(values[n, k, v]):
                rows.append([time_text(k * data.grid.step_hours, "hhmm"), name, number(values[n, k, v])])
    return _csv_text(rows, ",")


def _write_physionet(data: SeriesData, values: np.ndarray, folder: Path) -> None:
    with atomic_dir(folder) as tmp:
        for n, sid in enumerate(data.ids):
            (tmp / f"{sid}.txt").write_text(_physionet_text(data, values, n), encoding="utf-8")


def _write_parquet(data: SeriesData, values: np.ndarray, path: Path, style: str) -> None:
    pq = _pyarrow()
    import pyarrow as pa

    rows = _long_rows(data, values, style)
    cols = list(zip(*rows)) if rows else [(), (), (), ()]
    table = pa.table(
        {
            "id": list(cols[0]),
            "time": list(cols[1]) if style == "hhmm" else [float(t) for t in cols[1]],
            "variable": list(cols[2]),
            "value": [float(v) for v in cols[3]],
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def write_table(data: SeriesData, path: Path, values: np.ndarray | None = None, fmt: str | None = None) -> Path:
    """Write `values` (N, T, V; default `data.values`; NaN cells left out) in `fmt` (default: the
    layout `data` was read from) to `path` (a folder for PhysioNet files). Returns `path`."""
    fmt = fmt or data.source.get("format", "long-csv")
    if fmt not in FORMATS:
        raise LdmError(f"unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")
    values = data.values if values is None else values
    style = data.source.get("time_style", "hours")
    path = Path(path)
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    if fmt == "long-csv":
        _write_text(path, _csv_text([["id", "time", "variable", "value"], *_long_rows(data, values, style)], delimiter))
    elif fmt == "wide-csv":
        _write_wide(data, values, path, style, delimiter)
    elif fmt == "long-parquet":
        _write_parquet(data, values, path, style)
    else:
        _write_physionet(data, values, path)
    return path


def output_name(data: SeriesData, stem: str) -> str:
    """The file (or folder) name of an output table in the layout of `data`."""
    src = Path(data.source.get("path", "table.csv")).name.lower()
    fmt = data.source.get("format", "long-csv")
    if fmt == "physionet":
        return stem
    if fmt == "long-parquet":
        return f"{stem}.parquet"
    return f"{stem}.tsv" if src.endswith(".tsv") else f"{stem}.csv"
