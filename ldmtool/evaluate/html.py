"""report.json, a self-contained report.html (figures embedded as data URIs) and the terminal rows."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from ldmtool.io.atomic import atomic_write_text


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.4g}"
    return str(v)


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(criterion, measure, value, how to read it) rows: the terminal table and the HTML summary."""
    rows = []
    for key, criterion_rows in _CRITERION_ROWS:
        if report.get(key):
            rows += criterion_rows(report[key])
    for crit, why in report.get("skipped", {}).items():
        rows.append((crit, "not computed", "–", why))
    for text in report.get("warnings", []):
        rows.append(("warning", "", "", text))
    return rows


def _fidelity_rows(f: dict) -> list[tuple[str, str, str, str]]:
    return [
        ("fidelity", f"precision (k={f['k']})", _fmt(f["precision"]), "higher is better, 1 = all inside real"),
        ("fidelity", "FID", _fmt(f["fid"]), "lower is better, 0 = same feature statistics"),
    ]


def _diversity_rows(d: dict) -> list[tuple[str, str, str, str]]:
    rows = [
        ("diversity", f"recall (k={d['k']})", _fmt(d["recall"]), "higher is better"),
        ("diversity", "MMD (linear, features)", _fmt(d["mmd_linear"]), "lower is better"),
        (
            "diversity",
            "pairwise SSIM synthetic / real",
            f"{_fmt(d['pairwise_ssim_synthetic'])} / {_fmt(d['pairwise_ssim_real'])}",
            "close to real; high = repetitive",
        ),
    ]
    ms_s, ms_r = d.get("pairwise_ms_ssim_synthetic", {}), d.get("pairwise_ms_ssim_real", {})
    if ms_s.get("value") is not None:
        rows.append(
            (
                "diversity",
                "pairwise MS-SSIM synthetic / real",
                f"{_fmt(ms_s['value'])} / {_fmt(ms_r.get('value'))}",
                f"{ms_s['scales']} scales, window {ms_s['window']}; close to real",
            )
        )
    return rows


def _speed_rows(s: dict) -> list[tuple[str, str, str, str]]:
    if not s.get("available"):
        return []
    dev = ", ".join(s["devices"])
    return [
        ("speed", "samples/s", _fmt(s["samples_per_second"]), f"from provenance, {s['n_samples']} samples on {dev}")
    ]


def _privacy_rows(p: dict) -> list[tuple[str, str, str, str]]:
    heldout = f"; held-out real: {_fmt(p['heldout_max_ssim_mean'])}" if "heldout_max_ssim_mean" in p else ""
    rows = [
        (
            "privacy",
            f"max SSIM to train (q={p['q']}, {p['repeats']} repeats)",
            _fmt(p["max_ssim_mean"]),
            "lower is more private" + heldout,
        ),
        (
            "privacy",
            f"flagged (SSIM > {p['flag_threshold']:g})",
            f"{p['flagged']} ({100 * p['flagged_share']:.0f}%)",
            "near-copies of training volumes",
        ),
        (
            "privacy",
            "memorisation ratio (NN distance)",
            _fmt(p["memorisation"].get("ratio")),
            "synthetic→train / held-out→train; < 1 = closer than unseen real data",
        ),
    ]
    if p.get("audit"):
        a = p["audit"]
        rows.append(
            (
                "privacy",
                "copies (contrastive audit)",
                f"{a['copies']} ({100 * a['copy_share']:.0f}%); {100 * a['training_share_copied']:.0f}% of train copied",
                "closer to a training case than any held-out case is; 0 is best",
            )
        )
    if p.get("membership") and p["membership"].get("auc") is not None:
        rows.append(("privacy", "membership AUC (denoiser loss)", _fmt(p["membership"]["auc"]), "0.5 = no signal"))
    return rows


def _utility_rows(u: dict) -> list[tuple[str, str, str, str]]:
    metric = "Dice" if u["task"] == "segmentation" else "accuracy"
    key = _score_key(u)
    rows = []
    for src, res in u["results"].items():
        rows.append(("utility", f"{metric}, trained on {src}", _fmt(res[key]), f"on {u['n_test']} real test cases"))
        if "iou" in res:
            mean_iou = float(np.nanmean(list(res["iou"].values())))
            rows.append(("utility", f"IoU, trained on {src}", _fmt(mean_iou), "mean over classes"))
    return rows


def _utility_curve_rows(c: dict) -> list[tuple[str, str, str, str]]:
    metric = "Dice" if c["task"] == "segmentation" else "accuracy"
    n, best = c["smallest_N"], c["best_at_smallest_N"]
    real = c["results"][str(n)]["real"]
    return [
        (
            "utility curve",
            f"gain at N={n} ({best} vs real)",
            f"{c['gain_at_smallest_N']:+.3f} {metric}",
            f"real alone {_fmt(real['mean'])} ± {_fmt(real['std'])} over {c['seeds']} repeats",
        )
    ]


