"""`ldmtool train-ldm DATA --ae AE --out LDM`: fit the 3D latent denoiser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import DenoiserConfig, LDMTrainConfig

MODEL = "Model"
TRAIN = "Training"


def train_ldm(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Argument(help="The data set the autoencoder was trained on (or another one in the same geometry).")
    ],
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder checkpoint (file or train-ae output folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the checkpoint.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config; flags override it.")] = None,
    series: Annotated[
        Optional[str],
        typer.Option("--series", help="DICOM SeriesInstanceUID to read where a folder holds several series."),
    ] = None,
    missing_rate: Annotated[
        Optional[float],
        typer.Option(
            help="Simulated MCAR missing rate of the volumes before encoding (default: the autoencoder's, with the same masks for the same --seed)."
        ),
    ] = None,
    channels: Annotated[Optional[str], common.opt(DenoiserConfig, "channels", panel=MODEL)] = None,
    objective: Annotated[Optional[str], common.opt(DenoiserConfig, "objective", panel=MODEL)] = None,
    condition_on: Annotated[Optional[str], common.opt(DenoiserConfig, "condition_on", panel=MODEL)] = None,
    label_branch: Annotated[Optional[str], common.opt(DenoiserConfig, "label_branch", panel=MODEL)] = None,
    label_detail: Annotated[Optional[int], common.opt(DenoiserConfig, "label_detail", panel=MODEL)] = None,
    covariates: Annotated[
        Optional[Path],
        typer.Option(
            "--covariates",
            help="Table of per-case covariates (CSV, or TSV by extension; header; first column = case id) "
            "whose columns --condition-on may name: numeric, or two levels such as M/F.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    init: Annotated[
        Optional[Path],
        typer.Option(
            "--init",
            help="Start from this latent denoiser (same autoencoder): fine-tuning, e.g. a mask-to-image model "
            "(--condition-on labels) from one trained on normal volumes, on a few annotated cases.",
            rich_help_panel=TRAIN,
        ),
    ] = None,
    steps: Annotated[Optional[int], common.opt(LDMTrainConfig, "steps", panel=TRAIN)] = None,
    epochs: Annotated[Optional[int], common.opt(LDMTrainConfig, "epochs", panel=TRAIN)] = None,
    batch_size: Annotated[Optional[int], common.opt(LDMTrainConfig, "batch_size", panel=TRAIN)] = None,
    lr: Annotated[Optional[float], common.opt(LDMTrainConfig, "lr", panel=TRAIN)] = None,
    max_minutes: Annotated[Optional[float], common.opt(LDMTrainConfig, "max_minutes", panel=TRAIN)] = None,
    ema_decay: Annotated[Optional[float], common.opt(LDMTrainConfig, "ema_decay", panel=TRAIN)] = None,
    keep: Annotated[Optional[str], common.opt(LDMTrainConfig, "keep", panel=TRAIN)] = None,
    lesion_weight: Annotated[Optional[float], common.opt(LDMTrainConfig, "lesion_weight", panel=TRAIN)] = None,
    mirror: Annotated[Optional[bool], common.opt(LDMTrainConfig, "mirror", "--mirror/--no-mirror", panel=TRAIN)] = None,
    flow_timesteps: Annotated[Optional[str], common.opt(LDMTrainConfig, "flow_timesteps", panel=TRAIN)] = None,
    precision: Annotated[Optional[str], common.opt(LDMTrainConfig, "precision", panel=TRAIN)] = None,
    checkpoint_every: Annotated[Optional[int], common.opt(LDMTrainConfig, "checkpoint_every", panel=TRAIN)] = None,
    resume: Annotated[bool, common.resume_flag(TRAIN)] = False,
    restart: Annotated[bool, common.restart_flag(TRAIN)] = False,
) -> None:
    """Encode volumes slice by slice into latent volumes and train the 3D denoising UNet."""
    from ldmtool.config import load_yaml
    from ldmtool.models.checkpoint import resolve_checkpoint
    from ldmtool.models.loaders import load_autoencoder
    from ldmtool.train.latent import check_condition_inputs, train_latent_diffusion

    state: common.State = ctx.obj
    cfg = load_yaml(config)
    channels = common.ints(channels, None, "--channels")
    model_cfg = common.section(cfg, "denoiser", DenoiserConfig, locals())
    train_cfg = common.section(cfg, "ldm_train", LDMTrainConfig, locals())
    if train_cfg.flow_timesteps != "uniform" and model_cfg.objective != "flow":
        state.console.print(
            f"[yellow]warning:[/] --flow-timesteps {train_cfg.flow_timesteps} applies to --objective flow; "
            f"this {model_cfg.objective}-objective denoiser trains on uniform times"
        )
    check_condition_inputs(model_cfg.condition_names, covariates)  # before volumes are read
    if covariates is not None:
        common.require_exists(covariates, "covariates table")
    mode = common.resume_mode(resume, restart)
    with common.training_session(state, out, mode) as (info, stop):
        device = info.device
        ae_path = resolve_checkpoint(ae)
        ae_model, ae_cfg = load_autoencoder(ae_path, device)
        prepared = prepared_for_autoencoder(state, data, ae_cfg, series, missing_rate)
        common.announce_scale(state, info, train_cfg.batch_size, train_cfg.lr, "latent volumes")
        result = train_latent_diffusion(
            prepared,
            ae_model,
            ae_cfg,
            ae_path,
            out,
            model_cfg=model_cfg,
            train_cfg=train_cfg,
            device=device,
            seed=state.seed,
            console=state.console,
            dist=info,
            resume=mode,
            stop=stop,
            covariates=covariates,
            init=init,
        )
    if not info.is_main:
        return
    last = result.history[-1] if result.history else {}
    if result.already_complete:
        state.console.print(
            f"{out} already holds a finished run (step {last.get('step', '?')}); use --restart to train again"
        )
    rows = {
        "checkpoint": str(result.path),
        "latent volume (C, D, h, w)": "×".join(map(str, result.summary["latent_shape"])),
        "parameters": f"{result.parameters / 1e6:.2f} M",
        "latent volumes/s": result.items_per_second,
        "steps": last.get("step", 0),
        "train loss (EMA of batches)": last.get("train_loss", float("nan")),
        **common.scale_rows(result),
    }
    if "val_loss" in last:
        rows["held-out loss (EMA weights)"] = last["val_loss"]
    common.console.print(common.results_table("train-ldm", rows))


def prepared_for_autoencoder(state: common.State, data: Path, ae_cfg, series: str | None, missing_rate: float | None):
    """The data set preprocessed as the autoencoder's was (its missing rate unless `missing_rate`
    is given); one-line errors where it does not fit the autoencoder (2D/3D, channels, shape, classes)."""
    from ldmtool.data.prepared import prepare_dataset
    from ldmtool.data.preprocess import PreprocessConfig
    from ldmtool.errors import LdmError

    common.require_exists(data, "data set")
    rate = float(ae_cfg.get("missing_rate", 0.0)) if missing_rate is None else missing_rate
    prepared = prepare_dataset(
        data,
        PreprocessConfig.from_dict(ae_cfg["preprocess"]),
        series_uid=series,
        console=state.console,
        missing_rate=rate,
        seed=state.seed,
    )
    _check_dims(data, prepared.image_dims, int(ae_cfg.get("image_dims", 3) or 3))
    check_channels(data, prepared.channels, prepared.channel_names, ae_cfg)
    if list(prepared.volume_shape) != list(ae_cfg["volume_shape"]):
        raise LdmError(
            f"volumes preprocess to {prepared.volume_shape} but the autoencoder was trained on {tuple(ae_cfg['volume_shape'])}"
        )
    if prepared.num_classes != int(ae_cfg["num_classes"]):
        raise LdmError(
            f"data set has {prepared.num_classes} label classes but the autoencoder expects {ae_cfg['num_classes']}"
        )
    return prepared


def check_channels(data: Path, channels: int, names: list[str], ae_cfg) -> None:
    """A one-line error when the data have another number of channels than the autoencoder was trained on."""
    if channels != ae_cfg.image_channels:
        from ldmtool.errors import LdmError

        raise LdmError(
            f"{data} has {channels} image channel{'s' * (channels != 1)} ({', '.join(names)}) but the autoencoder "
            f"was trained on {ae_cfg.image_channels} ({', '.join(ae_cfg.channel_names)})"
        )


def _check_dims(data: Path, data_dims: int, ae_dims: int) -> None:
    """A one-line error when the data are 2D images and the autoencoder's were volumes, or back."""
    if data_dims != ae_dims:
        from ldmtool.errors import LdmError

        kind = {2: "2D images", 3: "3D volumes"}
        raise LdmError(f"{data} holds {kind[data_dims]} but the autoencoder was trained on {kind[ae_dims]}")
