"""The augmentation (utility) curve: does adding synthetic cases help a model trained on N real ones?

For each real training size N and repeat s, the downstream model of `ldmtool.evaluate.downstream`
is trained on N real cases alone, on the same N plus round(r·N) synthetic cases for each ratio r,
and on synthetic cases alone (round(r_max·N)); each model is scored on the real test set. The
spread over repeats (different subsets and model seeds) shows whether a gain is larger than chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldmtool.errors import LdmError
from ldmtool.evaluate import downstream as ds
from ldmtool.evaluate.cases import Cases

SUBSET_RULE = (
    "repeat s draws one seeded permutation of the real training cases and one of the synthetic cases; "
    "size N uses the first N real cases and ratio r the first round(r·N) synthetic cases, so subsets are "
    "nested across N and r within a repeat; the model seed is the run seed + s; std is over repeats (ddof 0)"
)
SYNTHETIC_ONLY = "synthetic only"


@dataclass
class CurveTask:
    """The data of one curve and how it is scored.

    Args:
        kind: "segmentation" (cases with label maps; Dice) or "classification" (cases with class
            ids; accuracy).
        real, synthetic, test: the cases (`ldmtool.evaluate.cases.Cases`; subsets are index lists).
        n_classes: classes including background (segmentation) or all classes (classification).
        class_names: the foreground classes Dice is reported for (segmentation); the classes (classification).
    """

    kind: str
    real: Cases
    synthetic: Cases
    test: Cases
    n_classes: int
    class_names: list[str]


def usable_sizes(sizes: tuple[int, ...], n_real: int) -> tuple[list[int], list[str]]:
    """The sizes (ascending) that fit a real training set of `n_real` cases and a warning per
    dropped one; LdmError when none fits."""
    kept = sorted(n for n in sizes if n <= n_real)
    dropped = sorted(n for n in sizes if n > n_real)
    if not kept:
        raise LdmError(
            f"--utility-curve sizes {','.join(map(str, sorted(sizes)))} all exceed the {n_real} real training "
            f"cases: give sizes up to {n_real}"
        )
    return kept, [f"utility curve: size N={n} dropped, the real training set has {n_real} cases" for n in dropped]


def condition_names(ratios: tuple[float, ...]) -> list[str]:
    """'real', 'real+1x syn', … (one per ratio), 'synthetic only'."""
    return ["real", *(f"real+{r:g}x syn" for r in ratios), SYNTHETIC_ONLY]


def _n_syn(ratio: float, size: int, n_available: int) -> int:
    return min(max(1, int(round(ratio * size))), n_available)


def subsets(
    n_real: int, n_syn: int, size: int, ratios: tuple[float, ...], seed: int, repeat: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(real indices, synthetic indices) of every condition at size N in repeat `repeat` (see SUBSET_RULE)."""
    real_perm = np.random.default_rng([seed, repeat, 0]).permutation(n_real)
    syn_perm = np.random.default_rng([seed, repeat, 1]).permutation(n_syn)
    real_idx, none = real_perm[:size], np.zeros(0, dtype=int)
    out = {"real": (real_idx, none)}
    for name, r in zip(condition_names(ratios)[1:-1], ratios):
        out[name] = (real_idx, syn_perm[: _n_syn(r, size, n_syn)])
    out[SYNTHETIC_ONLY] = (none, syn_perm[: _n_syn(max(ratios), size, n_syn)])
    return out


def shortfall_warnings(sizes: list[int], ratios: tuple[float, ...], n_syn: int) -> list[str]:
    """A warning for every curve point that asks for more synthetic cases than exist."""
    out = []
    for n in sizes:
        for r in ratios:
            want = max(1, int(round(r * n)))
            if want > n_syn:
                out.append(
                    f"utility curve: N={n}, ratio {r:g} asks for {want} synthetic cases, "
                    f"{n_syn} exist: all {n_syn} used"
                )
    return out


def fit_and_score(
    task: CurveTask,
    dcfg: ds.DownstreamConfig,
    cases: Cases,
    device: torch.device,
    seed: int,
    on_step,
    n_real: int | None = None,
) -> tuple[float, list[float] | None]:
    """Train one downstream model on the cases, score it on the test set: (headline score, per-class Dice or None).

    `n_real`: the first n_real cases are real (see `DownstreamConfig.real_share`)."""
    if task.kind == "segmentation":
        model = ds.train_segmenter(cases, task.n_classes, dcfg, device, seed, on_step=on_step, n_real=n_real)
        dice = ds.evaluate_segmenter(model, task.test, task.n_classes, dcfg, device, seed)
        return float(np.nanmean(dice)), [float(d) for d in dice]
    model = ds.train_classifier(cases, task.n_classes, dcfg, device, seed, on_step=on_step, n_real=n_real)
    return float(ds.evaluate_classifier(model, task.test, task.n_classes, dcfg, device, seed)["accuracy"]), None