def _robustness_rows(r: dict) -> list[tuple[str, str, str, str]]:
    key = _score_key(r)
    labels = {
        "fgsm": f"FGSM ε={r.get('epsilon')}",
        "pgd": f"PGD ε={r.get('epsilon')}, {r.get('pgd_steps')} steps",
        "noise": f"Gaussian noise σ={r.get('noise_sigma')}",
        "deepfool": f"DeepFool {r.get('deepfool_iterations')} it.",
    }
    rows = []
    for src, res in r["results"].items():
        for pert, val in res.items():
            label = labels.get(pert, pert)
            rows.append(("robustness", f"{src}: {label}", _fmt(val[key]), f"clean {_fmt(r['clean'][src][key])}"))
    return rows


def _score_key(section: dict) -> str:
    """The headline score of a utility or robustness section: mean Dice or accuracy."""
    return "dice_mean" if section["task"] == "segmentation" else "accuracy"


def _attributes_rows(a: dict) -> list[tuple[str, str, str, str]]:
    top = a["most_different"][0]["attribute"] if a["most_different"] else "–"
    return [
        ("fidelity", "FRD (radiomics)", _fmt(a["frd"]), "lower is better, 0 = same radiomic statistics"),
        (
            "fidelity",
            "SaD / PaD (attributes)",
            f"{_fmt(a['sad'])} / {_fmt(a['pad'])}",
            f"lower is better; most different: {top}",
        ),
    ]


