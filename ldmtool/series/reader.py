"""Tables of ICU stays → values on a time grid with masks of what was observed (and back).

Three layouts are read and written, the output always in the layout of the input:

- **long** CSV/TSV/Parquet: one row per observation, columns id, time, variable, value (names matched
  without case; "parameter" for variable, "recordid"/"stay" for id are accepted);
- **wide** CSV/TSV: one row per time, columns id (optional: one stay), time and one per variable;
- **PhysioNet 2012**: a folder or .tar.gz of RECORDID.txt files with rows Time,Parameter,Value
  (Time hh:mm from admission; −1 marks an unknown descriptor).

Times are hours (a number) or hh:mm. Observations are averaged into bins of `step_hours` over
`steps` bins from admission (an observation exactly at the end falls in the last bin; later ones
are left out and counted). Descriptors (`static_names`, e.g. age, sex, ICU type) become static
covariates. Parquet needs pyarrow (an error says so when it is absent).
"""

from __future__ import annotations

import csv
import io
import math
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError

STATIC_DEFAULT = ("Age", "Gender", "Height", "ICUType")
PHYSIONET_DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
FORMATS = ("long-csv", "long-parquet", "wide-csv", "physionet")
_ID = ("id", "recordid", "record_id", "stay", "stay_id", "patient", "patient_id", "subject")
_TIME = ("time", "hour", "hours", "t")
_VARIABLE = ("variable", "parameter", "name")
_VALUE = ("value",)
_MISSING = ("", "nan", "na", "null", "none")


@dataclass
class Grid:
    """The time grid: `steps` bins of `step_hours` from admission."""

    steps: int = 48
    step_hours: float = 1.0

    def __post_init__(self) -> None:
        if int(self.steps) < 2 or not self.step_hours > 0:
            raise LdmError(
                f"the time grid needs at least 2 steps of a positive length; got {self.steps} × {self.step_hours} h"
            )
        self.steps, self.step_hours = int(self.steps), float(self.step_hours)


@dataclass
class Stay:
    """One stay as read: its observations (hours, variable, value) and descriptors."""

    id: str
    rows: list[tuple[float, str, float]] = field(default_factory=list)
    static: dict[str, float] = field(default_factory=dict)


@dataclass
class SeriesData:
    """Stays on a grid. `values` (N, T, V): NaN where nothing was observed; `static` (N, S): NaN
    where unknown; `outcome` (N,): NaN where unknown; `source`: format, time style, path."""

    ids: list[str]
    variables: list[str]
    values: np.ndarray
    static_names: list[str]
    static: np.ndarray
    grid: Grid
    source: dict
    outcome: np.ndarray | None = None
    outside: int = 0  # observations after the end of the grid (left out)

    @property
    def observed(self) -> np.ndarray:
        """(N, T, V) bool: the cells that hold an observation."""
        return ~np.isnan(self.values)

    def subset(self, idx) -> SeriesData:
        """The stays `idx` (indices), same variables, grid and source."""
        idx = np.asarray(idx, dtype=int)
        out = None if self.outcome is None else self.outcome[idx]
        return SeriesData(
            [self.ids[i] for i in idx],
            self.variables,
            self.values[idx],
            self.static_names,
            self.static[idx],
            self.grid,
            self.source,
            out,
        )


def detect_format(path: Path) -> str:
    """The layout of `path` from its name and, for CSV/TSV, its header."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith((".tar.gz", ".tgz", ".tar")):
        return "physionet"
    if name.endswith(".parquet"):
        return "long-parquet"
    if name.endswith(".txt"):
        return "physionet"
    if not name.endswith((".csv", ".tsv", ".csv.gz")):
        raise LdmError(
            f"{path}: unknown table type; use .csv/.tsv (long or wide), .parquet (long) or PhysioNet .txt files"
        )
    rows = _rows(path)
    header = [h.strip().lower() for h in rows[0]] if rows else []
    return "long-csv" if _find(header, _VARIABLE) is not None and _find(header, _VALUE) is not None else "wide-csv"


def _rows(path: Path) -> list[list[str]]:
    """The rows of a CSV (TSV by extension) file; an unreadable file is a one-line error."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.reader(f, delimiter="\t" if path.name.lower().endswith(".tsv") else ","))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LdmError(f"cannot read {path}: {exc}") from None


def _find(header: list[str], names: tuple[str, ...]) -> int | None:
    for i, h in enumerate(header):
        if h in names:
            return i
    return None


