"""`ldmtool impute INPUT --ae A --ldm L --out DIR`: fill missing voxels with latent self-guidance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import ImputeConfig

MISSING = "What is missing"


def impute(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            help="Incomplete volume: NIfTI file, DICOM series folder or 2D image (NaN voxels count as missing); for a model "
            "of several channels, one channel file CASE_0000.nii.gz with the others beside it (CASE_0001, ...)."
        ),
    ],
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder checkpoint (file or folder).")],
    ldm: Annotated[Path, typer.Option("--ldm", help="Latent diffusion checkpoint (file or folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `impute`); flags override it.")
    ] = None,
    mask: Annotated[
        Optional[Path],
        typer.Option("--mask", help="Missing-voxel mask in the volume's grid, 1 = missing.", rich_help_panel=MISSING),
    ] = None,
    missing_slices: Annotated[
        Optional[str],
        typer.Option(
            "--missing-slices",
            help="Missing slices along the third array axis, 0-based: 3,7,12-15.",
            rich_help_panel=MISSING,
        ),
    ] = None,
    simulate_mcar: Annotated[
        Optional[float],
        typer.Option(
            "--simulate-mcar",
            help="Also drop this fraction of voxels at random (seeded by --seed), for benchmarking.",
            rich_help_panel=MISSING,
        ),
    ] = None,
    missing_channel: Annotated[
        Optional[str],
        typer.Option(
            "--missing-channel",
            help="A channel (contrast) not acquired at all, by its name (dataset.json channel_names, e.g. flair): "
            "synthesised from the other channels; its file need not exist.",
            rich_help_panel=MISSING,
        ),
    ] = None,
    samples: Annotated[Optional[int], common.opt(ImputeConfig, "samples", "--samples")] = None,
    guidance: Annotated[Optional[float], common.opt(ImputeConfig, "guidance")] = None,
    steps: Annotated[Optional[int], common.opt(ImputeConfig, "steps")] = None,
    sampler: Annotated[Optional[str], common.opt(ImputeConfig, "sampler")] = None,
    eta: Annotated[Optional[float], common.opt(ImputeConfig, "eta")] = None,
    batch_size: Annotated[Optional[int], common.opt(ImputeConfig, "batch_size")] = None,
    init: Annotated[Optional[str], common.opt(ImputeConfig, "init")] = None,
    strength: Annotated[Optional[float], common.opt(ImputeConfig, "strength")] = None,
    series: Annotated[
        Optional[str],
        typer.Option("--series", help="SeriesInstanceUID to read where the DICOM folder holds several series."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out that is not an earlier impute output: files of the same names are replaced, nothing else is changed or deleted.",
        ),
    ] = False,
) -> None:
    """Fill missing slices/voxels of a volume (LDMiss latent self-guidance); observed voxels are kept exactly.

    Writes CASE_imputed.nii.gz (the mean of --samples imputations), CASE_missing.nii.gz (the mask
    used), CASE_std.nii.gz (with --samples above 1) and CASE_impute.json (provenance of the latest
    run; every run's is kept in runs/), all in the input's geometry, the imputed volume in the
    input's value type. A model of several channels writes one file of each per channel
    (CASE_imputed_0000.nii.gz, ...). A 2D PNG/JPEG/TIFF input gets PNGs (CASE_imputed.png,
    CASE_missing.png; the std map stays NIfTI). A non-empty --out that is not an earlier impute output is refused unless
    --overwrite.
    """
    from ldmtool.config import load_yaml
    from ldmtool.pipelines.impute import impute_file

    state: common.State = ctx.obj
    common.require_exists(source, "input volume")
    if mask is not None:
        common.require_exists(mask, "--mask")
    cfg = common.section(load_yaml(config), "impute", ImputeConfig, locals())
    result = impute_file(
        source,
        ae,
        ldm,
        out,
        mask=mask,
        slices=missing_slices,
        simulate_mcar=simulate_mcar,
        samples=cfg.samples,
        steps=cfg.steps,
        guidance=cfg.guidance,
        sampler=cfg.sampler,
        eta=cfg.eta,
        seed=state.seed,
        batch_size=cfg.batch_size,
        device=state.torch_device(),
        console=state.console,
        series_uid=series,
        overwrite=overwrite,
        missing_channel=missing_channel,
        init=cfg.init,
        strength=cfg.strength,
    )
    rows = {
        "input": result.source,
        "missing voxels": f"{result.missing_voxels} of {result.total_voxels} ({100 * result.missing_voxels / result.total_voxels:.1f}%)",
        **{name: str(path) for name, path in result.outputs.items()},
        "seconds": result.seconds,
    }
    if result.outside:
        rows["missing outside the model's field of view"] = f"{result.outside} (filled from its edge)"
    common.console.print(common.results_table("impute", rows))
