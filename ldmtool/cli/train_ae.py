"""`ldmtool train-ae DATA --out AE`: fit the slice autoencoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import AETrainConfig

DATA = "Data"
MODEL = "Model"
TRAIN = "Training"


def preprocess_flags(shape, spacing, intensity, ct_window) -> dict:
    return {
        "shape": common.ints(shape, 3, "--shape"),
        "spacing": common.floats(spacing, 3, "--spacing"),
        "intensity": intensity,
        "ct_window": common.floats(ct_window, 2, "--ct-window"),
    }


def train_ae(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Argument(
            help="Data set: nnU-Net folder (imagesTr/, labelsTr/, dataset.json), a folder of volumes, or one file."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the checkpoint.")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config; flags override it.")] = None,
    series: Annotated[
        Optional[str],
        typer.Option("--series", help="DICOM SeriesInstanceUID to read where a folder holds several series."),
    ] = None,
    shape: Annotated[
        Optional[str], typer.Option(help="Crop/pad volumes to I,J,K after resampling.", rich_help_panel=DATA)
    ] = None,
    spacing: Annotated[
        Optional[str], typer.Option(help="Resample to this voxel size x,y,z (mm).", rich_help_panel=DATA)
    ] = None,
    intensity: Annotated[
        Optional[str], typer.Option(help="percentile | ct_window | none.", rich_help_panel=DATA)
    ] = None,
    ct_window: Annotated[
        Optional[str],
        typer.Option(help="CT window level,width (HU), with --intensity ct_window.", rich_help_panel=DATA),
    ] = None,
    missing_rate: Annotated[
        float,
        typer.Option(
            help="Drop this fraction of every volume's voxels completely at random (MCAR, seeded by --seed), for missing-data experiments. Real gaps: NaN voxels or masksTr/ masks (1 = missing).",
            rich_help_panel=DATA,
        ),
    ] = 0.0,
    channels: Annotated[
        Optional[str], typer.Option(help="Autoencoder channels per level, e.g. 16,32,64.", rich_help_panel=MODEL)
    ] = None,
    mask_channel: Annotated[
        Optional[bool],
        typer.Option(
            "--mask-channel/--no-mask-channel",
            help="Give the encoder the observed-voxel mask as an extra channel (default: on when the data have missing voxels).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    label_input: Annotated[
        Optional[bool],
        typer.Option(
            "--label-input/--no-label-input",
            help="Give the encoder the label channels (default) or the image alone; the decoder outputs the mask either way, and without label input a sampled mask is the one its image shows.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    latent_channels: Annotated[Optional[int], typer.Option(help="Latent channels.", rich_help_panel=MODEL)] = None,
    kl_weight: Annotated[Optional[float], typer.Option(help="KL weight (~1e-6).", rich_help_panel=MODEL)] = None,
    label_weight: Annotated[
        Optional[float], typer.Option(help="Weight of CE+Dice on the label channels.", rich_help_panel=MODEL)
    ] = None,
    ssim_weight: Annotated[
        Optional[float], typer.Option(help="Weight of an optional 1-SSIM image term.", rich_help_panel=MODEL)
    ] = None,
    latent_noise: Annotated[
        Optional[float],
        typer.Option(
            help="Train the decoder on latents + this many latent std of Gaussian noise (robust decoding of diffusion samples).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(
            help="Passes over all training slices.",
            show_default=common.default(AETrainConfig, "epochs"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(
            help="Optimisation steps (wins over --epochs).",
            show_default=common.default(AETrainConfig, "steps"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            help="Slices per batch (per process).",
            show_default=common.default(AETrainConfig, "batch_size"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(help="Learning rate.", show_default=common.default(AETrainConfig, "lr"), rich_help_panel=TRAIN),
    ] = None,
    max_minutes: Annotated[
        Optional[float],
        typer.Option(
            help="Stop after this many minutes (best checkpoint kept).",
            show_default=common.default(AETrainConfig, "max_minutes"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(
            help="Fraction of cases held out for validation (the best checkpoint has the lowest held-out loss).",
            show_default=common.default(AETrainConfig, "val_fraction"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(
            help="auto | fp32 | bf16 | fp16.",
            show_default=common.default(AETrainConfig, "precision"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    checkpoint_every: Annotated[
        Optional[int],
        typer.Option(
            help="Save the resumable training state every N steps (also every 10 min and at the end).",
            show_default=common.default(AETrainConfig, "checkpoint_every"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Go on from the training state in --out (an error if there is none). Without it a state there is picked up automatically.",
            rich_help_panel=TRAIN,
        ),
    ] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore and replace a training state in --out.", rich_help_panel=TRAIN)
    ] = False,
    modality: Annotated[
        Optional[str],
        typer.Option(
            "--modality",
            help="CT | MR | OT: modality of NIfTI training data, for `sample --format dicom` (DICOM data: its Modality tag; default OT, CT with --intensity ct_window).",
            rich_help_panel=DATA,
        ),
    ] = None,
) -> None:
    """Train the 2D slice autoencoder (image + label channels, slice-position embedding)."""
    from ldmtool.config import AELossConfig, AutoencoderConfig, load_yaml, to_dict
    from ldmtool.data.prepared import prepare_dataset
    from ldmtool.data.preprocess import PreprocessConfig
    from ldmtool.errors import LdmError
    from ldmtool.train.autoencoder import train_autoencoder

    state: common.State = ctx.obj
    cfg = load_yaml(config)
    pre = PreprocessConfig.from_dict(
        {
            **(cfg.get("preprocess") or {}),
            **{k: v for k, v in preprocess_flags(shape, spacing, intensity, ct_window).items() if v is not None},
        }
    )
    model_cfg = common.section(
        cfg,
        "autoencoder",
        AutoencoderConfig,
        {
            "channels": common.ints(channels, None, "--channels"),
            "latent_channels": latent_channels,
            "mask_channel": mask_channel,
            "label_input": label_input,
        },
    )
    loss_cfg = common.section(
        cfg,
        "ae_loss",
        AELossConfig,
        {
            "kl_weight": kl_weight,
            "label_weight": label_weight,
            "ssim_weight": ssim_weight,
            "latent_noise": latent_noise,
        },
    )
    train_cfg = common.section(
        cfg,
        "ae_train",
        AETrainConfig,
        {
            "epochs": epochs,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "max_minutes": max_minutes,
            "val_fraction": val_fraction,
            "precision": precision,
            "checkpoint_every": checkpoint_every,
        },
    )
    common.require_exists(data, "data set")
    if modality is not None and modality.upper() not in MODALITIES:
        raise LdmError(f"--modality must be one of {', '.join(MODALITIES)}; got {modality!r}")
    mode = common.resume_mode(resume, restart)
    with common.training_session(state, out, mode) as (info, stop):
        device = info.device
        prepared = prepare_dataset(
            data, pre, series_uid=series, console=state.console, missing_rate=missing_rate, seed=state.seed
        )
        if (
            mask_channel is None
            and "mask_channel" not in (cfg.get("autoencoder") or {})
            and prepared.observed is not None
        ):
            model_cfg.mask_channel = True  # incomplete data: the mask input measurably helps (benchmarks/imputation.py)
        factor = model_cfg.downsample
        d, h, w = prepared.images.shape[1:]
        if h % factor or w % factor:
            raise LdmError(
                f"slice size {h}x{w} must be divisible by {factor} (the autoencoder's downsampling); set --shape"
            )
        state.console.print(
            f"{len(prepared.case_ids)} volumes of shape {prepared.volume_shape}, "
            f"{'labels: ' + ', '.join(prepared.label_names) if prepared.labels is not None else 'no labels'}; device {device}"
            + (f"; {100 * prepared.missing_fraction:.1f}% of voxels missing" if prepared.observed is not None else "")
        )
        common.announce_scale(state, info, train_cfg.batch_size, train_cfg.lr, "slices")
        result = train_autoencoder(
            prepared,
            out,
            model_cfg=model_cfg,
            loss_cfg=loss_cfg,
            train_cfg=train_cfg,
            preprocess=to_dict(pre),
            missing_rate=missing_rate,
            modality=training_modality(modality, prepared.modalities, pre.intensity),
            device=device,
            seed=state.seed,
            console=state.console,
            dist=info,
            resume=mode,
            stop=stop,
        )
    if not info.is_main:
        return
    if result.already_complete:
        state.console.print(f"{out} already holds a finished run; use --restart to train again")
    rows = {
        "checkpoint": str(result.path),
        "parameters": f"{result.parameters / 1e6:.2f} M",
        "slices/s": result.items_per_second,
    }
    rows.update(
        {k: v for k, v in result.best.items() if k in ("epoch", "psnr", "ssim", "val_loss") or k.startswith("dice_")}
    )
    rows.update(common.scale_rows(result))
    common.console.print(common.results_table("train-ae: best checkpoint (held-out cases)", rows))


MODALITIES = ("CT", "MR", "OT")


def training_modality(flag: str | None, found: list[str], intensity: str) -> str:
    """The modality recorded for synthetic DICOM: --modality, else the DICOM data's one Modality
    (CT or MR; others OT), else CT for --intensity ct_window, else OT."""
    if flag is not None:
        return flag.upper()
    tags = set(found) - {""}
    if len(tags) == 1:
        tag = tags.pop()
        return tag if tag in MODALITIES else "OT"
    return "CT" if intensity == "ct_window" and not tags else "OT"