def parse_hours(text: str, where: str) -> tuple[float, bool]:
    """(hours, whether written hh:mm) of a time cell; errors name `where`."""
    s = str(text).strip()
    try:
        if ":" in s:
            parts = [int(p) for p in s.split(":")]
            if len(parts) not in (2, 3) or any(p < 0 for p in parts) or any(p >= 60 for p in parts[1:]):
                raise ValueError
            h = parts[0] + parts[1] / 60 + (parts[2] / 3600 if len(parts) == 3 else 0.0)
            return h, True
        h = float(s)
    except ValueError:
        raise LdmError(f"{where}: time {s!r} is neither hours (a number) nor hh:mm") from None
    if not math.isfinite(h) or h < 0:
        raise LdmError(f"{where}: time {s!r} must be a non-negative number of hours since admission")
    return h, False


def parse_value(text, where: str, name: str) -> float | None:
    """A numeric cell (None when empty/NaN); non-numeric or infinite values are errors naming `where`."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
    else:
        s = str(text).strip()
        if s.lower() in _MISSING:
            return None
        try:
            v = float(s)
        except ValueError:
            raise LdmError(f"{where}: value {s!r} of {name} is not a number") from None
    if math.isnan(v):
        return None
    if not math.isfinite(v):
        raise LdmError(f"{where}: value {text!r} of {name} is not finite")
    return v


class _Collector:
    """Gathers rows stay by stay, checking that each stay's times do not go back."""

    def __init__(self, path: Path, static_names: tuple[str, ...]) -> None:
        self.path, self.static_names = path, set(static_names)
        self.stays: dict[str, Stay] = {}
        self.last: dict[str, float] = {}
        self.hhmm = False

    def add(self, sid: str, time_text: str, var: str, value, where: str) -> None:
        if not sid:
            raise LdmError(f"{where}: the stay id is empty")
        hours, hhmm = parse_hours(time_text, where)
        self.hhmm |= hhmm
        if hours < self.last.get(sid, 0.0):
            raise LdmError(
                f"{where}: time {time_text} of stay {sid} comes before the previous row's; sort the table by id and time"
            )
        self.last[sid] = hours
        stay = self.stays.setdefault(sid, Stay(sid))
        v = parse_value(value, where, var)
        if v is None:
            return
        if var in self.static_names:
            stay.static.setdefault(var, v)
        else:
            stay.rows.append((hours, var, v))

    def touch(self, sid: str) -> None:
        self.stays.setdefault(sid, Stay(sid))


def _columns(header: list[str], path: Path, needed: dict[str, tuple[str, ...]]) -> dict[str, int]:
    low = [h.strip().lower() for h in header]
    found = {k: _find(low, names) for k, names in needed.items()}
    lacking = [k for k, i in found.items() if i is None]
    if lacking:
        raise LdmError(
            f"{path}: no {' or '.join(lacking)} column in the header {','.join(header)}; "
            "a long table needs columns id,time,variable,value"
        )
    return found


def _read_long_csv(path: Path, col: _Collector) -> None:
    rows = _rows(path)
    if not rows:
        raise LdmError(f"{path}: the table is empty")
    c = _columns(rows[0], path, {"id": _ID, "time": _TIME, "variable": _VARIABLE, "value": _VALUE})
    width = max(c.values()) + 1
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < width:
            raise LdmError(f"{path} line {n}: {len(row)} cells, the header has {len(rows[0])}")
        col.add(row[c["id"]].strip(), row[c["time"]], row[c["variable"]].strip(), row[c["value"]], f"{path} line {n}")


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise LdmError("Parquet tables need pyarrow: pip install pyarrow (or use a CSV table)") from None
    return pq


def _read_long_parquet(path: Path, col: _Collector) -> None:
    pq = _pyarrow()
    try:
        table = pq.read_table(str(path)).to_pydict()
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise LdmError(f"cannot read {path} as Parquet: {str(exc).splitlines()[0]}") from None
    header = list(table)
    c = _columns(header, path, {"id": _ID, "time": _TIME, "variable": _VARIABLE, "value": _VALUE})
    cols = [table[header[c[k]]] for k in ("id", "time", "variable", "value")]
    if not cols[0]:
        raise LdmError(f"{path}: the table is empty")
    for n, (sid, t, var, v) in enumerate(zip(*cols), start=1):
        col.add(str(sid).strip(), str(t), str(var).strip(), v, f"{path} row {n}")


