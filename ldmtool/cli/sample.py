"""`ldmtool sample --ae AE --ldm LDM --n N --out DIR`: generate image+mask volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common


def sample(
    ctx: typer.Context,
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder checkpoint (file or folder).")],
    ldm: Annotated[Path, typer.Option("--ldm", help="Latent diffusion checkpoint (file or folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (nnU-Net layout + provenance/ + montage.png).")],
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 8,
    sampler: Annotated[str, typer.Option(help="ddim | ddpm.")] = "ddim",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 50,
    eta: Annotated[float, typer.Option(help="DDIM eta (0 = deterministic).")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Latent volumes sampled at once.")] = 4,
    decode_batch: Annotated[int, typer.Option(help="Slices decoded at once.")] = 64,
    fmt: Annotated[str, typer.Option("--format", help="nifti | dicom.")] = "nifti",
    condition: Annotated[Optional[list[str]], typer.Option(help="Lesion attribute, e.g. lesion_volume=5 (ml); repeatable.")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (with --condition).")] = 1.0,
) -> None:
    """Sample new volumes (image + mask) in the training geometry, with provenance per sample."""
    from ldmtool.data.lesions import parse_conditions
    from ldmtool.diffusion.generate import generate
    from ldmtool.errors import LdmError

    state: common.State = ctx.obj
    if batch_size < 1 or decode_batch < 1:
        raise LdmError("--batch-size and --decode-batch must be at least 1")
    result = generate(
        ae, ldm, out, n=n, sampler=sampler, steps=steps, eta=eta, batch_size=batch_size, decode_batch=decode_batch,
        seed=state.seed, fmt=fmt, conditions=parse_conditions(condition), guidance=guidance,
        device=state.torch_device(), console=state.console,
    )
    rows = {
        "written": len(result.written),
        "already there (skipped)": len(result.skipped),
        "seconds": result.seconds,
        "seconds per sample": result.seconds_per_sample,
        "output": str(out),
    }
    if (Path(out) / "montage.png").is_file():
        rows["montage"] = str(Path(out) / "montage.png")
    common.console.print(common.results_table("sample", rows))
