"""Small helpers shared by the io readers."""

from __future__ import annotations


def short_reason(exc: BaseException) -> str:
    """First line of an exception's message (or its type name), for one-line user errors."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def is_lesion_name(name: str) -> bool:
    """A label name that says lesion, tumour, metastasis or nodule."""
    return any(key in name.lower() for key in ("lesion", "tumor", "tumour", "metast", "nodule"))


def summarise(items, limit: int = 3) -> str:
    """At most `limit` items joined by ', ', then '…' and how many more (one-line error messages)."""
    items = [str(v) for v in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", … ({len(items) - limit} more)"


def summarise_shapes(shapes, what: str = "volumes") -> str:
    """'208 volumes in 187 different shapes, e.g. (35, 51, 35), (34, 52, 36), …' for a list of shapes."""
    shapes = [tuple(int(n) for n in s) for s in shapes]
    distinct = list(dict.fromkeys(shapes))
    examples = ", ".join(str(s) for s in distinct[:3]) + (", …" if len(distinct) > 3 else "")
    return f"{len(shapes)} {what} in {len(distinct)} different shapes, e.g. {examples}"


def value_counts(data, max_range: int):
    """(counts, base) with counts[v - base] the number of voxels of integer value v, or None when
    the values are not integers or span more than `max_range`.

    `np.bincount` over the values in memory order (`ravel("K")`: no copy of a Fortran-ordered
    NIfTI array), shifted only when they are negative or large; sorting (np.unique,
    np.percentile) is a few times slower on the millions of voxels of a volume."""
    import numpy as np

    arr = np.asarray(data)
    if arr.size == 0 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        return None
    flat = arr.ravel("K")
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo > max_range:
        return None
    if 0 <= lo and hi <= max_range and arr.dtype != np.bool_:
        return np.bincount(flat), 0
    return np.bincount(flat.astype(np.int64) - lo), lo


def label_values(data) -> list[int]:
    """The distinct values of an integer label map, ascending (as `np.unique(data).tolist()`),
    counted by `value_counts` (other value types and wide ranges: `np.unique`)."""
    import numpy as np

    counted = value_counts(data, 1 << 20)
    if counted is None:
        return np.unique(np.asarray(data)).tolist()
    counts, base = counted
    return [int(v) + base for v in np.flatnonzero(counts)]