def _read_wide_csv(path: Path, col: _Collector) -> None:
    rows = _rows(path)
    if len(rows) < 2:
        raise LdmError(f"{path}: the table has no rows below its header")
    header = [h.strip() for h in rows[0]]
    low = [h.lower() for h in header]
    t_col = _find(low, _TIME)
    if t_col is None:
        raise LdmError(
            f"{path}: no time column in the header; a long table needs columns id,time,variable,value, a wide one [id,]time,VARIABLE,..."
        )
    id_col = _find(low, _ID)
    value_cols = [i for i in range(len(header)) if i not in (t_col, id_col)]
    if not value_cols:
        raise LdmError(f"{path}: no variable columns beside id and time")
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise LdmError(f"{path} line {n}: {len(row)} cells, the header has {len(header)}")
        sid = row[id_col].strip() if id_col is not None else path.stem
        col.touch(sid)
        for i in value_cols:
            col.add(sid, row[t_col], header[i], row[i], f"{path} line {n}")


def _physionet_texts(path: Path) -> list[tuple[str, str]]:
    """(name, text) of every per-stay file of a PhysioNet folder, archive or single file, by name."""
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if not p.name.lower().startswith("outcomes"))
        return [(p.name, p.read_text(encoding="utf-8")) for p in files]
    if path.name.lower().endswith(".txt"):
        return [(path.name, path.read_text(encoding="utf-8"))]
    try:
        texts = []
        with tarfile.open(path) as tar:  # in archive order: a gzip stream cannot seek back cheaply
            for m in tar:
                if m.isfile() and m.name.endswith(".txt") and not Path(m.name).name.lower().startswith("outcomes"):
                    texts.append((Path(m.name).name, tar.extractfile(m).read().decode("utf-8")))
        return sorted(texts)
    except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
        raise LdmError(f"cannot read {path} as a .tar.gz of PhysioNet files: {exc}") from None


def _read_physionet(path: Path, col: _Collector) -> None:
    texts = _physionet_texts(path)
    if not texts:
        raise LdmError(f"{path} holds no PhysioNet stay files (RECORDID.txt with rows Time,Parameter,Value)")
    for name, text in texts:
        rows = list(csv.reader(io.StringIO(text)))
        where = f"{path}:{name}" if name != path.name else str(path)
        if not rows or [h.strip().lower() for h in rows[0][:3]] != ["time", "parameter", "value"]:
            raise LdmError(f"{where}: not a PhysioNet stay file (the header must be Time,Parameter,Value)")
        sid = Path(name).stem
        for row in rows[1:]:
            if len(row) >= 3 and row[1].strip() == "RecordID":
                sid = str(row[2]).strip().removesuffix(".0")
        col.touch(sid)
        for n, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 3:
                raise LdmError(f"{where} line {n}: expected Time,Parameter,Value, got {len(row)} cells")
            var = row[1].strip()
            if var == "RecordID":
                continue
            is_descriptor = var in PHYSIONET_DESCRIPTORS and row[0].strip() in ("00:00", "0")
            if is_descriptor and row[2].strip() in ("-1", "-1.0"):  # −1: unknown descriptor
                col.add(sid, row[0], var, None, f"{where} line {n}")
                continue
            col.add(sid, row[0], var, row[2], f"{where} line {n}")


_READERS = {
    "long-csv": _read_long_csv,
    "long-parquet": _read_long_parquet,
    "wide-csv": _read_wide_csv,
    "physionet": _read_physionet,
}


def read_stays(path: Path, static_names: tuple[str, ...] = STATIC_DEFAULT) -> tuple[list[Stay], dict]:
    """The stays of a table as read (no grid yet) and its source record (format, time style, path)."""
    path = Path(path)
    if not path.exists():
        raise LdmError(f"table {path} does not exist")
    fmt = detect_format(path)
    col = _Collector(path, static_names)
    _READERS[fmt](path, col)
    if not col.stays:
        raise LdmError(f"{path}: the table holds no stays")
    hhmm = col.hhmm or fmt == "physionet"
    return list(col.stays.values()), {"format": fmt, "time_style": "hhmm" if hhmm else "hours", "path": str(path)}


def _bin(hours: float, grid: Grid) -> int | None:
    """The grid bin of a time (None after the grid's end; the end itself falls in the last bin)."""
    k = int(math.floor(hours / grid.step_hours + 1e-9))
    if k < grid.steps:
        return k
    return grid.steps - 1 if hours <= grid.steps * grid.step_hours + 1e-9 else None


