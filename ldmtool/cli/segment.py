"""`ldmtool train-seg DATA --out DIR` and `ldmtool segment INPUT... --model CKPT --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import SegTrainConfig

MODEL = "Model"
TRAIN = "Training"


def train_seg(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Argument(help="nnU-Net style folder: imagesTr/, labelsTr/, dataset.json (label names).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the checkpoint.")],
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            "-c",
            help="YAML config (sections seg_model, seg_loss, seg_train, preprocess); flags override it.",
        ),
    ] = None,
    arch: Annotated[
        Optional[str],
        typer.Option(
            help="ldseg (latent diffusion) | unet (deterministic MONAI UNet baseline).", rich_help_panel=MODEL
        ),
    ] = None,
    dims: Annotated[
        Optional[int],
        typer.Option(help="2: slice by slice (any volume); 3: whole volumes (small ones).", rich_help_panel=MODEL),
    ] = None,
    channels: Annotated[
        Optional[str],
        typer.Option(
            help="Encoder/decoder channels per level, e.g. 16,32,64 (downsampling 2^(levels-1)).", rich_help_panel=MODEL
        ),
    ] = None,
    denoiser_channels: Annotated[
        Optional[str], typer.Option(help="LDSeg denoiser UNet channels per level, e.g. 32,64.", rich_help_panel=MODEL)
    ] = None,
    latent_channels: Annotated[
        Optional[int], typer.Option(help="Label/image latent channels.", rich_help_panel=MODEL)
    ] = None,
    decoder_input: Annotated[
        Optional[str],
        typer.Option(
            help="x0 (default): ẑ0 = (z_t − √(1−ᾱ)ε̂)/√ᾱ, what DDIM hands the decoder | paper: ẑ0 = z_t − ε̂.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    dice_weight: Annotated[
        Optional[float],
        typer.Option(help="γ: weight of the Dice term (loss = CE + γ·Dice + λ·MSE).", rich_help_panel=MODEL),
    ] = None,
    mse_weight: Annotated[
        Optional[float], typer.Option(help="λ: weight of the noise MSE term.", rich_help_panel=MODEL)
    ] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(
            help="Passes over the training slices (2D) or volumes (3D).",
            show_default=common.default(SegTrainConfig, "epochs"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    steps: Annotated[
        Optional[int],
        typer.Option(
            help="Optimisation steps (wins over --epochs).",
            show_default=common.default(SegTrainConfig, "steps"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            help="Slices (2D) or volumes (3D) per batch.",
            show_default=common.default(SegTrainConfig, "batch_size"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(help="Learning rate.", show_default=common.default(SegTrainConfig, "lr"), rich_help_panel=TRAIN),
    ] = None,
    max_minutes: Annotated[
        Optional[float],
        typer.Option(
            help="Stop after this many minutes (best checkpoint kept).",
            show_default=common.default(SegTrainConfig, "max_minutes"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    val_fraction: Annotated[
        Optional[float],
        typer.Option(
            help="Fraction of cases held out for the per-epoch validation Dice (the best checkpoint has the highest mean).",
            show_default=common.default(SegTrainConfig, "val_fraction"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    val_steps: Annotated[
        Optional[int],
        typer.Option(
            help="DDIM steps of the LDSeg validation (default 1, as segment).",
            show_default=False,
            rich_help_panel=TRAIN,
        ),
    ] = None,
    precision: Annotated[
        Optional[str],
        typer.Option(
            help="auto | fp32 | bf16 | fp16.",
            show_default=common.default(SegTrainConfig, "precision"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    checkpoint_every: Annotated[
        Optional[int],
        typer.Option(
            help="Save the resumable training state every N steps (also every 10 min and at the end).",
            show_default=common.default(SegTrainConfig, "checkpoint_every"),
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
) -> None:
    """Train a segmenter: LDSeg (latent diffusion, uncertainty by sampling) or the UNet baseline."""
    from ldmtool.config import SegLossConfig, SegModelConfig, load_yaml
    from ldmtool.data.prepared import prepare_dataset
    from ldmtool.data.preprocess import PreprocessConfig
    from ldmtool.errors import LdmError
    from ldmtool.pipelines.segmenter import DEFAULT_STEPS
    from ldmtool.train.segmentation import train_segmenter

    state: common.State = ctx.obj
    cfg = load_yaml(config)
    pre = PreprocessConfig.from_dict(cfg.get("preprocess") or {})
    if pre.spacing is not None or pre.shape is not None:
        raise LdmError(
            "train-seg works in the data's own voxel grid: remove preprocess.spacing / preprocess.shape from the config"
        )
    model_cfg = common.section(
        cfg,
        "seg_model",
        SegModelConfig,
        {
            "arch": arch,
            "dims": dims,
            "channels": common.ints(channels, None, "--channels"),
            "denoiser_channels": common.ints(denoiser_channels, None, "--denoiser-channels"),
            "latent_channels": latent_channels,
            "decoder_input": decoder_input,
        },
    )
    loss_cfg = common.section(cfg, "seg_loss", SegLossConfig, {"dice_weight": dice_weight, "mse_weight": mse_weight})
    train_cfg = common.section(
        cfg,
        "seg_train",
        SegTrainConfig,
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
    if val_steps is not None and val_steps < 1:
        raise LdmError("--val-steps must be at least 1")
    common.require_exists(data, "data set")
    mode = common.resume_mode(resume, restart)
    with common.training_session(state, out, mode) as (info, stop):
        if info.enabled:
            raise LdmError("train-seg runs in one process; start it without torchrun")
        prepared = prepare_dataset(data, pre, require_labels=True, console=state.console)
        state.console.print(
            f"{len(prepared.case_ids)} volumes of shape {prepared.volume_shape}, labels: {', '.join(prepared.label_names)}; "
            f"{model_cfg.arch} {model_cfg.dims}D, batch {train_cfg.batch_size}, learning rate {train_cfg.lr:g}, device {info.device}"
        )
        result = train_segmenter(
            prepared,
            out,
            model_cfg,
            loss_cfg,
            train_cfg,
            pre.to_dict(),
            info.device,
            seed=state.seed,
            console=state.console,
            resume=mode,
            stop=stop,
            val_steps=DEFAULT_STEPS if val_steps is None else val_steps,
        )
    if result.already_complete:
        state.console.print(f"{out} already holds a finished run; use --restart to train again")
    rows = {
        "checkpoint": str(result.path),
        "architecture": f"{model_cfg.arch} ({model_cfg.dims}D)",
        "parameters": f"{result.parameters / 1e6:.2f} M",
        "seconds": result.seconds,
    }
    if result.resumed_from is not None and not result.already_complete:
        rows["resumed from step"] = result.resumed_from
    rows.update({k: v for k, v in result.best.items() if k != "seconds"})
    common.console.print(common.results_table("train-seg (best epoch)", rows))


def segment(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files, DICOM series folders, or folders of them.")],
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Segmenter checkpoint (file or train-seg output folder).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    steps: Annotated[Optional[int], typer.Option(help="DDIM steps (LDSeg; default 1).", show_default=False)] = None,
    samples: Annotated[
        int, typer.Option(help="Draws per input (LDSeg); > 1 adds mean probabilities and an uncertainty map.")
    ] = 1,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Slices per network call (2D models); consecutive inputs with the same slice size share one."
        ),
    ] = 16,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16.")] = "auto",
    dicom_seg: Annotated[
        bool,
        typer.Option(
            "--dicom-seg/--no-dicom-seg",
            help="For DICOM inputs also write CASE_seg.dcm, a DICOM SEG referencing the source series.",
        ),
    ] = True,
    series: Annotated[
        Optional[str],
        typer.Option("--series", help="SeriesInstanceUID to read where a DICOM folder holds several series."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty --out that is not an earlier segment output: files of the same names are replaced, nothing else is changed or deleted.",
        ),
    ] = False,
) -> None:
    """Segment volumes; label maps in each input's exact geometry (+ uncertainty with --samples).

    Each run leaves its record in --out/runs/segment-TIME.json (the latest also as segment.json).
    A non-empty --out that is not an earlier segment output is refused unless --overwrite."""
    from ldmtool.pipelines.segment import segment_files
    from ldmtool.pipelines.segmenter import DEFAULT_STEPS

    state: common.State = ctx.obj
    results = segment_files(
        inputs,
        model,
        out,
        steps=DEFAULT_STEPS if steps is None else steps,
        samples=samples,
        batch_size=batch_size,
        seed=state.seed,
        device=state.torch_device(),
        precision=precision,
        dicom_seg=dicom_seg,
        console=state.console,
        series_uid=series,
        overwrite=overwrite,
    )
    from rich.table import Table

    table = Table(title=f"segment: {len(results)} volume(s) → {out}", title_justify="left")
    for col in ("input", "shape", "label map", "seconds", "voxels per class"):
        table.add_column(col)
    for r in results:
        maps = r.label_path.name + (f" + {r.dicom_seg_path.name}" if r.dicom_seg_path else "")
        table.add_row(
            Path(r.source).name,
            "×".join(map(str, r.shape)),
            maps,
            f"{r.seconds:.2f}",
            ", ".join(f"{k} {v}" for k, v in r.voxels_per_class.items()),
        )
    common.console.print(table)
