"""The file-to-file jobs behind `impute-series` and `sample-series`: read, run the model, write
the tables, their uncertainty and a provenance record, all atomically."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldmtool import __version__
from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_write_text, check_writable_dir
from ldmtool.models.checkpoint import file_sha256, resolve_checkpoint
from ldmtool.series.pipeline import SeriesModel
from ldmtool.series.reader import FORMATS, SeriesData
from ldmtool.series.writer import number, output_name, time_text, write_table

PROVENANCE = "impute-series.json"
# what the imputed table holds in the unobserved cells (the provenance records the description)
ESTIMATES = {
    "median": "the median of the draws",
    "expected": "the model's expected value (one network call at the noisiest step)",
}
SAMPLE_PROVENANCE = "sample-series.json"


@dataclass
class SeriesJobResult:
    stays: int
    missing: int  # cells imputed (or synthesised)
    cells: int
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    outside: int = 0


def parse_quantiles(text: str | tuple[float, ...]) -> tuple[float, ...]:
    """'0.05,0.95' → (0.05, 0.95), each strictly between 0 and 1."""
    try:
        qs = tuple(float(q) for q in (text.split(",") if isinstance(text, str) else text) if str(q).strip())
    except ValueError:
        raise LdmError(f"--quantiles expects comma-separated numbers in (0, 1), got {text!r}") from None
    if not qs or any(not 0 < q < 1 for q in qs):
        raise LdmError(f"--quantiles expects numbers strictly between 0 and 1, got {text!r}")
    return qs


def _check_out(out: Path, marker: str, overwrite: bool) -> None:
    """Refuse a non-empty output folder that is not an earlier output of this job, unless `overwrite`."""
    check_writable_dir(out)
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file() and not overwrite:
        raise LdmError(f"{out} is not empty; choose a new output folder (or --overwrite)")


def uncertainty_text(data: SeriesData, draws: np.ndarray, quantiles: tuple[float, ...]) -> str:
    """Long CSV of every grid cell: id, time, variable, observed (1/0), median and the quantiles of
    the draws (all equal to the value where it was observed)."""
    med = np.median(draws, axis=1)
    qs = np.quantile(draws, quantiles, axis=1)  # (Q, N, T, V)
    obs = data.observed
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "time", "variable", "observed", "median", *[f"q{100 * q:g}" for q in quantiles]])
    style = data.source.get("time_style", "hours")
    for n, sid in enumerate(data.ids):
        for k in range(data.grid.steps):
            t = time_text(k * data.grid.step_hours, style)
            for v, name in enumerate(data.variables):
                w.writerow([sid, t, name, int(obs[n, k, v]), number(med[n, k, v]), *[number(q[n, k, v]) for q in qs]])
    return buf.getvalue()


def impute_table(
    source: Path,
    model_path: Path,
    out: Path,
    *,
    samples: int = 10,
    quantiles: tuple[float, ...] = (0.05, 0.95),
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device="cpu",
    console=None,
    skip_empty: bool = False,
    overwrite: bool = False,
    estimate: str = "median",
    use_outcomes: bool = False,
) -> SeriesJobResult:
    """Impute every unobserved grid cell of the table `source`; write to `out`:
    imputed.* (the table in the input's layout, unobserved cells = the median of the draws, or with
    `estimate="expected"` the model's one-call expected value), uncertainty.csv (median and
    quantiles of the draws for every cell), samples.npz (the draws, N×K×T×V) and impute-series.json
    (provenance). `samples=0` (expected only) draws nothing and writes the table and provenance.

    The stays' outcomes (PhysioNet's Outcomes-X.txt beside the set) condition the imputation only
    with `use_outcomes`: imputed values drawn given the outcome carry it, and a model of the
    outcome trained on them would learn it from the imputation instead of from the patient."""
    if estimate not in ESTIMATES:
        raise LdmError(f"--estimate must be one of {', '.join(ESTIMATES)}; got {estimate!r}")
    if samples < 0 or (samples == 0 and estimate != "expected"):
        raise LdmError(f"--samples must be at least 1 (0 only with --estimate expected); got {samples}")
    t0 = time.perf_counter()
    out = Path(out)
    _check_out(out, PROVENANCE, overwrite)
    ckpt = resolve_checkpoint(model_path)
    model = SeriesModel.load(ckpt, device)
    data = model.read(source, skip_empty=skip_empty)
    had_outcomes = data.outcome is not None
    if not use_outcomes:
        data.outcome = None
    draws = None
    if samples:
        draws = model.impute(data, samples=samples, steps=steps, seed=seed, batch_size=batch_size, console=console)
    if estimate == "expected":
        point = model.expected(data, seed=seed, batch_size=batch_size, console=console)
    else:
        point = np.where(data.observed, data.values, np.median(draws, axis=1))
    outputs = {"imputed table": write_table(data, out / output_name(data, "imputed"), point)}
    if draws is not None:
        outputs["uncertainty"] = atomic_write_text(out / "uncertainty.csv", uncertainty_text(data, draws, quantiles))
        outputs["samples"] = _write_npz(out / "samples.npz", data, draws)
    missing = int((~data.observed).sum())
    result = SeriesJobResult(len(data.ids), missing, int(data.values.size), outputs, 0.0, data.outside)
    result.seconds = time.perf_counter() - t0
    record = {
        "tool": f"ldmtool {__version__}",
        "command": "impute-series",
        "input": data.source,
        "model": {"path": str(ckpt), "sha256": file_sha256(ckpt)},
        "estimate": ESTIMATES[estimate],
        "outcomes": ("used" if use_outcomes else "read, not used") if had_outcomes else "none",
        "samples": samples,
        **({"quantiles": list(quantiles), "steps": model.sampling_steps(steps)} if samples else {}),
        "seed": seed,
        "grid": model.config["grid"],
        "variables": data.variables,
        "stays": len(data.ids),
        "cells": result.cells,
        "imputed_cells": missing,
        "observations_after_grid_end": data.outside,
        "observed_values": "returned exactly (the bin mean where a bin held several)",
        "outputs": {k: str(v.name) for k, v in outputs.items()},
        "seconds": round(result.seconds, 3),
    }
    outputs["provenance"] = atomic_write_text(out / PROVENANCE, json.dumps(record, indent=2) + "\n")
    return result


def _write_npz(path: Path, data: SeriesData, draws: np.ndarray) -> Path:
    from ldmtool.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            draws=draws.astype(np.float32),
            observed=data.observed,
            ids=np.array(data.ids),
            variables=np.array(data.variables),
        )
    return path


def sample_table(
    model_path: Path,
    out: Path,
    *,
    n: int,
    outcome: int | None = None,
    fmt: str | None = None,
    sparse: bool = False,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    guidance: float = 1.0,
    device="cpu",
    console=None,
    overwrite: bool = False,
) -> SeriesJobResult:
    """Write `n` synthetic stays to `out`: synthetic.* (layout `fmt`, default the training
    table's), outcomes.csv (id, outcome) and sample-series.json (provenance)."""
    t0 = time.perf_counter()
    if n < 1:
        raise LdmError(f"--n must be at least 1; got {n}")
    if fmt is not None and fmt not in FORMATS:
        raise LdmError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out)
    _check_out(out, SAMPLE_PROVENANCE, overwrite)
    ckpt = resolve_checkpoint(model_path)
    model = SeriesModel.load(ckpt, device)
    data = model.synthesise(
        n,
        outcome=outcome,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        sparse=sparse,
        guidance=guidance,
        console=console,
    )
    if fmt is not None:
        data.source = {**data.source, "format": fmt}
    if data.source["format"] == "physionet":
        data.source["time_style"] = "hhmm"
    outputs = {"synthetic table": write_table(data, out / output_name(data, "synthetic"))}
    name = model.config.get("outcome") or "outcome"
    rows = [f"id,{name}"] + [
        f"{sid},{'' if np.isnan(y) else int(y)}"
        for sid, y in zip(data.ids, data.outcome if data.outcome is not None else [np.nan] * n)
    ]
    outputs["outcomes"] = atomic_write_text(out / "outcomes.csv", "\n".join(rows) + "\n")
    result = SeriesJobResult(n, int(np.isfinite(data.values).sum()), int(data.values.size), outputs)
    result.seconds = time.perf_counter() - t0
    record = {
        "tool": f"ldmtool {__version__}",
        "command": "sample-series",
        "model": {"path": str(ckpt), "sha256": file_sha256(ckpt)},
        "n": n,
        "outcome": outcome,
        "sparse": sparse,
        "format": data.source["format"],
        "steps": model.sampling_steps(steps),
        "guidance": guidance,
        "seed": seed,
        "grid": model.config["grid"],
        "descriptors": (
            "drawn with each variable's observed fraction from a Gaussian copula of the training stays' "
            "(of the same outcome)"
            if sparse and model.config.get("observation") is not None
            else "drawn from a Gaussian copula of the training stays' descriptors (of the same outcome)"
        ),
        "outputs": {k: str(v.name) for k, v in outputs.items()},
        "seconds": round(result.seconds, 3),
    }
    outputs["provenance"] = atomic_write_text(out / SAMPLE_PROVENANCE, json.dumps(record, indent=2) + "\n")
    return result
