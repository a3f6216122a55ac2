"""Small helpers shared by the io readers."""

from __future__ import annotations


def short_reason(exc: BaseException) -> str:
    """First line of an exception's message (or its type name), for one-line user errors."""
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__
