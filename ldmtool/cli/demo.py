"""`ldmtool demo-data OUT`: write the built-in procedural phantom data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common


def demo_data(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder to write (nnU-Net layout: imagesTr/, labelsTr/, dataset.json).")],
    n: Annotated[int, typer.Option("--n", help="Number of phantom volumes.")] = 48,
    shape: Annotated[str, typer.Option(help="Volume shape I,J,K (K = axial slices).")] = "64,64,32",
    spacing: Annotated[str, typer.Option(help="Voxel size in mm, x,y,z.")] = "3,3,4",
    lesion_cases: Annotated[
        Optional[int],
        typer.Option(
            "--lesion-cases",
            help="Only the first K phantoms get lesions; the others are their lesion-free twins (normal anatomy).",
        ),
    ] = None,
    contrasts: Annotated[
        Optional[str],
        typer.Option(
            "--contrasts",
            help="Several MR contrasts per case, e.g. t1,t2,flair (of t1, t1ce, t2, flair): one file per "
            "contrast (CASE_0000, CASE_0001, ...), the same anatomy, lesions dark in T1 and bright in FLAIR.",
        ),
    ] = None,
) -> None:
    """Write head-like phantoms with 0-3 lesions and label masks (background / head / lesion)."""
    from ldmtool.data.phantoms import write_demo_dataset
    from ldmtool.io import check_writable_dir

    state: common.State = ctx.obj
    shape_ = common.ints(shape, 3, "--shape")
    spacing_ = common.floats(spacing, 3, "--spacing")
    check_writable_dir(out)
    path = write_demo_dataset(
        out,
        n_cases=n,
        shape=shape_,
        spacing=spacing_,
        seed=state.seed,
        lesion_cases=lesion_cases,
        contrasts=None if contrasts is None else tuple(c for c in contrasts.split(",") if c.strip()),
    )
    state.console.print(f"wrote {n} phantom volumes with labels to [bold]{path}[/]")
