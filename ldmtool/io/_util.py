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
