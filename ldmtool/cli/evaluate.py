"""`ldmtool evaluate --real DIR --synthetic DIR --out REPORT`: the six-criteria report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common

DATA, FEAT, PRIV, DOWN = "Data", "Features", "Privacy", "Utility and robustness"


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def evaluate(
    ctx: typer.Context,
    real: Annotated[
        Path,
        typer.Option(
            "--real", help="Real reference volumes (nnU-Net layout or a folder of volumes).", rich_help_panel=DATA
        ),
    ],
    synthetic: Annotated[
        Path,
        typer.Option(
            "--synthetic", help="Synthetic volumes, e.g. a folder written by `ldmtool sample`.", rich_help_panel=DATA
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.json, report.html, figures/).")],
    train: Annotated[
        Optional[Path],
        typer.Option(
            "--train",
            help="The generator's training set (privacy; real training data for utility).",
            rich_help_panel=DATA,
        ),
    ] = None,
    test: Annotated[
        Optional[Path],
        typer.Option(
            "--test",
            help="Real held-out test volumes with labels (utility, robustness, privacy baseline).",
            rich_help_panel=DATA,
        ),
    ] = None,
    class_labels: Annotated[
        Optional[Path],
        typer.Option(
            "--class-labels",
            help="CSV `case,label` for every case: utility becomes classification.",
            rich_help_panel=DOWN,
        ),
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `evaluate`); flags override it.")
    ] = None,
    only: Annotated[
        Optional[str], typer.Option(help="Criteria to compute, e.g. fidelity,privacy. [default: all six]")
    ] = None,
    views: Annotated[
        Optional[str],
        typer.Option(help="2D views to embed: axial,coronal,sagittal. [default: all]", rich_help_panel=FEAT),
    ] = None,
    feature_extractor: Annotated[
        Optional[Path],
        typer.Option(
            "--feature-extractor",
            help="TorchScript feature network (B,3,H,W)→(B,F). [default: EfficientNet-Lite0 ImageNet]",
            rich_help_panel=FEAT,
        ),
    ] = None,
    slices_per_view: Annotated[
        Optional[int], typer.Option(help="2D images per view and volume. [default: 3]", rich_help_panel=FEAT)
    ] = None,
    image_size: Annotated[
        Optional[int], typer.Option(help="Views are resized to this many pixels. [default: 128]", rich_help_panel=FEAT)
    ] = None,
    k: Annotated[
        Optional[int],
        typer.Option("--k", help="Nearest neighbours of precision/recall. [default: 3]", rich_help_panel=FEAT),
    ] = None,
    q: Annotated[
        Optional[int],
        typer.Option("--q", help="Synthetic samples per privacy repeat. [default: 100]", rich_help_panel=PRIV),
    ] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Privacy repeats. [default: 10]", rich_help_panel=PRIV)] = None,
    flag_ssim: Annotated[
        Optional[float],
        typer.Option(
            help="Flag synthetic volumes with max SSIM to train above this. [default: 0.95]", rich_help_panel=PRIV
        ),
    ] = None,
    pairs: Annotated[
        Optional[int], typer.Option(help="Most suspicious pairs shown as PNGs. [default: 4]", rich_help_panel=PRIV)
    ] = None,
    seg_channels: Annotated[
        Optional[str],
        typer.Option(help="Downstream model channels per level. [default: 16,32,64]", rich_help_panel=DOWN),
    ] = None,
    seg_steps: Annotated[
        Optional[int], typer.Option(help="Downstream training steps. [default: 300]", rich_help_panel=DOWN)
    ] = None,
    seg_batch_size: Annotated[
        Optional[int],
        typer.Option(help="Downstream batch size (slices or volumes). [default: 16]", rich_help_panel=DOWN),
    ] = None,
    epsilon: Annotated[
        Optional[float],
        typer.Option(help="FGSM/PGD L∞ budget on [0,1] intensities. [default: 0.03]", rich_help_panel=DOWN),
    ] = None,
    noise_sigma: Annotated[
        Optional[float],
        typer.Option(help="Gaussian noise std on [0,1] intensities. [default: 0.05]", rich_help_panel=DOWN),
    ] = None,
    max_cases: Annotated[
        Optional[int], typer.Option(help="Read at most this many volumes per set.", rich_help_panel=DATA)
    ] = None,
) -> None:
    """Judge synthetic data: fidelity, diversity, speed, utility, robustness and privacy."""
    from ldmtool.config import EvaluateConfig, load_yaml
    from ldmtool.evaluate.html import summary_rows, write_report
    from ldmtool.evaluate.report import run_evaluation

    state: common.State = ctx.obj
    for path, what in ((real, "--real"), (synthetic, "--synthetic"), (train, "--train"), (test, "--test")):
        if path is not None:
            common.require_exists(path, f"{what} folder")
    cfg = common.section(
        load_yaml(config),
        "evaluate",
        EvaluateConfig,
        {
            "only": _csv(only),
            "views": _csv(views),
            "slices_per_view": slices_per_view,
            "image_size": image_size,
            "k": k,
            "q": q,
            "repeats": repeats,
            "flag_ssim": flag_ssim,
            "pairs": pairs,
            "seg_channels": list(common.ints(seg_channels, None, "--seg-channels")) if seg_channels else None,
            "seg_steps": seg_steps,
            "seg_batch_size": seg_batch_size,
            "epsilon": epsilon,
            "noise_sigma": noise_sigma,
            "max_cases": max_cases,
        },
    )
    from ldmtool.io import check_writable_dir

    check_writable_dir(out)  # before hours of evaluation
    report = run_evaluation(
        real,
        synthetic,
        out,
        cfg,
        train_dir=train,
        test_dir=test,
        feature_extractor=feature_extractor,
        class_labels=class_labels,
        device=state.torch_device(),
        seed=state.seed,
        console=state.console,
    )
    files = write_report(report, out)
    from rich.table import Table

    table = Table(title="synthetic data report", title_justify="left")
    for col in ("criterion", "measure", "value", "how to read"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for row in summary_rows(report):
        table.add_row(*row)
    common.console.print(table)
    common.console.print(f"report: [bold]{files['html']}[/] and {files['json'].name}")