def to_grid(
    stays: list[Stay], variables: list[str], grid: Grid, path: Path, skip_empty: bool = False
) -> tuple[list[Stay], np.ndarray, int]:
    """(kept stays, (N, T, V) bin means with NaN where unobserved, observations after the grid's end).

    A variable outside `variables` is an error naming it; so is a stay without any observation on
    the grid, unless `skip_empty` leaves such stays out."""
    index = {v: i for i, v in enumerate(variables)}
    sums = np.zeros((len(stays), grid.steps, len(variables)))
    counts = np.zeros_like(sums)
    outside = 0
    for n, stay in enumerate(stays):
        for hours, var, value in stay.rows:
            if var not in index:
                known = ", ".join(variables[:8]) + (", …" if len(variables) > 8 else "")
                raise LdmError(
                    f"{path}: unknown variable {var!r} in stay {stay.id}; the model knows {len(variables)} ({known})"
                )
            k = _bin(hours, grid)
            if k is None:
                outside += 1
                continue
            sums[n, k, index[var]] += value
            counts[n, k, index[var]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    empty = [n for n in range(len(stays)) if counts[n].sum() == 0]
    if empty and not skip_empty:
        raise LdmError(
            f"{path}: stay {stays[empty[0]].id} has no observation in the first "
            f"{grid.steps * grid.step_hours:g} h ({len(empty)} such stays); remove it (or pass --skip-empty)"
        )
    keep = [n for n in range(len(stays)) if counts[n].sum() > 0]
    return [stays[n] for n in keep], values[keep], outside


def read_outcomes(table: Path, ids: list[str], column: str) -> np.ndarray:
    """(N,) outcome `column` of each stay id from a CSV (first column the id); NaN where absent."""
    rows = _rows(Path(table))
    if not rows:
        raise LdmError(f"outcome table {table} is empty")
    header = [h.strip() for h in rows[0]]
    if column not in header:
        raise LdmError(f"outcome table {table} has no column {column!r} (it has {', '.join(header)})")
    c = header.index(column)
    by_id = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) > c and row[0].strip():
            v = parse_value(row[c], f"{table} line {n}", column)
            by_id[row[0].strip().removesuffix(".0")] = np.nan if v is None else v
    return np.array([by_id.get(i, np.nan) for i in ids], dtype=float)


def physionet_outcomes(path: Path) -> Path | None:
    """Outcomes-X.txt beside a PhysioNet set-X archive or folder (None when there is none)."""
    path = Path(path)
    stem = path.name.split(".")[0]
    if stem.startswith("set-"):
        cand = path.parent / f"Outcomes-{stem[4:]}.txt"
        return cand if cand.is_file() else None
    return None


def read_table(
    path: Path,
    *,
    variables: list[str] | None = None,
    static_names: tuple[str, ...] = STATIC_DEFAULT,
    grid: Grid | None = None,
    skip_empty: bool = False,
    outcomes: Path | None = None,
    outcome_column: str = "In-hospital_death",
) -> SeriesData:
    """Read a table of stays onto a time grid.

    Args:
        variables: the variables to expect (a model's); others are an error. None: every
            time-varying variable found, sorted by name.
        static_names: descriptors kept as static covariates (absent ones stay NaN).
        outcomes: a CSV of outcomes (first column the id); for PhysioNet archives the
            Outcomes-X.txt beside set-X is read when this is None.
    """
    grid = grid or Grid()
    stays, source = read_stays(path, static_names)
    if variables is None:
        variables = sorted({var for s in stays for _, var, _ in s.rows})
        if not variables:
            raise LdmError(f"{path}: the table holds no time-varying variables, only descriptors")
    stays, values, outside = to_grid(stays, list(variables), grid, Path(path), skip_empty)
    static = np.array([[s.static.get(k, np.nan) for k in static_names] for s in stays], dtype=float)
    static = static.reshape(len(stays), len(static_names))
    ids = [s.id for s in stays]
    if len(set(ids)) != len(ids):
        raise LdmError(f"{path}: two stays share the id {next(i for i in ids if ids.count(i) > 1)}")
    if outcomes is None and source["format"] == "physionet":
        outcomes = physionet_outcomes(Path(path))
    outcome = None if outcomes is None else read_outcomes(outcomes, ids, outcome_column)
    if outcomes is not None:
        source = {**source, "outcomes": str(outcomes), "outcome_column": outcome_column}
    return SeriesData(ids, list(variables), values, list(static_names), static, grid, source, outcome, outside)
