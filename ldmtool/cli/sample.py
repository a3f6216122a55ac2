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
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (section `sample`); flags override it.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Number of samples. [default: 8]")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddim | ddpm. [default: ddim]")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps. [default: 50]")] = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM eta, 0 = deterministic. [default: 0]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Latent volumes sampled at once. [default: 4]")] = None,
    decode_batch: Annotated[Optional[int], typer.Option(help="Slices decoded at once. [default: 64]")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="nifti | dicom. [default: nifti]")] = None,
    condition: Annotated[Optional[list[str]], typer.Option(help="Lesion attribute, e.g. lesion_volume=5 (ml); repeatable.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (with --condition). [default: 1]")] = None,
) -> None:
    """Sample new volumes (image + mask) in the training geometry, with provenance per sample."""
    from ldmtool.config import SampleConfig, load_yaml
    from ldmtool.data.lesions import parse_conditions
    from ldmtool.diffusion.generate import generate

    state: common.State = ctx.obj
    cfg = common.section(
        load_yaml(config), "sample", SampleConfig,
        {"n": n, "sampler": sampler, "steps": steps, "eta": eta, "batch_size": batch_size,
         "decode_batch": decode_batch, "format": fmt, "guidance": guidance},
    )
    result = generate(
        ae, ldm, out, n=cfg.n, sampler=cfg.sampler, steps=cfg.steps, eta=cfg.eta, batch_size=cfg.batch_size,
        decode_batch=cfg.decode_batch, seed=state.seed, fmt=cfg.format, conditions=parse_conditions(condition),
        guidance=cfg.guidance, device=state.torch_device(), console=state.console,
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
