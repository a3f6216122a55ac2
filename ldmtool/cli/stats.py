"""`ldmtool stats SYNTHETIC --real REAL`: basic statistics, real vs synthetic, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ldmtool.cli import common


def stats(
    ctx: typer.Context,
    synthetic: Annotated[Path, typer.Argument(help="Folder written by `ldmtool sample` (imagesTr/, labelsTr/).")],
    real: Annotated[Path, typer.Option("--real", help="Real data set in nnU-Net layout to compare with.")],
) -> None:
    """Compare intensity, head volume, lesion presence/placement and slice coherence with real data."""
    from rich.table import Table

    from ldmtool.evaluate.basic import compare_folders

    common.require_exists(synthetic, "folder")
    common.require_exists(real, "folder")
    rows = compare_folders(real, synthetic)
    table = Table(title="synthetic vs real (means over volumes)", title_justify="left")
    for col in ("measure", "real", "synthetic", "target", "met"):
        table.add_column(col, justify="left" if col in ("measure", "target") else "right")
    for name, rv, sv, target, ok in rows:
        mark = "" if ok is None else ("[green]yes[/]" if ok else "[red]no[/]")
        table.add_row(name, f"{rv:.4g}", f"{sv:.4g}", target, mark)
    common.console.print(table)