def _condition_rows(c: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    m = c.get("mask_to_image")
    if m:
        real = m["real"]
        how = "close to the segmenter's Dice on real images"
        if real is not None:
            how += (
                f" ({_fmt(real['dice_mean'])}; same maps: {_fmt(m['synthetic_on_maps_with_real_image']['dice_mean'])})"
            )
        rows.append(("condition", "Dice vs requested maps (mean)", _fmt(m["synthetic"]["dice_mean"]), how))
    p = c.get("inpainting")
    if p:
        n = p["n_cases"]
        rows.append(("condition", "inpainting: seam within tissue p95", f"{p['seam_within']}/{n}", "all = seamless"))
        rows.append(
            ("condition", "inpainting: outside bit-exact", f"{p['outside_exact']}/{p['outside_checked']}", "all")
        )
        if p["inserted"]:
            rows.append(("condition", "inserted class: Dice vs region", _fmt(p["dice_mean"]), "higher is better"))
    return rows


_CRITERION_ROWS = (
    ("fidelity", _fidelity_rows),
    ("attributes", _attributes_rows),
    ("diversity", _diversity_rows),
    ("speed", _speed_rows),
    ("privacy", _privacy_rows),
    ("utility", _utility_rows),
    ("utility_curve", _utility_curve_rows),
    ("robustness", _robustness_rows),
    ("condition_fidelity", _condition_rows),
)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _table(header: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}figure{display:inline-block;margin:0 1em 1em 0}img{max-width:100%}
figcaption{font-size:.85em;color:#555}code{background:#f3f3f3;padding:0 3px}.note{color:#555;font-size:.9em}"""


def render_html(report: dict, out_dir: Path) -> str:
    """The whole report as one self-contained HTML page (figures embedded as data URIs)."""
    out_dir = Path(out_dir)
    figs = report.get("figures", {})
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ldmtool evaluation report</title>"
        f"<style>{_CSS}</style></head><body><h1>Synthetic data report</h1>"
    ]
    parts += _inputs_section(report)
    parts.append(
        "<h2>Summary</h2>"
        + _table(["criterion", "measure", "value", "how to read"], [list(r) for r in summary_rows(report)])
    )
    if "montage" in figs:
        parts.append(
            "<h2>Real (top) and synthetic (bottom)</h2>"
            + _img(out_dir / figs["montage"], "axial and coronal mid-slices")
        )
    if report.get("fidelity"):
        parts += _fidelity_section(report["fidelity"])
    if report.get("attributes"):
        parts += _attributes_section(report["attributes"])
    if "precision_recall" in figs:
        parts.append(_img(out_dir / figs["precision_recall"], "improved precision and recall"))
    if report.get("speed") and report["speed"].get("available"):
        parts.append(_speed_section(report["speed"]))
    if report.get("privacy"):
        parts += _privacy_section(report["privacy"], figs, out_dir)
    if report.get("utility"):
        parts += _utility_section(report["utility"])
    if report.get("robustness"):
        parts += _robustness_section(report["robustness"])
    if "utility" in figs:
        parts.append(_img(out_dir / figs["utility"], "downstream scores on real test volumes"))
    if report.get("utility_curve"):
        parts += _utility_curve_section(report["utility_curve"], figs, out_dir)
    if report.get("condition_fidelity"):
        parts += _condition_section(report["condition_fidelity"])
    parts.append("<p class='note'>Every number and its settings: <code>report.json</code>.</p></body></html>")
    return "\n".join(parts)


def _inputs_section(report: dict) -> list[str]:
    """The input sets, the run's settings line and the feature extractor."""
    inp = report.get("inputs", {})
    parts = [
        "<h2>Inputs</h2>"
        + _table(
            ["set", "path", "volumes", "shape"],
            [
                [k, v["path"], v.get("n"), "×".join(map(str, v["shape"])) if v.get("shape") else None]
                for k, v in inp.items()
                if isinstance(v, dict)
            ],
        ),
        f"<p class='note'>{html.escape(inp.get('note', 'no volume read'))}. ldmtool {report['ldmtool_version']}, "
        f"device {report['device']}, seed {report['seed']}, {report['seconds']} s.</p>",
    ]
    fe = report.get("feature_extractor")
    if fe:
        parts.append(
            f"<p>Feature extractor: <code>{html.escape(fe['name'])}</code>, views {', '.join(fe['views'])}, "
            f"{fe['slices_per_view']} slices per view, {fe['image_size']} px. <span class='note'>{html.escape(fe['note'])}.</span></p>"
        )
    return parts


def _fidelity_section(f: dict) -> list[str]:
    """Per-view precision, recall and FID, and their definition."""
    return [
        "<h2>Fidelity and diversity</h2>"
        + _table(
            ["view", "precision", "recall", "FID"],
            [[v, x["precision"], x["recall"], x["fid"]] for v, x in f["per_view"].items()],
        ),
        f"<p class='note'>{html.escape(f['definition'])}</p>",
    ]


def _attributes_section(a: dict) -> list[str]:
    """FRD, SaD and PaD with the attributes and pairs that differ most between real and synthetic."""
    return [
        "<h2>Medical attributes (radiomics)</h2>"
        + _table(["FRD", "SaD", "PaD", "attributes used"], [[a["frd"], a["sad"], a["pad"], a["attributes_used"]]])
        + "<h3>Most different attributes</h3>"
        + _table(
            ["attribute", "SaD (KL)", "real mean", "synthetic mean"],
            [[r["attribute"], r["sad"], r["real_mean"], r["synthetic_mean"]] for r in a["most_different"]],
        )
        + "<h3>Most different pairs of attributes</h3>"
        + _table(["attributes", "PaD"], [[" × ".join(r["attributes"]), r["pad"]] for r in a["most_different_pairs"]]),
        f"<p class='note'>{html.escape(a['definition'])}</p>",
    ]


def _speed_section(s: dict) -> str:
    """Sampling speed read from the provenance sidecars."""
    row = [
        s["samples_per_second"],
        s["seconds_per_sample_mean"],
        json.dumps(s["devices"]),
        json.dumps(s["samplers"]),
        s["source"],
    ]
    return "<h2>Sampling speed</h2>" + _table(["samples/s", "s/sample (mean)", "devices", "samplers", "source"], [row])


def _privacy_section(p: dict, figs: dict, out_dir: Path) -> list[str]:
    """Max-SSIM histogram, memorisation measures and the most suspicious pairs."""
    parts = [
        "<h2>Privacy</h2>",
        f"<p class='note'>{html.escape(p['definition'])}; SSIM window {p['ssim_window']}.</p>",
    ]
    if "privacy_ssim" in figs:
        parts.append(_img(out_dir / figs["privacy_ssim"], "highest SSIM to a training volume"))
    search = p.get("search")
    if search:
        rec = search["recall_vs_exhaustive"]
        parts.append(
            f"<p class='note'>Nearest training volume: {html.escape(search['method'])} search "
            f"({html.escape(search['coarse_stage'])}; exact SSIM on at most {search['candidates_max']} candidates, "
            f"{_fmt(search['exact_pairs_per_query'])} pairs per query); recall of the exhaustive nearest neighbour "
            f"{_fmt(rec.get('recall'))} on {rec.get('checked')} queries.</p>"
        )
    m = p["memorisation"]
    parts.append(_table(["measure", "value"], [[k, json.dumps(v) if isinstance(v, list) else v] for k, v in m.items()]))
    parts.append("<h3>Most suspicious pairs</h3>")
    for pair in p["suspicious_pairs"]:
        parts.append(
            _img(out_dir / pair["figure"], f"{pair['synthetic']} vs {pair['train']}: SSIM {pair['max_ssim']:.3f}")
        )
    return parts


def _utility_section(u: dict) -> list[str]:
    """Downstream scores per training source (and per class for segmentation)."""
    key = _score_key(u)
    parts = [
        f"<h2>Utility ({html.escape(u['task'])})</h2><p class='note'>{html.escape(u['model'])}; "
        f"{u['steps']} steps, batch {u['batch_size']}, channels {u['channels']}; {html.escape(u['metric'])}.</p>",
        _table(["trained on", key], [[k, v[key]] for k, v in u["results"].items()]),
    ]
    if u["task"] == "segmentation" and all("iou" in v for v in u["results"].values()):
        parts.append(
            _table(
                ["trained on", "class", "Dice", "IoU", "HD95 (voxels)"],
                [
                    [k, c, v["dice"][c], v["iou"][c], v["hd95_voxels"][c]]
                    for k, v in u["results"].items()
                    for c in v["dice"]
                ],
            )
        )
    return parts


def _utility_curve_section(c: dict, figs: dict, out_dir: Path) -> list[str]:
    """The augmentation curve: mean ± std over repeats per size and condition, the figure, the subset rule."""

    def cell(p: dict) -> str:
        return f"{_fmt(p['mean'])} ± {_fmt(p['std'])} ({p['n_real']}+{p['n_synthetic']})"

    parts = [
        f"<h2>Augmentation curve ({html.escape(c['task'])})</h2><p class='note'>{html.escape(c['model'])}, "
        f"{c['steps']} steps; {html.escape(c['metric'])} on {c['n_test']} real test volumes, mean ± std over "
        f"{c['seeds']} repeats; in brackets real + synthetic training cases.</p>",
        _table(
            ["N"] + c["conditions"],
            [[n] + [cell(c["results"][str(n)][k]) for k in c["conditions"]] for n in c["sizes"]],
        ),
        f"<p class='note'>Subsets: {html.escape(c['subset_rule'])}.</p>",
    ]
    if "utility_curve" in figs:
        parts.append(_img(out_dir / figs["utility_curve"], "score vs real training cases N (std over repeats)"))
    return parts


def _robustness_section(r: dict) -> list[str]:
    """Scores under each perturbation beside the clean score, and the attack settings."""
    key = _score_key(r)
    conds = sorted({c for v in r["results"].values() for c in v})
    settings = {k: v for k, v in r.items() if k not in ("clean", "results")}
    return [
        "<h2>Robustness</h2>"
        + _table(
            ["trained on", "clean"] + conds,
            [[k, r["clean"][k][key]] + [v[c][key] for c in conds] for k, v in r["results"].items()],
        ),
        f"<p class='note'>{html.escape(json.dumps(settings))}</p>",
    ]


def _condition_section(c: dict) -> list[str]:
    """Mask-to-image Dice per class (synthetic vs real images of the same maps) and the inpainting cases."""
    seg = c["segmenter"]
    parts = [
        f"<h2>Condition fidelity</h2><p class='note'>Segmenter {html.escape(seg['path'])} ({seg['arch']}, "
        f"{seg['dims']}D). {html.escape(c['definition'])}.</p>"
    ]
    m = c.get("mask_to_image")
    if m:
        real, same = m["real"] or {"dice": {}}, m["synthetic_on_maps_with_real_image"] or {"dice": {}}
        rows = [
            [k, m["synthetic"]["dice"][k], same["dice"].get(k), real["dice"].get(k)]
            + [None if real["dice"].get(k) is None else same["dice"][k] - real["dice"][k]]
            for k in c["classes"]
        ]
        parts.append(
            f"<p class='note'>{m['n_samples']} synthetic images; {m['n_maps_with_real_image']} maps with a real image.</p>"
            + _table(["class", "synthetic", "synthetic (maps with real)", "real", "difference"], rows)
        )
    p = c.get("inpainting")
    if p:
        rows = [
            [x["case"], x["method"], x["label"] or ("healthy" if x["healthy"] else None), x["outside_exact"]]
            + [(x["seam"] or {}).get("border_gradient"), (x["seam"] or {}).get("tissue_gradient_p95")]
            + [x.get("dice"), x.get("volume_ratio"), x.get("centroid_error_mm")]
            for x in p["cases"]
        ]
        header = ["case", "method", "class", "outside exact", "seam gradient", "tissue p95"]
        parts.append(_table(header + ["Dice vs region", "volume ratio", "centroid error (mm)"], rows))
    return parts


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.json and report.html into out_dir (figures are already in out_dir/figures)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=True))
    ht = atomic_write_text(out_dir / "report.html", render_html(report, out_dir))
    return {"json": Path(js), "html": Path(ht)}
