"""`ldmtool train-ae DATA --out AE`: fit the slice autoencoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import AELossConfig, AETrainConfig, AutoencoderConfig
from ldmtool.data.preprocess_config import PreprocessConfig

DATA = "Data"
MODEL = "Model"
TRAIN = "Training"


def preprocess_flags(shape, spacing, intensity, ct_window, labels=None) -> dict:
    from ldmtool.data.labels import parse_labels

    return {
        "shape": common.ints(shape, 3, "--shape"),
        "spacing": common.floats(spacing, 3, "--spacing"),
        "intensity": intensity,
        "ct_window": common.floats(ct_window, 2, "--ct-window"),
        "labels": None if labels is None else parse_labels(labels).to_dict(),
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
    shape: Annotated[Optional[str], common.opt(PreprocessConfig, "shape", panel=DATA)] = None,
    spacing: Annotated[Optional[str], common.opt(PreprocessConfig, "spacing", panel=DATA)] = None,
    intensity: Annotated[Optional[str], common.opt(PreprocessConfig, "intensity", panel=DATA)] = None,
    ct_window: Annotated[Optional[str], common.opt(PreprocessConfig, "ct_window", panel=DATA)] = None,
    missing_rate: Annotated[
        float,
        typer.Option(
            help="Drop this fraction of every volume's voxels completely at random (MCAR, seeded by --seed), for missing-data experiments. Real gaps: NaN voxels or masksTr/ masks (1 = missing).",
            rich_help_panel=DATA,
        ),
    ] = 0.0,
    channels: Annotated[Optional[str], common.opt(AutoencoderConfig, "channels", panel=MODEL)] = None,
    mask_channel: Annotated[
        Optional[bool], common.opt(AutoencoderConfig, "mask_channel", "--mask-channel/--no-mask-channel", panel=MODEL)
    ] = None,
    label_input: Annotated[
        Optional[bool], common.opt(AutoencoderConfig, "label_input", "--label-input/--no-label-input", panel=MODEL)
    ] = None,
    latent_channels: Annotated[Optional[int], common.opt(AutoencoderConfig, "latent_channels", panel=MODEL)] = None,
    kl_weight: Annotated[Optional[float], common.opt(AELossConfig, "kl_weight", panel=MODEL)] = None,
    label_weight: Annotated[Optional[float], common.opt(AELossConfig, "label_weight", panel=MODEL)] = None,
    ssim_weight: Annotated[Optional[float], common.opt(AELossConfig, "ssim_weight", panel=MODEL)] = None,
    latent_noise: Annotated[Optional[float], common.opt(AELossConfig, "latent_noise", panel=MODEL)] = None,
    adversarial_weight: Annotated[Optional[float], common.opt(AELossConfig, "adversarial_weight", panel=MODEL)] = None,
    adversarial_start: Annotated[Optional[int], common.opt(AELossConfig, "adversarial_start", panel=MODEL)] = None,
    epochs: Annotated[Optional[int], common.opt(AETrainConfig, "epochs", panel=TRAIN)] = None,
    steps: Annotated[Optional[int], common.opt(AETrainConfig, "steps", panel=TRAIN)] = None,
    batch_size: Annotated[Optional[int], common.opt(AETrainConfig, "batch_size", panel=TRAIN)] = None,
    lr: Annotated[Optional[float], common.opt(AETrainConfig, "lr", panel=TRAIN)] = None,
    max_minutes: Annotated[Optional[float], common.opt(AETrainConfig, "max_minutes", panel=TRAIN)] = None,
    val_fraction: Annotated[Optional[float], common.opt(AETrainConfig, "val_fraction", panel=TRAIN)] = None,
    precision: Annotated[Optional[str], common.opt(AETrainConfig, "precision", panel=TRAIN)] = None,
    checkpoint_every: Annotated[Optional[int], common.opt(AETrainConfig, "checkpoint_every", panel=TRAIN)] = None,
    resume: Annotated[bool, common.resume_flag(TRAIN)] = False,
    restart: Annotated[bool, common.restart_flag(TRAIN)] = False,
    labels: Annotated[Optional[str], typer.Option(help=common.LABELS_HELP, rich_help_panel=DATA)] = None,
    modality: Annotated[
        Optional[str],
        typer.Option(
            "--modality",
            help="CT | MR | OT (2D images also CR | DX | MG): modality of NIfTI/PNG training data, for `sample --format dicom` (DICOM data: its Modality tag; default OT, CT with --intensity ct_window).",
            rich_help_panel=DATA,
        ),
    ] = None,
) -> None:
    """Train the 2D slice autoencoder (image + label channels, slice-position embedding)."""
    from ldmtool.config import DenoiserConfig, load_yaml, to_dict
    from ldmtool.data.prepared import prepare_dataset
    from ldmtool.errors import LdmError
    from ldmtool.train.autoencoder import train_autoencoder

    state: common.State = ctx.obj
    cfg = load_yaml(config)
    given = {k: v for k, v in preprocess_flags(shape, spacing, intensity, ct_window, labels).items() if v is not None}
    pre_dict = {**(cfg.get("preprocess") or {}), **given}
    if "intensity" not in pre_dict and data.exists():  # 8-bit 2D images: their own 0..255 scale
        from ldmtool.data.prepared import default_intensity

        pre_dict.update(default_intensity(data) or {})
    pre = PreprocessConfig.from_dict(pre_dict)
    channels = common.ints(channels, None, "--channels")
    model_cfg = common.section(cfg, "autoencoder", AutoencoderConfig, locals())
    loss_cfg = common.section(cfg, "ae_loss", AELossConfig, locals())
    train_cfg = common.section(cfg, "ae_train", AETrainConfig, locals())
    common.require_exists(data, "data set")
    if modality is not None and modality.upper() not in MODALITIES + PROJECTION_MODALITIES:
        raise LdmError(f"--modality must be one of {', '.join(MODALITIES + PROJECTION_MODALITIES)}; got {modality!r}")
    mode = common.resume_mode(resume, restart)
    with common.training_session(state, out, mode) as (info, stop):
        device = info.device
        # a training shape chosen from the data fits the autoencoder and the denoiser's downsampling
        levels = 2 ** (len(common.section(cfg, "denoiser", DenoiserConfig, {}).channels) - 1)
        multiple = (model_cfg.downsample * levels, model_cfg.downsample * levels, levels)
        prepared = prepare_dataset(
            data,
            pre,
            series_uid=series,
            console=state.console,
            missing_rate=missing_rate,
            seed=state.seed,
            shapes="auto",
            multiple=multiple,
        )
        pre = prepared.preprocess
        if (
            mask_channel is None
            and "mask_channel" not in (cfg.get("autoencoder") or {})
            and prepared.observed is not None
        ):
            model_cfg.mask_channel = True  # incomplete data: the mask input helps (benchmarks/results/imputation.md)
        if prepared.image_dims == 3 and modality is not None and modality.upper() in PROJECTION_MODALITIES:
            raise LdmError(f"--modality {modality.upper()} is for 2D images; volumes are CT, MR or OT")
        factor = model_cfg.downsample
        d, h, w = prepared.grid
        if h % factor or w % factor:
            raise LdmError(
                f"slice size {h}x{w} must be divisible by {factor} (the autoencoder's downsampling); set --shape"
            )
        state.console.print(
            f"{len(prepared.case_ids)} {'2D images' if prepared.image_dims == 2 else 'volumes'} of shape "
            f"{prepared.volume_shape[: prepared.image_dims]}, "
            f"{'labels: ' + ', '.join(prepared.label_names) if prepared.labels is not None else 'no labels'}; "
            + (f"channels: {', '.join(prepared.channel_names)}; " if prepared.channels > 1 else "")
            + f"device {device}"
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
            modality=training_modality(modality, prepared.modalities, pre.intensity, prepared.image_dims),
            device=device,
            seed=state.seed,
            console=state.console,
            dist=info,
            resume=mode,
            stop=stop,
        )
    if not info.is_main:
        return
    _report(state, out, result)


def _report(state: common.State, out: Path, result) -> None:
    """The final table: the best checkpoint's held-out scores and how the run was spread."""
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
PROJECTION_MODALITIES = ("CR", "DX", "MG")  # 2D images only (written as Secondary Capture with this Modality)


def training_modality(flag: str | None, found: list[str], intensity: str, image_dims: int = 3) -> str:
    """The modality recorded for synthetic DICOM: --modality, else the DICOM data's one Modality
    (CT or MR; others OT), else CT for --intensity ct_window, else OT. 2D images: --modality, else
    their DICOM data's one Modality as it is (CR, DX, MG, ...), else OT."""
    if flag is not None:
        return flag.upper()
    tags = set(found) - {""}
    if image_dims == 2:
        return tags.pop() if len(tags) == 1 else "OT"
    if len(tags) == 1:
        tag = tags.pop()
        return tag if tag in MODALITIES else "OT"
    return "CT" if intensity == "ct_window" and not tags else "OT"
