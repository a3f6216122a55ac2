"""Per-case covariates (age, sex, scanner, …) from a table: what the denoiser can be conditioned on
besides the lesion attributes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ldmtool.errors import LdmError

MISSING = {"", "na", "n/a", "nan", "none", "null", "?", "-"}  # cells read as "no value" (any case)


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV table (TSV when the name ends in .tsv or .tab); rows padded to the header."""
    path = Path(path)
    if not path.is_file():
        raise LdmError(f"covariates table {path} does not exist")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [[c.strip() for c in row] for row in csv.reader(f, delimiter=delimiter) if any(c.strip() for c in row)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise LdmError(f"covariates table {path} needs a header row, a case id column and one value column at least")
    header = rows[0]
    return header, [row + [""] * (len(header) - len(row)) for row in rows[1:]]


def match_cases(table_ids: list[str], case_ids: list[str], path: Path) -> list[int | None]:
    """For every case id, the table row holding it (None: not in the table).

    A row matches a case whose id equals the table id, or else starts with it followed by a
    non-alphanumeric character (table `IXI002` ↔ case `IXI002-Guys-0828-T1`), when only one does."""
    seen: dict[str, int] = {}
    for i, tid in enumerate(table_ids):
        if tid in seen:
            raise LdmError(f"covariates table {path}: case id {tid!r} appears twice; give one row per case")
        seen[tid] = i
    out: list[int | None] = []
    for cid in case_ids:
        if cid in seen:
            out.append(seen[cid])
            continue
        hits = [i for t, i in seen.items() if t and cid.startswith(t) and not cid[len(t)].isalnum()]
        out.append(hits[0] if len(hits) == 1 else None)
    return out


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def column_values(name: str, cells: list[str]) -> tuple[list[float], list[str] | None]:
    """A column's cells → (values, NaN where missing; levels) — numbers as they are, or a two-level
    column coded 0/1 in sorted level order (`levels`; None for a numeric column)."""
    present = [c for c in cells if c.lower() not in MISSING]
    if all(_number(c) is not None for c in present):
        return [math.nan if c.lower() in MISSING else float(c) for c in cells], None
    levels = sorted(set(present))
    if len(levels) != 2:
        raise LdmError(
            f"column {name} has {len(levels)} level{'s' if len(levels) != 1 else ''}; "
            "only numeric or two-level columns can condition"
        )
    return [math.nan if c.lower() in MISSING else float(levels.index(c)) for c in cells], levels


def column_index(header: list[str], name: str, path: Path) -> int:
    """Where column `name` is: the exact name, else the one column equal to it ignoring case
    (`age` finds `Age`)."""
    if name in header[1:]:
        return header.index(name, 1)
    folded = [j for j, h in enumerate(header) if j > 0 and h.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise LdmError(f"covariates table {path} has no column {name!r}; columns: {', '.join(header[1:])}")


def read_covariates(
    path: Path, case_ids: list[str], columns: list[str]
) -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    """Read the `columns` of a covariates table for `case_ids`.

    Args:
        path: CSV (TSV by extension) with a header; the first column holds the case ids.
        case_ids: the data set's cases, matched as `match_cases` says.
        columns: the value columns wanted, in order.
    Returns:
        values (N, A) float64, NaN where a case is not in the table or its cell is empty/NA;
        the column names; {column: [level coded 0, level coded 1]} for two-level columns.
    """
    header, rows = read_table(path)
    index = match_cases([r[0] for r in rows], list(case_ids), path)
    values = np.full((len(case_ids), len(columns)), np.nan)
    levels: dict[str, list[str]] = {}
    for a, name in enumerate(columns):
        j = column_index(header, name, path)
        coded, lv = column_values(name, [r[j] for r in rows])
        if lv is not None:
            levels[name] = lv
        values[:, a] = [math.nan if i is None else coded[i] for i in index]
        if np.isnan(values[:, a]).all():
            raise LdmError(f"no case of the data set has a value of column {name} in {path}; check the case ids")
    return values, list(columns), levels


def read_class_column(path: Path, case_ids: list[str], name: str = "class") -> list[str | None]:
    """Column `name` of a covariates table as one class name per case (None: no row or no value);
    any number of levels (the classes of `--condition-on class`)."""
    header, rows = read_table(path)
    index = match_cases([r[0] for r in rows], list(case_ids), path)
    j = column_index(header, name, path)
    cells = [None if i is None or rows[i][j].lower() in MISSING else rows[i][j] for i in index]
    if all(c is None for c in cells):
        raise LdmError(f"no case of the data set has a value of column {name} in {path}; check the case ids")
    return cells