def _point(task: CurveTask, scores: list[float], per_class: list[list[float] | None], n_real: int, n_syn: int) -> dict:
    """One curve point: mean, std and per-repeat scores, with the case counts used."""
    arr = np.array(scores, dtype=float)
    point = {
        "mean": float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan"),
        "std": float(np.nanstd(arr)) if np.isfinite(arr).any() else float("nan"),
        "per_seed": [float(s) for s in scores],
        "n_real": n_real,
        "n_synthetic": n_syn,
    }
    if task.kind == "segmentation":
        pc = np.array(per_class, dtype=float)
        point["per_class"] = {c: float(np.nanmean(pc[:, i])) for i, c in enumerate(task.class_names)}
    return point


def run_curve(
    task: CurveTask,
    dcfg: ds.DownstreamConfig,
    sizes: list[int],
    ratios: tuple[float, ...],
    seeds: int,
    *,
    device: torch.device,
    seed: int = 0,
    on_step=None,
) -> dict[str, dict[str, dict]]:
    """Train and score every condition at every size for every repeat.

    Returns {str(N): {condition: {"mean", "std", "per_seed", "n_real", "n_synthetic"[, "per_class"]}}}.
    `on_step` is called after every training step and after every test-set evaluation.
    """
    real, syn = task.real, task.synthetic
    results: dict[str, dict[str, dict]] = {}
    for n in sizes:
        scores: dict[str, list] = {c: [] for c in condition_names(ratios)}
        per_class: dict[str, list] = {c: [] for c in scores}
        counts: dict[str, tuple[int, int]] = {}
        for s in range(seeds):
            for cond, (ri, si) in subsets(len(real), len(syn), n, ratios, seed, s).items():
                cases = real.subset(ri) + syn.subset(si)
                score, pc = fit_and_score(task, dcfg, cases, device, seed + s, on_step, n_real=len(ri))
                scores[cond].append(score)
                per_class[cond].append(pc)
                counts[cond] = (len(ri), len(si))
                if on_step is not None:
                    on_step()
        results[str(n)] = {c: _point(task, scores[c], per_class[c], *counts[c]) for c in scores}
    return results


def gain_at_smallest(results: dict[str, dict[str, dict]], sizes: list[int]) -> dict:
    """mean(real + best ratio) − mean(real) at the smallest size, and which ratio was best."""
    first = results[str(sizes[0])]
    mixed = [c for c in first if c not in ("real", SYNTHETIC_ONLY)]
    best = max(mixed, key=lambda c: first[c]["mean"] if np.isfinite(first[c]["mean"]) else -np.inf)
    return {
        "smallest_N": sizes[0],
        "best_at_smallest_N": best,
        "gain_at_smallest_N": float(first[best]["mean"] - first["real"]["mean"]),
    }


def add_utility_curve(report: dict, run, dcfg: ds.DownstreamConfig, task: CurveTask) -> None:
    """Compute the curve when asked for (`utility` selected, `cfg.utility_curve` set); write
    report["utility_curve"] and figures/utility_curve.png.

    Args:
        run: the evaluation's run (`ldmtool.evaluate.report._Run`: cfg, device, seed, stages, fig_dir).
    """
    cfg = run.cfg
    if "utility" not in cfg.only or not cfg.utility_curve:
        return
    sizes, warnings = usable_sizes(cfg.utility_curve, len(task.real))
    warnings += shortfall_warnings(sizes, cfg.curve_ratios, len(task.synthetic))
    conds = condition_names(cfg.curve_ratios)
    step = run.stages.stage("utility curve", len(sizes) * cfg.curve_seeds * len(conds) * (dcfg.steps + 1))
    results = run_curve(
        task, dcfg, sizes, cfg.curve_ratios, cfg.curve_seeds, device=run.device, seed=run.seed, on_step=step
    )
    seg = task.kind == "segmentation"
    report["utility_curve"] = {
        "task": task.kind,
        "metric": "mean Dice over foreground classes (3D, mean over test volumes)" if seg else "accuracy",
        "model": "MONAI UNet 2D on axial slices, DiceCE loss" if seg else "MONAI Classifier (3D)",
        "sizes": sizes,
        "ratios": list(cfg.curve_ratios),
        "seeds": cfg.curve_seeds,
        "conditions": conds,
        "subset_rule": SUBSET_RULE,
        "n_real_available": len(task.real),
        "n_synthetic_available": len(task.synthetic),
        "n_test": len(task.test),
        "steps": dcfg.steps,
        "real_share": dcfg.real_share,
        "results": results,
        **gain_at_smallest(results, sizes),
        "warnings": warnings,
    }
    if warnings:
        report.setdefault("warnings", []).extend(warnings)
    _figure(report, results, sizes, conds, "mean Dice" if seg else "accuracy", Path(run.fig_dir))


def _figure(report: dict, results: dict, sizes: list[int], conds: list[str], label: str, fig_dir: Path) -> None:
    """figures/utility_curve.png: score vs N, one line per condition, error bars = std over repeats."""
    from ldmtool.evaluate.figures import utility_curve_png

    curves = {
        c: ([results[str(n)][c]["mean"] for n in sizes], [results[str(n)][c]["std"] for n in sizes]) for c in conds
    }
    utility_curve_png(sizes, curves, label, fig_dir / "utility_curve.png")
    report["figures"]["utility_curve"] = "figures/utility_curve.png"
