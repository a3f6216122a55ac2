"""`ldmtool sample --ae AE --ldm LDM --n N --out DIR`: generate image+mask volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common

SCALE = "Scale-out and speed"


def sample(
    ctx: typer.Context,
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder checkpoint (file or folder).")],
    ldm: Annotated[Path, typer.Option("--ldm", help="Latent diffusion checkpoint (file or folder).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (nnU-Net layout + provenance/ + montage.png).")
    ],
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `sample`); flags override it.")
    ] = None,
    n: Annotated[
        Optional[int], typer.Option("--n", help="Number of samples (of the whole job, all shards). [default: 8]")
    ] = None,
    sampler: Annotated[
        Optional[str],
        typer.Option(help="ddim | ddpm | dpmpp2m (DPM-Solver++ 2M) | euler (flow models). [default: ddim]"),
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampling steps. [default: 50]")] = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM eta, 0 = deterministic. [default: 0]")] = None,
    spacing: Annotated[
        Optional[str], typer.Option(help="Timestep spacing: trailing | leading | linspace. [default: trailing]")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Latent volumes sampled at once. [default: 4]")] = None,
    decode_batch: Annotated[Optional[int], typer.Option(help="Slices decoded at once. [default: 64]")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="nifti | dicom. [default: nifti]")] = None,
    condition: Annotated[
        Optional[list[str]], typer.Option(help="Lesion attribute, e.g. lesion_volume=5 (ml); repeatable.")
    ] = None,
    guidance: Annotated[
        Optional[float], typer.Option(help="Classifier-free guidance scale (with --condition). [default: 1]")
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16.", rich_help_panel=SCALE),
    ] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the denoiser (pays off for large jobs on GPU).",
            rich_help_panel=SCALE,
        ),
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            help="Run shard i of N (i/N): sample k belongs to shard k mod N. Read from SLURM_ARRAY_TASK_ID/COUNT or torchrun RANK/WORLD_SIZE when not given.",
            rich_help_panel=SCALE,
        ),
    ] = None,
    reject_memorized: Annotated[
        Optional[float],
        typer.Option(
            help="Discard (and count in provenance) samples whose highest SSIM to a training volume exceeds this, e.g. 0.95; needs --train."
        ),
    ] = None,
    train: Annotated[Optional[Path], typer.Option("--train", help="Training data set, for --reject-memorized.")] = None,
    max_memory: Annotated[
        Optional[float],
        typer.Option(
            help="Memory limit in GiB for one batch (default: free memory); checked before any work.",
            rich_help_panel=SCALE,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out that is not an earlier sample output: files of the same names are replaced, nothing else is changed or deleted (another data set's dataset.json is never replaced).",
        ),
    ] = False,
) -> None:
    """Sample new volumes (image + mask) in the training geometry, with provenance per sample.

    Re-running the same command resumes: finished samples are skipped. Shards of one job (--shard,
    SLURM arrays, torchrun) write exactly the samples a single run would. A non-empty --out that
    is not an earlier sample output (e.g. a real data set) is refused unless --overwrite.
    """
    from ldmtool.config import SampleConfig, load_yaml
    from ldmtool.data.lesions import parse_conditions
    from ldmtool.pipelines.generate import generate
    from ldmtool.pipelines.outdir import check_output_dir

    state: common.State = ctx.obj
    cfg = common.section(
        load_yaml(config),
        "sample",
        SampleConfig,
        {
            "n": n,
            "sampler": sampler,
            "steps": steps,
            "eta": eta,
            "spacing": spacing,
            "batch_size": batch_size,
            "decode_batch": decode_batch,
            "format": fmt,
            "guidance": guidance,
            "precision": precision,
            "compile": compile,
            "max_memory_gb": max_memory,
            "reject_memorized": reject_memorized,
        },
    )
    check_output_dir(out, "sample", overwrite)  # before the training set of --reject-memorized is read
    memfilter = _memorization_filter(cfg.reject_memorized, train, state)
    result = generate(
        ae,
        ldm,
        out,
        n=cfg.n,
        sampler=cfg.sampler,
        steps=cfg.steps,
        eta=cfg.eta,
        spacing=cfg.spacing,
        batch_size=cfg.batch_size,
        decode_batch=cfg.decode_batch,
        seed=state.seed,
        fmt=cfg.format,
        conditions=parse_conditions(condition),
        guidance=cfg.guidance,
        device=state.torch_device(),
        precision=cfg.precision,
        compile=cfg.compile,
        shard=shard,
        max_memory_gb=cfg.max_memory_gb,
        memorization_filter=memfilter,
        console=state.console,
        overwrite=overwrite,
    )
    rows = {
        "written": len(result.written),
        "already there (skipped)": len(result.skipped),
    }
    if cfg.reject_memorized is not None:
        rows["rejected as near-copies"] = f"{result.rejected} (SSIM to a training volume > {cfg.reject_memorized})"
    if result.others:
        rows["shard"] = f"{result.shard} ({result.others} samples belong to other shards)"
    rows.update(
        {
            "seconds": result.seconds,
            "seconds per sample": result.seconds_per_sample,
            "samples per second": (len(result.written) / result.seconds) if result.seconds > 0 else 0.0,
            "device": f"{result.device}, {result.precision}",
            "memory plan": result.memory,
            "output": str(out),
        }
    )
    if (Path(out) / "montage.png").is_file():
        rows["montage"] = str(Path(out) / "montage.png")
    common.console.print(common.results_table("sample", rows))


def _memorization_filter(threshold: float | None, train: Path | None, state: common.State):
    """The filter of --reject-memorized (None without it), scoring on the device this shard samples on."""
    if threshold is None:
        return None
    from ldmtool.diffusion.resources import shard_device
    from ldmtool.errors import LdmError
    from ldmtool.evaluate.privacy import MemorizationFilter

    if train is None:
        raise LdmError("--reject-memorized needs --train DIR: the training volumes to compare against")
    return MemorizationFilter(Path(train), threshold=threshold, device=shard_device(state.torch_device()))
