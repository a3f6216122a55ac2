"""`ldmtool distill DATA --ae AE --ldm LDM --steps 4 --out LDM4`: a denoiser that samples in few steps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import DistillConfig

TRAIN = "Training"


def distill(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Argument(help="The data set the denoiser was trained on (its latents are the inputs).")
    ],
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder checkpoint (file or train-ae output folder).")],
    ldm: Annotated[Path, typer.Option("--ldm", help="The latent denoiser to distil (the first round's teacher).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder of the distilled checkpoint.")],
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `distill`); flags override it.")
    ] = None,
    sampling_steps: Annotated[Optional[int], common.opt(DistillConfig, "sampling_steps", "--steps")] = None,
    teacher_steps: Annotated[Optional[int], common.opt(DistillConfig, "teacher_steps")] = None,
    series: Annotated[
        Optional[str],
        typer.Option("--series", help="DICOM SeriesInstanceUID to read where a folder holds several series."),
    ] = None,
    covariates: Annotated[
        Optional[Path],
        typer.Option("--covariates", help="The covariates table of a denoiser conditioned on its columns."),
    ] = None,
    train_steps: Annotated[Optional[int], common.opt(DistillConfig, "steps", "--train-steps", panel=TRAIN)] = None,
    batch_size: Annotated[Optional[int], common.opt(DistillConfig, "batch_size", panel=TRAIN)] = None,
    lr: Annotated[Optional[float], common.opt(DistillConfig, "lr", panel=TRAIN)] = None,
    max_minutes: Annotated[Optional[float], common.opt(DistillConfig, "max_minutes", panel=TRAIN)] = None,
    ema_decay: Annotated[Optional[float], common.opt(DistillConfig, "ema_decay", panel=TRAIN)] = None,
    precision: Annotated[Optional[str], common.opt(DistillConfig, "precision", panel=TRAIN)] = None,
    resume: Annotated[bool, common.resume_flag(TRAIN)] = False,
    restart: Annotated[bool, common.restart_flag(TRAIN)] = False,
) -> None:
    """Progressive distillation: a denoiser that samples in few DDIM steps (64 → 32 → … → --steps).

    A student learns to take in one DDIM step what its teacher takes in two, round after round.
    The result is an ordinary checkpoint; `sample` uses the DDIM steps it was distilled for unless
    told otherwise."""
    from ldmtool.cli.train_ldm import prepared_for_autoencoder
    from ldmtool.config import load_yaml
    from ldmtool.models.checkpoint import resolve_checkpoint
    from ldmtool.models.loaders import load_autoencoder
    from ldmtool.train.distill import distill_latent_diffusion, distillation_rounds

    state: common.State = ctx.obj
    cfg = common.section(load_yaml(config), "distill", DistillConfig, {**locals(), "steps": train_steps})
    distillation_rounds(cfg.teacher_steps, cfg.sampling_steps)  # a bad step pair fails before any work
    common.require_exists(ldm, "latent diffusion checkpoint")
    if covariates is not None:
        common.require_exists(covariates, "covariates table")
    mode = common.resume_mode(resume, restart)
    with common.training_session(state, out, mode) as (info, stop):
        ae_path = resolve_checkpoint(ae)
        ae_model, ae_cfg = load_autoencoder(ae_path, info.device)
        prepared = prepared_for_autoencoder(state, data, ae_cfg, series, None)
        common.announce_scale(state, info, cfg.batch_size, cfg.lr, "latent volumes")
        result, final = distill_latent_diffusion(
            prepared,
            ae_model,
            ae_cfg,
            ae_path,
            ldm,
            out,
            cfg=cfg,
            device=info.device,
            seed=state.seed,
            console=state.console,
            dist=info,
            resume=mode,
            stop=stop,
            covariates=covariates,
        )
    if not info.is_main:
        return
    last = result.history[-1] if result.history else {}
    rows = {
        "checkpoint": str(Path(out) / "model.safetensors"),
        "DDIM steps": final["distillation"]["steps"],
        "rounds": " → ".join(
            str(n) for n in [cfg.teacher_steps, *distillation_rounds(cfg.teacher_steps, cfg.sampling_steps)]
        ),
        "steps per round": last.get("step", 0),
        "held-out loss, last round": last.get("val_loss", float("nan")),
    }
    common.console.print(common.results_table("distill", rows))
