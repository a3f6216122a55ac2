"""`ldmtool train-series`, `impute-series` and `sample-series`: clinical time series with LSSDM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ldmtool.cli import common
from ldmtool.series.config import SeriesModelConfig, SeriesTrainConfig

MODEL = "Model"
TRAIN = "Training"
TABLE = "Table"

DATA_HELP = (
    "Table of stays: long CSV/TSV/Parquet (id,time,variable,value), wide CSV/TSV (one row per time, one "
    "column per variable, optional id column) or PhysioNet 2012 files (a folder or .tar.gz of RECORDID.txt)."
)


def _static(text: str | None) -> tuple[str, ...]:
    from ldmtool.series.reader import STATIC_DEFAULT

    if text is None:
        return STATIC_DEFAULT
    return tuple(s.strip() for s in text.split(",") if s.strip() and s.strip().lower() != "none")


def train_series(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the model.")],
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (sections series_model, series_train).")
    ] = None,
    outcomes: Annotated[
        Optional[Path],
        typer.Option(
            help="CSV of outcomes (first column the stay id) to condition on; PhysioNet's Outcomes-X.txt beside "
            "set-X is found by itself.",
            rich_help_panel=TABLE,
        ),
    ] = None,
    outcome_column: Annotated[str, typer.Option(help="Binary (0/1) outcome column.", rich_help_panel=TABLE)] = (
        "In-hospital_death"
    ),
    static: Annotated[
        Optional[str],
        typer.Option(
            help="Descriptors kept as static covariates (comma list; 'none' for none). Default: Age,Gender,Height,ICUType.",
            rich_help_panel=TABLE,
        ),
    ] = None,
    grid_steps: Annotated[int, typer.Option(help="Time steps of the grid.", rich_help_panel=TABLE)] = 48,
    step_hours: Annotated[float, typer.Option(help="Hours per grid step.", rich_help_panel=TABLE)] = 1.0,
    skip_empty: Annotated[
        bool,
        typer.Option("--skip-empty", help="Leave out stays with no observation on the grid.", rich_help_panel=TABLE),
    ] = False,
    channels: Annotated[Optional[int], common.opt(SeriesModelConfig, "channels", panel=MODEL)] = None,
    latent_dim: Annotated[Optional[int], common.opt(SeriesModelConfig, "latent_dim", panel=MODEL)] = None,
    score_layers: Annotated[Optional[int], common.opt(SeriesModelConfig, "score_layers", panel=MODEL)] = None,
    neighbours: Annotated[Optional[int], common.opt(SeriesModelConfig, "neighbours", panel=MODEL)] = None,
    steps: Annotated[Optional[int], common.opt(SeriesTrainConfig, "steps", panel=TRAIN)] = None,
    epochs: Annotated[Optional[int], common.opt(SeriesTrainConfig, "epochs", panel=TRAIN)] = None,
    batch_size: Annotated[Optional[int], common.opt(SeriesTrainConfig, "batch_size", panel=TRAIN)] = None,
    lr: Annotated[Optional[float], common.opt(SeriesTrainConfig, "lr", panel=TRAIN)] = None,
    max_minutes: Annotated[Optional[float], common.opt(SeriesTrainConfig, "max_minutes", panel=TRAIN)] = None,
    checkpoint_every: Annotated[Optional[int], common.opt(SeriesTrainConfig, "checkpoint_every", panel=TRAIN)] = None,
    resume: Annotated[bool, common.resume_flag(TRAIN)] = False,
    restart: Annotated[bool, common.restart_flag(TRAIN)] = False,
) -> None:
    """Train LSSDM on a table of stays (self-supervised: part of the observed values is hidden)."""
    from ldmtool.config import load_yaml
    from ldmtool.series.reader import Grid, read_table
    from ldmtool.series.train import train_series as run

    state: common.State = ctx.obj
    cfg = load_yaml(config)
    model_cfg = common.section(cfg, "series_model", SeriesModelConfig, locals())
    train_cfg = common.section(cfg, "series_train", SeriesTrainConfig, locals())
    common.require_exists(data, "table")
    if outcomes is not None:
        common.require_exists(outcomes, "outcome table")
    grid = Grid(grid_steps, step_hours)
    mode = common.resume_mode(resume, restart)
    with common.training_session(state, out, mode) as (info, stop):
        table = read_table(
            data,
            static_names=_static(static),
            grid=grid,
            skip_empty=skip_empty,
            outcomes=outcomes,
            outcome_column=outcome_column,
        )
        state.console.print(
            f"{len(table.ids)} stays, {len(table.variables)} variables, {grid.steps} steps of {grid.step_hours:g} h, "
            f"{100 * table.observed.mean():.1f}% of cells observed"
        )
        common.announce_scale(state, info, train_cfg.batch_size, train_cfg.lr, "stays")
        result = run(
            table,
            out,
            model_cfg=model_cfg,
            train_cfg=train_cfg,
            device=info.device,
            seed=state.seed,
            console=state.console,
            dist=info,
            resume=mode,
            stop=stop,
        )
    if not info.is_main:
        return
    last = result.history[-1] if result.history else {}
    if result.already_complete:
        state.console.print(f"{out} already holds a finished run; use --restart to train again")
    rows = {
        "checkpoint": str(result.path),
        "stays (train)": result.summary.get("stays", "?"),
        "variables": result.summary.get("variables", "?"),
        "graph edges": result.summary.get("graph_edges", "?"),
        "parameters": f"{result.parameters / 1e6:.3f} M",
        "stays/s": result.items_per_second,
        "steps": last.get("step", 0),
        "train loss": last.get("train_loss", float("nan")),
        **common.scale_rows(result),
    }
    if result.best:
        rows["best held-out loss"] = result.best.get("val_loss", float("nan"))
    common.console.print(common.results_table("train-series", rows))


def impute_series(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    model: Annotated[Path, typer.Option("--model", "-m", help="train-series output (folder or checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    samples: Annotated[
        int, typer.Option("--samples", "-k", help="Imputations drawn per stay (0: none, with --estimate expected).")
    ] = 10,
    estimate: Annotated[
        str,
        typer.Option(
            help="Value of the unobserved cells in imputed.*: median (of the draws) or expected (the model's "
            "expected value in one network call: fast, no draws' noise; --samples still gives the uncertainty)."
        ),
    ] = "median",
    quantiles: Annotated[str, typer.Option(help="Quantiles of the draws written per value.")] = "0.05,0.95",
    steps: Annotated[
        Optional[int],
        typer.Option(help="Ancestral sampling steps of each draw (default: 10 of the 50 training timesteps)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Stay draws per batch.")] = 64,
    skip_empty: Annotated[bool, typer.Option("--skip-empty", help="Leave out stays with no observation.")] = False,
    use_outcomes: Annotated[
        bool,
        typer.Option(
            "--use-outcomes",
            help="Condition the imputation on the stays' outcomes (PhysioNet's Outcomes-X.txt). Off by default: "
            "values imputed given the outcome carry it into any model of the outcome trained on them.",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into a non-empty --out that is not an earlier output.")
    ] = False,
) -> None:
    """Fill the unobserved grid cells of a table; observed values are returned exactly.

    Writes imputed.* (the table in the input's layout on the model's grid, unobserved cells = the
    median of the draws, or the expected value with --estimate expected), uncertainty.csv (median and
    quantiles of every cell), samples.npz (all draws) and impute-series.json (provenance)."""
    from ldmtool.series.jobs import impute_table, parse_quantiles

    state: common.State = ctx.obj
    common.require_exists(data, "table")
    result = impute_table(
        data,
        model,
        out,
        samples=samples,
        quantiles=parse_quantiles(quantiles),
        steps=steps,
        seed=state.seed,
        batch_size=batch_size,
        device=state.torch_device(),
        console=state.console,
        skip_empty=skip_empty,
        overwrite=overwrite,
        estimate=estimate,
        use_outcomes=use_outcomes,
    )
    rows = {
        "stays": result.stays,
        "imputed cells": f"{result.missing} of {result.cells} ({100 * result.missing / max(result.cells, 1):.1f}%)",
        **{k: str(v) for k, v in result.outputs.items()},
        "seconds": result.seconds,
    }
    if result.outside:
        rows["observations after the grid's end (left out)"] = result.outside
    common.console.print(common.results_table("impute-series", rows))


def sample_series(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option("--model", "-m", help="train-series output (folder or checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Synthetic stays.")] = 100,
    outcome: Annotated[
        Optional[int], typer.Option(help="Condition every stay on this outcome (0/1); default: the training rate.")
    ] = None,
    fmt: Annotated[
        Optional[str],
        typer.Option(
            "--format", help="long-csv | long-parquet | wide-csv | physionet (default: the training table's)."
        ),
    ] = None,
    sparse: Annotated[
        bool,
        typer.Option("--sparse", help="Keep each value with the training chance of an observation (looks recorded)."),
    ] = False,
    steps: Annotated[
        Optional[int], typer.Option(help="Ancestral sampling steps (default: 10 of the 50 training timesteps).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Stays per batch.")] = 64,
    guidance: Annotated[
        float,
        typer.Option(
            help="Classifier-free guidance on the outcome: 1 = the model's conditional draws, below 1 a weaker "
            "outcome effect on the values (0: none), above 1 a stronger one (each step then costs two calls)."
        ),
    ] = 1.0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into a non-empty --out that is not an earlier output.")
    ] = False,
) -> None:
    """Synthesise whole stays (optionally conditioned on the outcome): synthetic.*, outcomes.csv, sample-series.json."""
    from ldmtool.series.jobs import sample_table

    state: common.State = ctx.obj
    result = sample_table(
        model,
        out,
        n=n,
        outcome=outcome,
        fmt=fmt,
        sparse=sparse,
        steps=steps,
        seed=state.seed,
        batch_size=batch_size,
        guidance=guidance,
        device=state.torch_device(),
        console=state.console,
        overwrite=overwrite,
    )
    rows = {"stays": result.stays, **{k: str(v) for k, v in result.outputs.items()}, "seconds": result.seconds}
    common.console.print(common.results_table("sample-series", rows))
