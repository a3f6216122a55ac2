"""`ldmtool evaluate --real DIR --synthetic DIR --out REPORT`: the six-criteria report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.config import EvaluateConfig

DATA, FEAT, PRIV, DOWN = "Data", "Features", "Privacy", "Utility and robustness"
CURVE, COND = "Augmentation curve", "Condition fidelity"


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
        list[Path],
        typer.Option(
            "--synthetic",
            help="Synthetic volumes, e.g. a folder written by `ldmtool sample`; give it again to judge "
            "several folders as one set (e.g. one `sample --class` run per class).",
            rich_help_panel=DATA,
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
            help="CSV `case,label`: utility becomes classification. Without it, sets whose cases all "
            "have a class (class folders; `sample --class` outputs) and no label maps are classified.",
            rich_help_panel=DOWN,
        ),
    ] = None,
    ae: Annotated[
        Optional[Path],
        typer.Option(
            "--ae", help="The generator's autoencoder: with --ldm, membership inference.", rich_help_panel=PRIV
        ),
    ] = None,
    ldm: Annotated[
        Optional[Path],
        typer.Option("--ldm", help="The generator's latent denoiser (membership inference).", rich_help_panel=PRIV),
    ] = None,
    segmenter: Annotated[
        Optional[Path],
        typer.Option(
            "--segmenter",
            help="A `train-seg` model: condition fidelity of `sample --labels` / `inpaint` outputs (adds `condition`).",
            rich_help_panel=COND,
        ),
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (section `evaluate`); flags override it.")
    ] = None,
    only: Annotated[Optional[str], common.opt(EvaluateConfig, "only")] = None,
    channel: Annotated[Optional[str], common.opt(EvaluateConfig, "channel", panel=DATA)] = None,
    views: Annotated[Optional[str], common.opt(EvaluateConfig, "views", panel=FEAT)] = None,
    feature_extractor: Annotated[
        Optional[Path],
        typer.Option(
            "--feature-extractor",
            help="TorchScript feature network (B,3,H,W)→(B,F). [default: EfficientNet-Lite0 ImageNet]",
            rich_help_panel=FEAT,
        ),
    ] = None,
    slices_per_view: Annotated[Optional[int], common.opt(EvaluateConfig, "slices_per_view", panel=FEAT)] = None,
    image_size: Annotated[Optional[int], common.opt(EvaluateConfig, "image_size", panel=FEAT)] = None,
    k: Annotated[Optional[int], common.opt(EvaluateConfig, "k", "--k", panel=FEAT)] = None,
    q: Annotated[Optional[int], common.opt(EvaluateConfig, "q", "--q", panel=PRIV)] = None,
    repeats: Annotated[Optional[int], common.opt(EvaluateConfig, "repeats", panel=PRIV)] = None,
    flag_ssim: Annotated[Optional[float], common.opt(EvaluateConfig, "flag_ssim", panel=PRIV)] = None,
    pairs: Annotated[Optional[int], common.opt(EvaluateConfig, "pairs", panel=PRIV)] = None,
    nn_candidates: Annotated[Optional[int], common.opt(EvaluateConfig, "nn_candidates", panel=PRIV)] = None,
    nn_margin: Annotated[Optional[float], common.opt(EvaluateConfig, "nn_margin", panel=PRIV)] = None,
    nn_recall_check: Annotated[Optional[int], common.opt(EvaluateConfig, "nn_recall_check", panel=PRIV)] = None,
    audit_steps: Annotated[Optional[int], common.opt(EvaluateConfig, "audit_steps", panel=PRIV)] = None,
    cache_dir: Annotated[Optional[str], common.opt(EvaluateConfig, "cache_dir", panel=FEAT)] = None,
    seg_channels: Annotated[Optional[str], common.opt(EvaluateConfig, "seg_channels", panel=DOWN)] = None,
    seg_steps: Annotated[Optional[int], common.opt(EvaluateConfig, "seg_steps", panel=DOWN)] = None,
    seg_batch_size: Annotated[Optional[int], common.opt(EvaluateConfig, "seg_batch_size", panel=DOWN)] = None,
    real_share: Annotated[Optional[float], common.opt(EvaluateConfig, "real_share", panel=DOWN)] = None,
    epsilon: Annotated[Optional[float], common.opt(EvaluateConfig, "epsilon", panel=DOWN)] = None,
    noise_sigma: Annotated[Optional[float], common.opt(EvaluateConfig, "noise_sigma", panel=DOWN)] = None,
    utility_curve: Annotated[Optional[str], common.opt(EvaluateConfig, "utility_curve", panel=CURVE)] = None,
    curve_ratios: Annotated[Optional[str], common.opt(EvaluateConfig, "curve_ratios", panel=CURVE)] = None,
    curve_seeds: Annotated[Optional[int], common.opt(EvaluateConfig, "curve_seeds", panel=CURVE)] = None,
    max_cases: Annotated[Optional[int], common.opt(EvaluateConfig, "max_cases", panel=DATA)] = None,
) -> None:
    """Judge synthetic data: fidelity, diversity, speed, utility, robustness, privacy (and condition fidelity)."""
    from ldmtool.config import load_yaml
    from ldmtool.evaluate.html import summary_rows, write_report
    from ldmtool.evaluate.report import run_evaluation

    state: common.State = ctx.obj
    for path, what in (
        (real, "--real"),
        *((s, "--synthetic") for s in synthetic),
        (train, "--train"),
        (test, "--test"),
    ):
        if path is not None:
            common.require_exists(path, f"{what} folder")
    seen = {}
    for s in synthetic:
        if s.resolve() in seen:
            from ldmtool.errors import LdmError

            raise LdmError(f"--synthetic {s} is given twice (as {seen[s.resolve()]})")
        seen[s.resolve()] = s
    if segmenter is not None:
        common.require_exists(segmenter, "--segmenter model")
    if (ae is None) != (ldm is None):
        from ldmtool.errors import LdmError

        raise LdmError("membership inference needs both --ae and --ldm (the generator under audit)")
    only, views = _csv(only), _csv(views)
    seg_channels = common.ints(seg_channels, None, "--seg-channels")
    utility_curve = common.ints(utility_curve, None, "--utility-curve")
    curve_ratios = common.floats(curve_ratios, None, "--curve-ratios")
    cfg = common.section(load_yaml(config), "evaluate", EvaluateConfig, locals())
    from ldmtool.io import check_writable_dir

    check_writable_dir(out)  # before hours of evaluation
    report = run_evaluation(
        real,
        list(synthetic),
        out,
        cfg,
        train_dir=train,
        test_dir=test,
        feature_extractor=feature_extractor,
        class_labels=class_labels,
        device=state.torch_device(),
        seed=state.seed,
        console=state.console,
        generator=(ae, ldm) if ae is not None and ldm is not None else None,
        segmenter=segmenter,
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
