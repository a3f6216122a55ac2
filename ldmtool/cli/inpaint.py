"""`ldmtool inpaint VOLUME --region MASK --ae A --ldm L --out DIR`: regenerate a region of a volume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import InpaintConfig

WHAT = "What goes into the region"


def inpaint(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="The volume: NIfTI file, DICOM series folder or 2D image.")],
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder checkpoint (file or folder).")],
    ldm: Annotated[Path, typer.Option("--ldm", help="Latent diffusion checkpoint (file or folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    region: Annotated[
        Optional[Path],
        typer.Option(
            "--region", help="Mask in the volume's grid: 1 = regenerate, 0 = keep exactly (or --lesion-from)."
        ),
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `inpaint`); flags override it.")
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels",
            help="The volume's label map (same grid); without it the autoencoder's own reading is used.",
            rich_help_panel=WHAT,
        ),
    ] = None,
    label: Annotated[
        Optional[str],
        typer.Option(
            "--label", help="The region becomes this class (a name of dataset.json), e.g. lesion.", rich_help_panel=WHAT
        ),
    ] = None,
    healthy: Annotated[
        bool,
        typer.Option(
            "--healthy",
            help="Remove a lesion: the region becomes the normal tissue around it (labels: the nearest non-lesion class).",
            rich_help_panel=WHAT,
        ),
    ] = False,
    condition: Annotated[
        Optional[list[str]],
        typer.Option(
            help="An attribute the model was conditioned on, e.g. lesion_volume=2 (ml); lesion attributes not "
            "given come from the region itself. Repeatable.",
            rich_help_panel=WHAT,
        ),
    ] = None,
    method: Annotated[Optional[str], common.opt(InpaintConfig, "method")] = None,
    steps: Annotated[Optional[int], common.opt(InpaintConfig, "steps")] = None,
    sampler: Annotated[Optional[str], common.opt(InpaintConfig, "sampler")] = None,
    eta: Annotated[Optional[float], common.opt(InpaintConfig, "eta")] = None,
    resample: Annotated[Optional[int], common.opt(InpaintConfig, "resample")] = None,
    guidance: Annotated[Optional[float], common.opt(InpaintConfig, "guidance")] = None,
    self_guidance: Annotated[Optional[float], common.opt(InpaintConfig, "self_guidance")] = None,
    margin: Annotated[Optional[int], common.opt(InpaintConfig, "margin")] = None,
    grow: Annotated[Optional[int], common.opt(InpaintConfig, "grow", panel=WHAT)] = None,
    label_from: Annotated[Optional[str], common.opt(InpaintConfig, "label_from", panel=WHAT)] = None,
    strength: Annotated[Optional[float], common.opt(InpaintConfig, "strength")] = None,
    keep_detail: Annotated[
        Optional[bool], common.opt(InpaintConfig, "keep_detail", "--keep-detail/--no-keep-detail")
    ] = None,
    init: Annotated[
        Optional[Path],
        typer.Option(
            "--init",
            help="A volume in the input's grid whose content inside the region starts the regeneration (a "
            "lesion drawn or pasted there, say), noised to --strength (below 1); without it the input's own.",
            rich_help_panel=WHAT,
        ),
    ] = None,
    lesion_from: Annotated[
        Optional[Path],
        typer.Option(
            "--lesion-from",
            help="Instead of --region: another case (image, same voxel size) whose --label lesions (--lesion-labels) "
            "are moved whole to random places inside this volume's head (--labels; seeded by --seed); the region is "
            "where they land and their own voxels, scaled to this head's brightness, the content it starts from "
            "(with --strength below 1, e.g. 0.3, and --keep-detail).",
            rich_help_panel=WHAT,
        ),
    ] = None,
    lesion_labels: Annotated[
        Optional[Path],
        typer.Option("--lesion-labels", help="--lesion-from's label map (its grid).", rich_help_panel=WHAT),
    ] = None,
    lesion_within: Annotated[
        Optional[Path],
        typer.Option(
            "--lesion-within",
            help="--lesion-from: a mask in this volume's grid the moved lesions must lie in (e.g. white matter).",
            rich_help_panel=WHAT,
        ),
    ] = None,
    lesion_margin: Annotated[Optional[float], common.opt(InpaintConfig, "lesion_margin", panel=WHAT)] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out that is not an earlier inpaint output: files of the same names are replaced, nothing else is changed or deleted.",
        ),
    ] = False,
) -> None:
    """Regenerate a region of a volume (insert a lesion with --label, remove one with --healthy); every voxel outside it is kept bit for bit.

    Writes CASE_inpainted.nii.gz (the input's geometry and value type; a model of several channels:
    CASE_inpainted_0000.nii.gz, _0001, ... from CASE_0000.nii.gz and its channels beside it), CASE_region.nii.gz,
    CASE_inpainted_label.nii.gz (the label map, updated in the region) and CASE_inpaint.json
    (provenance with the seam score: gradient across the region's border against real tissue).
    A 2D PNG/JPEG/TIFF input gets PNGs (CASE_inpainted.png, CASE_region.png, ...).
    """
    from ldmtool.config import load_yaml
    from ldmtool.data.lesions import parse_conditions
    from ldmtool.errors import LdmError
    from ldmtool.pipelines.inpaint import inpaint_file

    state: common.State = ctx.obj
    if grow is not None and label is None:
        raise LdmError("--grow needs --label NAME: it widens the class the model is asked to draw")
    common.require_exists(source, "input volume")
    for path, what in ((region, "--region"), (labels, "--labels"), (init, "--init"), (lesion_from, "--lesion-from"),
                       (lesion_labels, "--lesion-labels"), (lesion_within, "--lesion-within")):  # fmt: skip
        if path is not None:
            common.require_exists(path, what)
    cfg = common.section(load_yaml(config), "inpaint", InpaintConfig, locals())
    result = inpaint_file(
        source,
        ae,
        ldm,
        out,
        region=region,
        labels=labels,
        label=label,
        healthy=healthy,
        conditions=parse_conditions(condition),
        cfg=cfg,
        seed=state.seed,
        device=state.torch_device(),
        console=state.console,
        overwrite=overwrite,
        init=init,
        lesion_from=lesion_from,
        lesion_labels=lesion_labels,
        lesion_within=lesion_within,
    )

    def seam_text(seam: dict) -> str:
        return (
            f"{seam['border_gradient']:.4g} (real tissue: median {seam['tissue_gradient_p50']:.4g}, "
            f"95th percentile {seam['tissue_gradient_p95']:.4g})"
        )

    per_channel = {k: v for k, v in result.seam.items() if isinstance(v, dict)}  # several channels: by name
    seams = {f"seam {k} (border gradient)": seam_text(v) for k, v in per_channel.items()}
    rows = {
        "input": result.source,
        "region voxels": f"{result.region_voxels} of {result.total_voxels} ({100 * result.region_voxels / result.total_voxels:.1f}%)",
        **{name: str(path) for name, path in result.outputs.items()},
        **(seams or {"seam (border gradient)": seam_text(result.seam)}),
        "seconds": result.seconds,
    }
    if result.conditions:
        rows["conditions"] = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.conditions.items()
        )
    common.console.print(common.results_table("inpaint", rows))
