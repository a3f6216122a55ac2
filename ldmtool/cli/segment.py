"""`ldmtool train-seg DATA --out DIR` and `ldmtool segment INPUT... --model CKPT --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import SegLossConfig, SegmentConfig, SegModelConfig, SegTrainConfig

MODEL = "Model"
TRAIN = "Training"


def train_seg(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Argument(
            help="nnU-Net style folder: imagesTr/, labelsTr/, dataset.json (label names; without it they are inferred). Volumes may differ in shape."
        ),
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
    arch: Annotated[Optional[str], common.opt(SegModelConfig, "arch", panel=MODEL)] = None,
    dims: Annotated[Optional[int], common.opt(SegModelConfig, "dims", panel=MODEL)] = None,
    channels: Annotated[Optional[str], common.opt(SegModelConfig, "channels", panel=MODEL)] = None,
    denoiser_channels: Annotated[Optional[str], common.opt(SegModelConfig, "denoiser_channels", panel=MODEL)] = None,
    latent_channels: Annotated[Optional[int], common.opt(SegModelConfig, "latent_channels", panel=MODEL)] = None,
    decoder_input: Annotated[Optional[str], common.opt(SegModelConfig, "decoder_input", panel=MODEL)] = None,
    dice_weight: Annotated[Optional[float], common.opt(SegLossConfig, "dice_weight", panel=MODEL)] = None,
    mse_weight: Annotated[Optional[float], common.opt(SegLossConfig, "mse_weight", panel=MODEL)] = None,
    epochs: Annotated[Optional[int], common.opt(SegTrainConfig, "epochs", panel=TRAIN)] = None,
    steps: Annotated[Optional[int], common.opt(SegTrainConfig, "steps", panel=TRAIN)] = None,
    batch_size: Annotated[Optional[int], common.opt(SegTrainConfig, "batch_size", panel=TRAIN)] = None,
    lr: Annotated[Optional[float], common.opt(SegTrainConfig, "lr", panel=TRAIN)] = None,
    max_minutes: Annotated[Optional[float], common.opt(SegTrainConfig, "max_minutes", panel=TRAIN)] = None,
    val_fraction: Annotated[Optional[float], common.opt(SegTrainConfig, "val_fraction", panel=TRAIN)] = None,
    val_steps: Annotated[
        Optional[int],
        typer.Option(
            help="DDIM steps of the LDSeg validation (as segment's --steps).",
            show_default=common.default(SegmentConfig, "steps"),
            rich_help_panel=TRAIN,
        ),
    ] = None,
    precision: Annotated[Optional[str], common.opt(SegTrainConfig, "precision", panel=TRAIN)] = None,
    checkpoint_every: Annotated[Optional[int], common.opt(SegTrainConfig, "checkpoint_every", panel=TRAIN)] = None,
    resume: Annotated[bool, common.resume_flag(TRAIN)] = False,
    restart: Annotated[bool, common.restart_flag(TRAIN)] = False,
    labels: Annotated[Optional[str], typer.Option(help=common.LABELS_HELP + " segment writes these class ids.")] = None,
) -> None:
    """Train a segmenter: LDSeg (latent diffusion, uncertainty by sampling) or the UNet baseline."""
    from ldmtool.config import load_yaml
    from ldmtool.data.labels import parse_labels
    from ldmtool.data.prepared import prepare_dataset
    from ldmtool.data.preprocess import PreprocessConfig
    from ldmtool.errors import LdmError
    from ldmtool.io._util import summarise
    from ldmtool.train.segmentation import train_segmenter

    state: common.State = ctx.obj
    cfg = load_yaml(config)
    pre = PreprocessConfig.from_dict(cfg.get("preprocess") or {})
    if labels is not None:
        pre = PreprocessConfig.from_dict({**pre.to_dict(), "labels": parse_labels(labels).to_dict()})
    if pre.spacing is not None or pre.shape is not None:
        raise LdmError(
            "train-seg trains in each volume's own voxel grid (volumes of different shapes are fine) and segment "
            "writes in it: remove preprocess.spacing / preprocess.shape from the config"
        )
    channels = common.ints(channels, None, "--channels")
    denoiser_channels = common.ints(denoiser_channels, None, "--denoiser-channels")
    model_cfg = common.section(cfg, "seg_model", SegModelConfig, locals())
    loss_cfg = common.section(cfg, "seg_loss", SegLossConfig, locals())
    train_cfg = common.section(cfg, "seg_train", SegTrainConfig, locals())
    if val_steps is not None and val_steps < 1:
        raise LdmError("--val-steps must be at least 1")
    common.require_exists(data, "data set")
    from ldmtool.io import load_dataset

    lacking = next((c for c in load_dataset(data).cases if c.absent), None)
    if lacking is not None:  # a segmenter sees every channel of every case: nothing stands for an absent one
        raise LdmError(
            f"case {lacking.case_id} has no channel {lacking.absent[0]:04d} file; train-seg needs every channel of "
            "every case (impute --missing-channel fills one in)"
        )
    mode = common.resume_mode(resume, restart)
    with common.training_session(state, out, mode) as (info, stop):
        if info.enabled:
            raise LdmError("train-seg runs in one process; start it without torchrun")
        prepared = prepare_dataset(data, pre, require_labels=True, console=state.console, shapes="pad")
        sizes = (
            f"of shape {prepared.volume_shape}"
            if prepared.shapes is None
            else f"of {len(set(prepared.shapes))} shapes up to {prepared.volume_shape} (batches padded to their largest)"
        )
        state.console.print(
            f"{len(prepared.case_ids)} volumes {sizes}, labels: {summarise(list(prepared.label_names), 8)}; "
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
            val_steps=SegmentConfig.steps if val_steps is None else val_steps,
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
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `segment`); flags override it.")
    ] = None,
    steps: Annotated[Optional[int], common.opt(SegmentConfig, "steps")] = None,
    samples: Annotated[Optional[int], common.opt(SegmentConfig, "samples")] = None,
    batch_size: Annotated[Optional[int], common.opt(SegmentConfig, "batch_size")] = None,
    precision: Annotated[Optional[str], common.opt(SegmentConfig, "precision")] = None,
    dicom_seg: Annotated[Optional[bool], common.opt(SegmentConfig, "dicom_seg", "--dicom-seg/--no-dicom-seg")] = None,
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
    from ldmtool.config import load_yaml
    from ldmtool.pipelines.segment import segment_files

    state: common.State = ctx.obj
    cfg = common.section(load_yaml(config), "segment", SegmentConfig, locals())
    results = segment_files(
        inputs,
        model,
        out,
        steps=cfg.steps,
        samples=cfg.samples,
        batch_size=cfg.batch_size,
        seed=state.seed,
        device=state.torch_device(),
        precision=cfg.precision,
        dicom_seg=cfg.dicom_seg,
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
