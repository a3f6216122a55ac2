"""`evaluate`: the six-criteria report (fidelity, diversity, speed, utility, robustness, privacy).

`run_evaluation` reads the volume sets, computes the selected criteria stage by stage and returns
one JSON-safe dict: every number next to the settings that produced it. `write_report` turns that
into report.json, report.html (self-contained) and figures/*.png.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ldmtool import __version__
from ldmtool.config import EvaluateConfig, to_dict
from ldmtool.evaluate.nnsearch import recall_vs_exhaustive
from ldmtool.evaluate.volumes import VolumeSet, concat_sets, open_volume_set


class _Stages:
    """One progress bar per stage (rich; plain lines in log files)."""

    def __init__(self, console) -> None:
        from ldmtool.runtime import progress

        self.bar = progress(console)
        self.times: dict[str, float] = {}

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def stage(self, name: str, total: int):
        task = self.bar.add_task(name, total=total, rate="", info="")
        t0 = time.perf_counter()

        def step(n: int = 1) -> None:
            self.bar.update(task, advance=n)
            self.times[name] = round(time.perf_counter() - t0, 2)

        return step


def _summary_set(vs: VolumeSet | None) -> dict | None:
    if vs is None:
        return None
    return {"path": str(vs.root), "n": len(vs), "shape": list(vs.shape), "labels": vs.label_names or None}


def _heldout(real: VolumeSet, train: VolumeSet | None, test: VolumeSet | None) -> VolumeSet | None:
    """Real volumes the generator did not see: --test, else --real when it is not --train."""
    if test is not None:
        return test
    if (
        train is not None
        and real.root is not None
        and train.root is not None
        and real.root.resolve() != train.root.resolve()
    ):
        return real
    return None


@dataclass
class _Run:
    """What every criterion reads: the settings, the volume sets, where figures go and the stage bars."""

    cfg: EvaluateConfig
    real: VolumeSet
    syn: VolumeSet | None
    train: VolumeSet | None
    test: VolumeSet | None
    heldout: VolumeSet | None  # real volumes the generator did not see (see `_heldout`)
    device: torch.device
    seed: int
    fig_dir: Path
    stages: _Stages
    generator: tuple[Path, Path] | None = None  # (autoencoder, denoiser) for membership inference
    cases: object | None = None  # the downstream models' CaseStore (`ldmtool.evaluate.cases`), when they run

    @property
    def only(self) -> set[str]:
        return set(self.cfg.only)


def run_evaluation(
    real_dir: Path,
    synthetic_dir: Path | list[Path],
    out_dir: Path,
    cfg: EvaluateConfig,
    *,
    train_dir: Path | None = None,
    test_dir: Path | None = None,
    feature_extractor: Path | None = None,
    class_labels: Path | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
    console=None,
    generator: tuple[Path, Path] | None = None,
    segmenter: Path | None = None,
) -> dict:
    """Compute the selected criteria; returns the report dict (also written by `write_report`).
    `synthetic_dir`: one folder, or several read as one set (`volumes.concat_sets`).
    `segmenter` (a `train-seg` model) adds the `condition` criterion (see `evaluate.condition`)."""
    t_start = time.perf_counter()
    syn_dirs = [Path(p) for p in synthetic_dir] if isinstance(synthetic_dir, (list, tuple)) else [Path(synthetic_dir)]
    if segmenter is not None and len(syn_dirs) > 1:
        from ldmtool.errors import LdmError

        raise LdmError("condition fidelity (--segmenter) judges one --synthetic folder at a time")
    synthetic_dir = syn_dirs[0]
    fig_dir = Path(out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    if segmenter is not None and "condition" not in cfg.only:
        cfg = replace(cfg, only=(*cfg.only, "condition"))
    only = set(cfg.only)
    report: dict = {
        "ldmtool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device),
        "seed": seed,
        "settings": to_dict(cfg),
        "skipped": {},
        "figures": {},
    }
    paths = {"real": real_dir, "synthetic": syn_dirs, "train": train_dir, "test": test_dir}
    cond = _condition_inputs(report, synthetic_dir, real_dir, segmenter, device, seed)
    if only <= {"speed", "condition"}:  # provenance and files in their own grids: no volume set is read
        report["inputs"] = {k: None if v is None else {"path": _path_text(v)} for k, v in paths.items()}
        if "speed" in only:
            _speed(report, syn_dirs)
        if cond is not None:
            with _Stages(console) as st:
                _condition(report, st, synthetic_dir, real_dir, cond)
                report["stage_seconds"] = st.times
        report["seconds"] = round(time.perf_counter() - t_start, 2)
        return report
    with _Stages(console) as st, ExitStack() as scope:
        sets = _read_sets(report, paths, cfg, st)
        real, train, test = sets["real"], sets["train"], sets["test"]
        cfg = _planar(report, cfg, real)
        heldout = _heldout(real, train, test)
        run = _Run(cfg, real, sets["synthetic"], train, test, heldout, device, seed, fig_dir, st, generator)
        if only & {"utility", "robustness"} and _downstream_task(run, class_labels) is not None:
            from ldmtool.evaluate.cases import CaseStore

            # the downstream models' cases are kept as the feature pass reads them (one read per
            # volume); sets too large for memory go to a scratch folder beside the report, removed
            # at the end (see ldmtool.evaluate.cases)
            run.cases = scope.enter_context(CaseStore(fig_dir.parent, stages=st))
            for vs in (_downstream_base(run), run.syn, test):
                run.cases.watch(vs)
        if "utility" in only and cfg.utility_curve and test is not None:
            from ldmtool.evaluate.utility_curve import usable_sizes

            usable_sizes(cfg.utility_curve, len(train if train is not None else real))  # no size fits: fail now
        from ldmtool.evaluate.stream import view_features

        arrays = _features(report, run, feature_extractor)
        feats = {name: view_features(a, cfg.views) for name, a in arrays.items() if f"view:{cfg.views[0]}" in a}
        if only & {"fidelity", "diversity"}:
            _fidelity_diversity(report, run, feats)
        if "fidelity" in only:
            _attributes(report, run, arrays)
        if "speed" in only:
            _speed(report, syn_dirs)
        if "privacy" in only:
            _privacy(report, run, feats, arrays)
        if only & {"utility", "robustness"}:
            _downstream(report, run, class_labels)
        _condition(report, st, synthetic_dir, real_dir, cond)
        from ldmtool.evaluate.figures import montage_png

        montage_png(real, run.syn, fig_dir / "montage.png")
        report["figures"]["montage"] = "figures/montage.png"
        report["stage_seconds"] = st.times
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    return report


def _path_text(path: Path | list[Path]) -> str:
    """A folder, or several as one comma-separated line."""
    return ", ".join(str(p) for p in path) if isinstance(path, list) else str(path)


def _planar(report: dict, cfg: EvaluateConfig, real: VolumeSet) -> EvaluateConfig:
    """2D images (every set brought to the real set's (I, J, 1)) have one view, the image itself:
    their coronal and sagittal "views" would be single rows of pixels, and their one slice would
    be counted `slices_per_view` times."""
    if real.shape[2] != 1 or (tuple(cfg.views) == ("axial",) and cfg.slices_per_view == 1):
        return cfg
    cfg = replace(cfg, views=("axial",), slices_per_view=1)
    report["settings"].update(views=["axial"], slices_per_view=1)
    report["settings"]["note"] = "2D images: features of the image itself (one view, one slice per image)"
    return cfg


def _read_sets(report: dict, paths: dict[str, Path | None], cfg: EvaluateConfig, st: _Stages) -> dict:
    """Open the real set and, brought to its shape, the others that were given (read case by case
    later; a folder named twice is opened once); note them in the report."""
    step = st.stage("opening volume sets", sum(p is not None for p in paths.values()))
    channel = cfg.channel or None
    real = open_volume_set(paths["real"], "real", max_cases=cfg.max_cases, channel=channel)
    step()
    sets: dict[str, VolumeSet | None] = {"real": real}
    opened = {Path(paths["real"]).resolve(): real}
    for name in ("synthetic", "train", "test"):
        if not paths[name]:
            sets[name] = None
            continue
        parts = []
        for folder in paths[name] if isinstance(paths[name], list) else [paths[name]]:
            where = Path(folder).resolve()
            if where in opened:
                parts.append(opened[where].alias(name))
            else:
                parts.append(
                    open_volume_set(
                        folder, name, shape=real.shape, max_cases=cfg.max_cases, spacing=real.spacing, channel=channel
                    )
                )
                opened[where] = parts[-1]
        sets[name] = concat_sets(name, parts)
        step()
    report["inputs"] = {k: _summary_set(v) for k, v in sets.items()}
    if len(paths["synthetic"]) > 1:
        report["inputs"]["synthetic"]["path"] = _path_text(paths["synthetic"])
    if channel is not None:
        report["inputs"]["channel"] = channel
    report["inputs"]["note"] = (
        f"images scaled to [0, 1] per volume (0.5/99.5 percentiles); every volume brought to the "
        f"real set's shape {list(real.shape)} (its per-axis maximum): centre pad/crop on the real set's voxel "
        "size, resized otherwise"
    )
    return sets


def _features(report: dict, run: _Run, feature_extractor: Path | None) -> dict[str, dict[str, np.ndarray]]:
    """Per-case arrays of the sets the selected criteria need, one streaming pass per folder:
    view features, the coarse privacy descriptor ({} when nothing needs them)."""
    from ldmtool.evaluate.features import load_extractor
    from ldmtool.evaluate.nnsearch import coarse_factor
    from ldmtool.evaluate.stream import EmbedSpec, embed_set

    cfg, only = run.cfg, run.only
    need_privacy = "privacy" in only and run.train is not None
    if not (only & {"fidelity", "diversity"} or need_privacy):
        return {}
    extractor = load_extractor(feature_extractor, cfg.image_size)
    report["feature_extractor"] = {
        "name": extractor.name,
        "image_size": cfg.image_size,
        "views": list(cfg.views),
        "slices_per_view": cfg.slices_per_view,
        "note": "numbers are comparable only between reports with the same extractor",
    }
    todo = {"real": run.real, "synthetic": run.syn}
    if need_privacy:
        todo["train"] = run.train
        if run.heldout is not None:
            todo["heldout"] = run.heldout
    factor = coarse_factor(run.real.shape) if need_privacy else None
    names, n_labels = _label_layout(run)
    specs = {
        name: EmbedSpec(
            extractor,
            cfg.views,
            cfg.slices_per_view,
            factor,
            radiomics="fidelity" in only and cfg.radiomics and name in ("real", "synthetic"),
            label_names=names,
            n_labels=n_labels,
        )
        for name in todo
    }
    cache = _feature_cache(run, extractor.name, feature_extractor, coarse_factor(run.real.shape), names)
    distinct = {}  # one pass per folder, computing what any of its names needs
    for name, vs in todo.items():
        prev = distinct.get(vs.key)
        distinct[vs.key] = (vs, specs[name] if prev is None or specs[name].radiomics else prev[1])
    step = run.stages.stage("features", sum(len(v) for v, _ in distinct.values()))
    done: dict[int, dict[str, np.ndarray]] = {}
    for key, (vs, spec) in distinct.items():
        done[key] = embed_set(vs, spec, cache, run.device, on_volume=step)
    report["feature_cache"] = {
        **cache.summary(),
        "note": "per-volume features keyed by the SHA-256 of the volume files and the settings",
    }
    return {name: done[vs.key] for name, vs in todo.items()}


def _label_layout(run: _Run) -> tuple[dict[str, int], int]:
    """Label names and the number of label values (1..n) of the radiomic region attributes."""
    names = run.real.label_names or (run.syn.label_names if run.syn is not None else {})
    return dict(names), int(max(names.values(), default=0))


def _attributes(report: dict, run: _Run, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    """FRD and SaD/PaD of the radiomic attributes of the real and the synthetic set."""
    from ldmtool.evaluate.attributes import attribute_report
    from ldmtool.evaluate.radiomics import attribute_names

    if "radiomics" not in arrays.get("synthetic", {}):
        return
    names, n_labels = _label_layout(run)
    step = run.stages.stage("radiomic attributes (FRD, SaD, PaD)", 1)
    real, syn = arrays["real"]["radiomics"], arrays["synthetic"]["radiomics"]
    report["attributes"] = {
        **attribute_report(attribute_names(names, n_labels), real, syn),
        "real_cases": len(real),
        "synthetic_cases": len(syn),
    }
    step()


def _feature_cache(
    run: _Run, extractor_name: str, extractor_file: Path | None, factor: int | None, label_names: dict[str, int]
):
    """The on-disk per-volume cache (`cfg.cache_dir`; 'none' turns it off) for these settings."""
    from ldmtool.evaluate.cache import FeatureCache, default_cache_dir, files_digest

    cfg = run.cfg
    where = cfg.cache_dir.strip()
    folder = None if where.lower() in ("none", "off") else Path(where) if where else default_cache_dir()
    settings = {
        "shape": list(run.real.shape),
        "spacing": [round(float(x), 4) for x in run.real.spacing],
        "extractor": extractor_name,
        "extractor_file": files_digest([extractor_file]) if extractor_file else None,
        "image_size": cfg.image_size,
        "slices_per_view": cfg.slices_per_view,
        "descriptor_factor": factor,
        "label_names": label_names,
    }
    return FeatureCache(folder, settings)


def _fidelity_diversity(report: dict, run: _Run, feats: dict[str, dict[str, np.ndarray]]) -> None:
    """Improved precision/recall and FID (all views and per view); the diversity measures."""
    from ldmtool.evaluate import fidelity as fd
    from ldmtool.evaluate.features import flatten_views
    from ldmtool.evaluate.figures import precision_recall_png

    cfg = run.cfg
    step = run.stages.stage("fidelity / diversity", len(cfg.views) + 2)
    r_all, s_all = flatten_views(feats["real"]), flatten_views(feats["synthetic"])
    prec, rec = fd.precision_recall(r_all, s_all, cfg.k)
    per_view = {}
    for v in cfg.views:
        r_v = feats["real"][v].reshape(-1, feats["real"][v].shape[-1])
        s_v = feats["synthetic"][v].reshape(-1, feats["synthetic"][v].shape[-1])
        p_v, rc_v = fd.precision_recall(r_v, s_v, cfg.k)
        per_view[v] = {"precision": p_v, "recall": rc_v, "fid": fd.fid(r_v, s_v)}
        step()
    fid_all = fd.fid(r_all, s_all)
    step()
    points = {"real_points": len(r_all), "synthetic_points": len(s_all), "k": cfg.k}
    if "fidelity" in run.only:
        report["fidelity"] = {
            "precision": prec,
            "fid": fid_all,
            "per_view": per_view,
            **points,
            "definition": "improved precision (Kynkäänniemi et al. 2019): share of synthetic view "
            "features inside the k-NN balls of real ones; FID: the Fréchet distance of MONAI's FIDMetric, computed "
            "exactly from the samples",
        }
    precision_recall_png(per_view, (prec, rec), run.fig_dir / "precision_recall.png")
    report["figures"]["precision_recall"] = "figures/precision_recall.png"
    if "diversity" in run.only:
        report["diversity"] = _diversity(run, r_all, s_all, rec, points)
    step()


def _diversity(run: _Run, r_all: np.ndarray, s_all: np.ndarray, recall: float, points: dict) -> dict:
    """Recall, feature MMD and within-set pairwise (MS-)SSIM of the synthetic and the real set."""
    from ldmtool.evaluate import fidelity as fd

    syn, real, seed, device = run.syn, run.real, run.seed, run.device
    return {
        "recall": recall,
        "mmd_linear": fd.mmd(r_all, s_all, seed),
        "pairwise_ssim_synthetic": fd.pairwise_ssim(syn, seed=seed, device=device),
        "pairwise_ssim_real": fd.pairwise_ssim(real, seed=seed, device=device),
        "pairwise_ms_ssim_synthetic": fd.pairwise_ms_ssim(syn, seed=seed, device=device),
        "pairwise_ms_ssim_real": fd.pairwise_ms_ssim(real, seed=seed, device=device),
        **points,
        "definition": "improved recall: share of real view features inside the k-NN balls of synthetic ones; "
        "MMD: MONAI MMDMetric (linear kernel) on features; pairwise (MS-)SSIM: mean 3D SSIM / MS-SSIM of 50 random pairs "
        "within a set (lower = more varied)",
    }


def _condition_inputs(report: dict, synthetic_dir: Path, real_dir: Path, segmenter: Path | None, device, seed: int):
    """(segmenter, label names, found outputs) for the condition stage, checked before any other
    stage runs; None when the stage is not selected or has no segmenter (then listed as skipped)."""
    if "condition" not in report["settings"]["only"]:
        return None
    if segmenter is None:
        report["skipped"]["condition"] = "needs --segmenter SEG (a `train-seg` model with the data's labels)"
        return None
    from ldmtool.evaluate.condition import find_conditioned, segmenter_fn

    found = find_conditioned(synthetic_dir, real_dir)
    segment, names, about = segmenter_fn(segmenter, device, seed)
    return segment, names, about, found


def _condition(report: dict, st: _Stages, synthetic_dir: Path, real_dir: Path, inputs) -> None:
    """Condition fidelity of conditioned outputs (`evaluate.condition`), when selected."""
    if inputs is None:
        return
    from ldmtool.evaluate.condition import condition_fidelity

    segment, names, about, found = inputs
    section = condition_fidelity(synthetic_dir, real_dir, segment, names, st.stage, found)
    report["condition_fidelity"] = {"segmenter": about, **section}


def _speed(report: dict, syn_dirs: list[Path]) -> None:
    """Sampling speed from the synthetic set's provenance sidecars."""
    from ldmtool.evaluate.speed import read_speed

    report["speed"] = read_speed(syn_dirs)
    if not report["speed"]["available"]:
        report["skipped"]["speed"] = report["speed"]["reason"]


def _privacy(report: dict, run: _Run, feats: dict, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    """Max SSIM of synthetic (and held-out real) volumes to the training set, memorisation, suspicious pairs."""
    from ldmtool.evaluate import privacy as pv
    from ldmtool.evaluate.features import volume_embedding
    from ldmtool.evaluate.figures import ssim_histogram_png

    cfg, syn, train, heldout = run.cfg, run.syn, run.train, run.heldout
    if train is None:
        report["skipped"]["privacy"] = "needs --train (the generator's training set)"
        return
    index = _ssim_index(run, arrays["train"]["descriptor"])
    step = run.stages.stage("privacy (max SSIM)", len(syn) + (len(heldout) if heldout is not None else 0))
    s_max, s_arg = _nearest(index, syn, arrays["synthetic"]["descriptor"], step)
    mean, std, q_used = pv.repeated_mean(s_max, cfg.q, cfg.repeats, run.seed)
    priv = {
        "max_ssim_mean": mean,
        "max_ssim_std_over_repeats": std,
        "q": q_used,
        "repeats": cfg.repeats,
        "ssim_window": pv.ssim_window(train.shape),
        "flag_threshold": cfg.flag_ssim,
        "flagged": int((s_max > cfg.flag_ssim).sum()),
        "flagged_share": float((s_max > cfg.flag_ssim).mean()),
        "per_sample": [
            {"synthetic": syn.case_ids[i], "nearest_train": train.case_ids[int(s_arg[i])], "max_ssim": float(s_max[i])}
            for i in range(len(syn))
        ],
        "definition": "for q random synthetic volumes the highest 3D SSIM to any training volume, averaged, "
        "repeated; lower is more private",
    }
    n_queries = len(syn)
    h_max = None
    if heldout is not None:
        h_max, _ = _nearest(index, heldout, arrays["heldout"]["descriptor"], step)
        priv["heldout_max_ssim_mean"] = float(h_max.mean())
        priv["heldout_set"] = heldout.name
        n_queries += len(heldout)
    priv["search"] = _search_summary(run, index, s_arg, s_max, n_queries)
    priv["memorisation"] = pv.memorisation(
        volume_embedding(feats["synthetic"]),
        volume_embedding(feats["train"]),
        volume_embedding(feats["heldout"]) if "heldout" in feats else None,
    )
    if heldout is not None and cfg.audit_steps > 0:
        priv["audit"] = _copy_audit(run, arrays)
    if run.generator is not None:
        priv["membership"] = _membership(run)
    priv["suspicious_pairs"] = _suspicious_pairs(run, s_max, s_arg)
    ssim_histogram_png(s_max, h_max, cfg.flag_ssim, run.fig_dir / "privacy_ssim.png")
    report["figures"]["privacy_ssim"] = "figures/privacy_ssim.png"
    report["privacy"] = priv


def _copy_audit(run: _Run, arrays: dict[str, dict[str, np.ndarray]]) -> dict:
    """Copies in a contrastive embedding trained on the training set (`audit.copy_audit`)."""
    from ldmtool.evaluate import audit

    step = run.stages.stage("memorisation audit (contrastive)", 1)
    enc = audit.train_encoder(arrays["train"]["descriptor"], steps=run.cfg.audit_steps, seed=run.seed)
    res = audit.copy_audit(*(audit.embed(enc, arrays[k]["descriptor"]) for k in ("synthetic", "train", "heldout")))
    step()
    return {
        **{k: v for k, v in res.items() if not k.endswith("_index")},
        "copies_synthetic": [run.syn.case_ids[i] for i in res["copy_index"][:20]],
        "copied_train": [run.train.case_ids[i] for i in res["copied_index"][:20]],
        "encoder_steps": run.cfg.audit_steps,
        "definition": "a synthetic volume is a copy when, in an embedding trained contrastively (SimCLR) on the "
        "training set, it is closer to its nearest training volume than every held-out real volume is "
        "(Dar et al.); training_share_copied: training cases with at least one copy",
    }


def _membership(run: _Run) -> dict:
    """Membership inference on the generator (`audit.membership_inference`)."""
    from ldmtool.evaluate.audit import membership_inference
    from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline

    if run.heldout is None:
        return {"auc": None, "note": "needs held-out real volumes (--test or a --real set distinct from --train)"}
    step = run.stages.stage("membership inference", 1)
    pipe = LatentDiffusionPipeline.from_pretrained(*run.generator, device=run.device)
    res = membership_inference(pipe, run.train.root, run.heldout.root, max_cases=run.cfg.max_cases or 50)
    step()
    return res


def _ssim_index(run: _Run, descriptors: np.ndarray):
    """The two-stage SSIM index over the training set (its volumes read again only as candidates)."""
    from ldmtool.evaluate.nnsearch import SSIMIndex, coarse_factor
    from ldmtool.evaluate.privacy import ssim_window

    cfg, train = run.cfg, run.train
    exhaustive = cfg.nn_candidates == 0
    return SSIMIndex(
        descriptors,
        train.volume,
        ssim_window(train.shape),
        coarse_factor(run.real.shape),
        run.device,
        k=len(train) if exhaustive else cfg.nn_candidates,
        margin=None if exhaustive else cfg.nn_margin,
    )


def _nearest(index, vs: VolumeSet, descriptors: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage highest SSIM to a training volume, and which, for each volume of a set (streamed)."""
    return index.search_all(vs.volume, descriptors, step)


def _search_summary(run: _Run, index, s_arg: np.ndarray, s_max: np.ndarray, n_queries: int) -> dict:
    """How the nearest training volumes were found, and the recall against exhaustive search."""
    cfg = run.cfg
    pairs = index.pairs
    step = run.stages.stage("nearest-neighbour recall check", 1)
    recall = recall_vs_exhaustive(index, run.syn.volume, s_arg, s_max, cfg.nn_recall_check, run.seed)
    step()
    return {
        "method": "exhaustive" if cfg.nn_candidates == 0 else "two-stage",
        "coarse_stage": f"SSIM (window 5) of volumes average-pooled by {index.factor} per axis, every training volume",
        "candidates_max": index.k,
        "margin": index.margin,
        "exact_pairs_per_query": pairs / max(n_queries, 1),
        "recall_vs_exhaustive": recall,
    }


def _suspicious_pairs(run: _Run, s_max: np.ndarray, s_arg: np.ndarray) -> list[dict]:
    """The `cfg.pairs` synthetic volumes closest to a training volume, each drawn beside it as a PNG."""
    from ldmtool.evaluate.figures import pair_png

    syn, train = run.syn, run.train
    pairs = []
    for rank, i in enumerate(np.argsort(-s_max)[: run.cfg.pairs]):
        nearest = int(s_arg[i])
        name = f"privacy_pair_{rank + 1}.png"
        title = f"{syn.case_ids[i]} vs {train.case_ids[nearest]}  SSIM {s_max[i]:.3f}"
        pair_png(syn.volume(int(i)), train.volume(nearest), run.fig_dir / name, title)
        pairs.append(
            {
                "synthetic": syn.case_ids[i],
                "train": train.case_ids[nearest],
                "max_ssim": float(s_max[i]),
                "figure": f"figures/{name}",
            }
        )
    return pairs


def _downstream(report: dict, run: _Run, class_labels: Path | None) -> None:
    """Train the downstream model on real / synthetic / both; test on real test volumes."""
    from ldmtool.evaluate import downstream as ds

    cfg, syn, test = run.cfg, run.syn, run.test
    dcfg = ds.DownstreamConfig(
        channels=cfg.seg_channels,
        steps=cfg.seg_steps,
        batch_size=cfg.seg_batch_size,
        lr=cfg.seg_lr,
        epsilon=cfg.epsilon,
        pgd_steps=cfg.pgd_steps,
        noise_sigma=cfg.noise_sigma,
        deepfool_iters=cfg.deepfool_iters,
        real_share=cfg.real_share,
    )
    base = _downstream_base(run)
    if test is None:
        for c in _downstream_criteria(run):
            report["skipped"][c] = "needs --test (real test volumes with labels)"
        return
    if base.root is not None and test.root is not None and base.root.resolve() == test.root.resolve():
        report.setdefault("warnings", []).append(
            f"the real training set for utility ({base.name}) is the test set: give --train so 'trained on real' "
            "is not tested on its own training data"
        )
    settings = {
        "channels": list(dcfg.channels),
        "steps": dcfg.steps,
        "batch_size": dcfg.batch_size,
        "lr": dcfg.lr,
        "real_share": dcfg.real_share,
        "trained_on_real": base.name,
        "test_set": test.name,
        "n_test": len(test),
    }
    task = _downstream_task(run, class_labels)
    if task is None:
        unlabelled = [v.name for v in (base, syn, test) if not v.has_labels]
        for c in _downstream_criteria(run):
            report["skipped"][c] = (
                f"no label maps in {', '.join(unlabelled)} (for classification: class folders, "
                "`sample --class` outputs, or --class-labels CSV)"
            )
        return
    store = run.cases
    if task == "classification":
        _classification(report, run, dcfg, base, class_labels, settings, store)
    else:
        _segmentation(report, run, dcfg, base, settings, store)
    for key in ("utility", "robustness", "utility_curve"):
        if key in report:
            report[key]["cases_held"] = "memory-mapped files" if store.on_disk else "memory"


def _downstream_base(run: _Run) -> VolumeSet:
    """The real training set of the downstream models: --train, else --real."""
    return run.train if run.train is not None else run.real


def _downstream_task(run: _Run, class_labels: Path | None) -> str | None:
    """ "segmentation" (every set has label maps), "classification" (a class CSV, or sets without
    label maps whose cases all have classes) or None (neither: the downstream criteria are skipped);
    None also without a test set."""
    from ldmtool.evaluate import downstream as ds

    if run.test is None:
        return None
    sets = (_downstream_base(run), run.syn, run.test)
    unlabelled = [v for v in sets if not v.has_labels]
    if class_labels is not None or (unlabelled and ds.has_classes(sets)):
        return "classification"
    return None if unlabelled else "segmentation"


def _downstream_criteria(run: _Run) -> list[str]:
    """The selected criteria that train downstream models (the augmentation curve counts as one)."""
    names = sorted(run.only & {"utility", "robustness"})
    return names + (["utility_curve"] if "utility" in run.only and run.cfg.utility_curve else [])


def _segmentation(report: dict, run: _Run, dcfg, base: VolumeSet, settings: dict, store) -> None:
    """Segmenters trained on real / synthetic / both, scored on the test set clean and perturbed."""
    syn, test = run.syn, run.test
    real_c, syn_c, test_c = store.get(base), store.get(syn), store.get(test)
    n_classes = int(max(max(v.label_names.values(), default=0) for v in (base, syn, test)))
    n_classes = max(n_classes, real_c.max_label(), syn_c.max_label(), test_c.max_label()) + 1
    names = {v: k for k, v in (test.label_names or base.label_names).items()}
    fg = [names.get(c, f"class_{c}") for c in range(1, n_classes)]
    train_sets = {"real": real_c, "synthetic": syn_c, "real+synthetic": real_c + syn_c}
    perturbs = ["clean"] + (["noise", "fgsm", "pgd"] if "robustness" in run.only else [])
    util, rob = {}, {}
    for name, cases in train_sets.items():
        n_real = len(base) if name == "real+synthetic" else None
        scores = _segmenter_scores(run, dcfg, name, cases, test_c, n_classes, fg, perturbs, n_real)
        util[name] = scores["clean"]
        if "robustness" in run.only:
            rob[name] = {p: scores[p] for p in perturbs if p != "clean"}
    if "utility" in run.only:
        report["utility"] = {
            "task": "segmentation",
            "metric": "Dice (3D, per foreground class, mean over test volumes); also IoU and HD95 in voxels (MONAI)",
            "model": "MONAI UNet 2D on axial slices, DiceCE loss",
            **settings,
            "results": util,
        }
    if "robustness" in run.only:
        report["robustness"] = {
            "task": "segmentation",
            "epsilon": dcfg.epsilon,
            "pgd_steps": dcfg.pgd_steps,
            "pgd_step_size": 2.5 * dcfg.epsilon / dcfg.pgd_steps,
            "noise_sigma": dcfg.noise_sigma,
            "note": "white-box L∞ attacks on [0, 1] intensities using the true labels; Gaussian "
            "noise clipped to [0, 1]",
            "clean": util,
            "results": rob,
        }
    _utility_figure(report, run, util, rob, "dice_mean", "mean Dice")
    from ldmtool.evaluate.utility_curve import CurveTask, add_utility_curve

    add_utility_curve(report, run, dcfg, CurveTask("segmentation", real_c, syn_c, test_c, n_classes, fg))


def _segmenter_scores(
    run: _Run,
    dcfg,
    name: str,
    cases,
    test_c,
    n_classes: int,
    fg: list[str],
    perturbs: list[str],
    n_real: int | None = None,
) -> dict[str, dict]:
    """Train one segmenter on `cases`; its Dice (and, unperturbed, IoU and HD95) on the test cases
    per condition. `n_real`: the first n_real cases are real (`DownstreamConfig.real_share`)."""
    from ldmtool.evaluate import downstream as ds

    step = run.stages.stage(f"segmenter on {name}", dcfg.steps + len(perturbs))
    model = ds.train_segmenter(cases, n_classes, dcfg, run.device, run.seed, on_step=step, n_real=n_real)
    scores = {}
    for p in perturbs:
        extra = {} if p == "clean" else None
        d = ds.evaluate_segmenter(model, test_c, n_classes, dcfg, run.device, run.seed, p, extra)
        scores[p] = {"dice_mean": float(np.nanmean(d)), "dice": {c: float(v) for c, v in zip(fg, d)}}
        if extra is not None:
            scores[p]["iou"] = {c: float(v) for c, v in zip(fg, extra["iou"])}
            scores[p]["hd95_voxels"] = {c: float(v) for c, v in zip(fg, extra["hd95"])}
        step()
    return scores


def _classification(
    report: dict, run: _Run, dcfg, base: VolumeSet, class_labels: Path | None, settings: dict, store
) -> None:
    """Classifiers trained on real / synthetic / both, scored clean and perturbed; classes from the
    CSV, else the sets' own (class folders, `sample --class` provenance)."""
    from ldmtool.evaluate import downstream as ds

    syn, test, only = run.syn, run.test, run.only
    table = ds.read_class_csv(class_labels, [base, syn, test])
    classes = sorted({c for v in table.values() for c in v})
    to_int = {c: i for i, c in enumerate(classes)}

    def cases_of(vs):
        return store.get(vs).with_targets([to_int[c] for c in table[vs.name]])

    real_c, syn_c, test_c = cases_of(base), cases_of(syn), cases_of(test)
    train_sets = {"real": real_c, "synthetic": syn_c, "real+synthetic": real_c + syn_c}
    perturbs = ["clean"] + (["noise", "deepfool"] if "robustness" in only else [])
    util, rob = {}, {}
    for name, cases in train_sets.items():
        step = run.stages.stage(f"classifier on {name}", dcfg.steps + len(perturbs))
        n_real = len(base) if name == "real+synthetic" else None
        model = ds.train_classifier(cases, len(classes), dcfg, run.device, run.seed, on_step=step, n_real=n_real)
        scores = {}
        for p in perturbs:
            scores[p] = ds.evaluate_classifier(model, test_c, len(classes), dcfg, run.device, run.seed, p)
            step()
        util[name] = scores["clean"]
        if "robustness" in only:
            rob[name] = {p: scores[p] for p in perturbs if p != "clean"}
    if "utility" in only:
        report["utility"] = {
            "task": "classification",
            "metric": "accuracy",
            "classes": classes,
            "class_source": str(class_labels) if class_labels is not None else "class folders and sample provenance",
            "model": f"MONAI Classifier ({'2D' if base.shape[2] == 1 else '3D'})",
            **settings,
            "results": util,
        }
    if "robustness" in only:
        report["robustness"] = {
            "task": "classification",
            "deepfool_iterations": dcfg.deepfool_iters,
            "noise_sigma": dcfg.noise_sigma,
            "clean": util,
            "results": rob,
        }
    _utility_figure(report, run, util, rob, "accuracy", "accuracy")
    from ldmtool.evaluate.utility_curve import CurveTask, add_utility_curve

    add_utility_curve(report, run, dcfg, CurveTask("classification", real_c, syn_c, test_c, len(classes), classes))


def _utility_figure(report: dict, run: _Run, util: dict, rob: dict, key: str, label: str) -> None:
    """Bar chart of the clean (and perturbed) downstream scores per training source."""
    from ldmtool.evaluate.figures import utility_png

    utility_png(
        {k: v[key] for k, v in util.items()},
        {k: {p: s[key] for p, s in v.items()} for k, v in rob.items()},
        label,
        run.fig_dir / "utility.png",
    )
    report["figures"]["utility"] = "figures/utility.png"
