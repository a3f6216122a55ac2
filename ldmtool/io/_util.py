"""Small helpers shared by the io readers."""

from __future__ import annotations


def short_reason(exc: BaseException) -> str:
    """First line of an exception's message (or its type name), for one-line user errors."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def is_lesion_name(name: str) -> bool:
    """A label name that says lesion, tumour, metastasis or nodule."""
    return any(key in name.lower() for key in ("lesion", "tumor", "tumour", "metast", "nodule"))
