"""Commands whose capability is not in this version yet: they say so and exit non-zero."""

from __future__ import annotations

import typer

from ldmtool.errors import NotAvailableError


def _not_yet(what: str) -> None:
    raise NotAvailableError(f"`ldmtool {what}` is not available in this version of ldmtool yet")


def impute(ctx: typer.Context) -> None:
    """Fill missing slices/voxels with latent self-guidance (LDMiss). [not available yet]"""
    _not_yet("impute")
