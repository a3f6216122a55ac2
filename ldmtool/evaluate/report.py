"""`evaluate`: the six-criteria report (fidelity, diversity, speed, utility, robustness, privacy).

`run_evaluation` reads the volume sets, computes the selected criteria stage by stage and returns
one JSON-safe dict: every number next to the settings that produced it. `write_report` turns that
into report.json, report.html (self-contained) and figures/*.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ldmtool import __version__
from ldmtool.config import EvaluateConfig, to_dict
from ldmtool.evaluate.volumes import VolumeSet, load_volume_set


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


def run_evaluation(
    real_dir: Path,
    synthetic_dir: Path,
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
) -> dict:
    """Compute the selected criteria; returns the report dict (also written by `write_report`)."""
    from ldmtool.evaluate import fidelity as fd
    from ldmtool.evaluate import privacy as pv
    from ldmtool.evaluate.features import embed_views, flatten_views, load_extractor, volume_embedding
    from ldmtool.evaluate.speed import read_speed

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
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
    with _Stages(console) as st:
        # 1. volumes
        paths = {"real": real_dir, "synthetic": synthetic_dir, "train": train_dir, "test": test_dir}
        step = st.stage("reading volumes", sum(p is not None for p in paths.values()))
        real = load_volume_set(real_dir, "real", max_cases=cfg.max_cases)
        step()
        sets: dict[str, VolumeSet | None] = {"real": real}
        for name in ("synthetic", "train", "test"):
            sets[name] = (
                load_volume_set(paths[name], name, shape=real.shape, max_cases=cfg.max_cases) if paths[name] else None
            )
            if paths[name]:
                step()
        syn, train, test = sets["synthetic"], sets["train"], sets["test"]
        report["inputs"] = {k: _summary_set(v) for k, v in sets.items()}
        report["inputs"]["note"] = (
            f"images scaled to [0, 1] per volume (0.5/99.5 percentiles); other sets resized "
            f"to the real set's shape {list(real.shape)}"
        )
        heldout = _heldout(real, train, test)

        # 2. features
        feats: dict[str, dict[str, np.ndarray]] = {}
        need_feats = bool(only & {"fidelity", "diversity"}) or ("privacy" in only and train is not None)
        if need_feats:
            extractor = load_extractor(feature_extractor, cfg.image_size)
            report["feature_extractor"] = {
                "name": extractor.name,
                "image_size": cfg.image_size,
                "views": list(cfg.views),
                "slices_per_view": cfg.slices_per_view,
                "note": "numbers are comparable only between reports with the same extractor",
            }
            todo = {"real": real, "synthetic": syn}
            if "privacy" in only and train is not None:
                todo["train"] = train
                if heldout is not None:
                    todo["heldout"] = heldout
            step = st.stage("features", sum(len(v) for v in todo.values()))
            for name, vs in todo.items():
                feats[name] = embed_views(vs.images, extractor, cfg.views, cfg.slices_per_view, device, on_volume=step)

        # 3. fidelity and diversity
        if only & {"fidelity", "diversity"}:
            step = st.stage("fidelity / diversity", len(cfg.views) + 2)
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
            if "fidelity" in only:
                report["fidelity"] = {
                    "precision": prec,
                    "fid": fid_all,
                    "per_view": per_view,
                    **points,
                    "definition": "improved precision (Kynkäänniemi et al. 2019): share of synthetic view "
                    "features inside the k-NN balls of real ones; FID: the Fréchet distance of MONAI's FIDMetric, computed "
                    "exactly from the samples",
                }
            from ldmtool.evaluate.figures import precision_recall_png

            precision_recall_png(per_view, (prec, rec), fig_dir / "precision_recall.png")
            report["figures"]["precision_recall"] = "figures/precision_recall.png"
            if "diversity" in only:
                report["diversity"] = {
                    "recall": rec,
                    "mmd_linear": fd.mmd(r_all, s_all, seed),
                    "pairwise_ssim_synthetic": fd.pairwise_ssim(syn.images, seed=seed, device=device),
                    "pairwise_ssim_real": fd.pairwise_ssim(real.images, seed=seed, device=device),
                    "pairwise_ms_ssim_synthetic": fd.pairwise_ms_ssim(syn.images, seed=seed, device=device),
                    "pairwise_ms_ssim_real": fd.pairwise_ms_ssim(real.images, seed=seed, device=device),
                    **points,
                    "definition": "improved recall: share of real view features inside the k-NN balls of synthetic ones; "
                    "MMD: MONAI MMDMetric (linear kernel) on features; pairwise (MS-)SSIM: mean 3D SSIM / MS-SSIM of 50 random pairs "
                    "within a set (lower = more varied)",
                }
            step()

        # 4. speed
        if "speed" in only:
            report["speed"] = read_speed(synthetic_dir)
            if not report["speed"]["available"]:
                report["skipped"]["speed"] = report["speed"]["reason"]

        # 5. privacy
        if "privacy" in only:
            if train is None:
                report["skipped"]["privacy"] = "needs --train (the generator's training set)"
            else:
                n_ref = len(syn) + (len(heldout) if heldout is not None else 0)
                step = st.stage("privacy (max SSIM)", n_ref)
                s_max, s_arg = pv.max_ssim_to_set(syn.images, train.images, device, on_query=step)
                mean, std, q_used = pv.repeated_mean(s_max, cfg.q, cfg.repeats, seed)
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
                        {
                            "synthetic": syn.case_ids[i],
                            "nearest_train": train.case_ids[int(s_arg[i])],
                            "max_ssim": float(s_max[i]),
                        }
                        for i in range(len(syn))
                    ],
                    "definition": "for q random synthetic volumes the highest 3D SSIM to any training volume, averaged, "
                    "repeated; lower is more private",
                }
                h_max = None
                if heldout is not None:
                    h_max, _ = pv.max_ssim_to_set(heldout.images, train.images, device, on_query=step)
                    priv["heldout_max_ssim_mean"] = float(h_max.mean())
                    priv["heldout_set"] = heldout.name
                priv["memorisation"] = pv.memorisation(
                    volume_embedding(feats["synthetic"]),
                    volume_embedding(feats["train"]),
                    volume_embedding(feats["heldout"]) if "heldout" in feats else None,
                )
                order = np.argsort(-s_max)[: cfg.pairs]
                priv["suspicious_pairs"] = [
                    {"synthetic": syn.case_ids[i], "train": train.case_ids[int(s_arg[i])], "max_ssim": float(s_max[i])}
                    for i in order
                ]
                from ldmtool.evaluate.figures import pair_png, ssim_histogram_png

                for rank, i in enumerate(order):
                    name = f"privacy_pair_{rank + 1}.png"
                    pair_png(
                        syn.images[i],
                        train.images[int(s_arg[i])],
                        fig_dir / name,
                        f"{syn.case_ids[i]} vs {train.case_ids[int(s_arg[i])]}  SSIM {s_max[i]:.3f}",
                    )
                    priv["suspicious_pairs"][rank]["figure"] = f"figures/{name}"
                ssim_histogram_png(s_max, h_max, cfg.flag_ssim, fig_dir / "privacy_ssim.png")
                report["figures"]["privacy_ssim"] = "figures/privacy_ssim.png"
                report["privacy"] = priv

        # 6. utility and robustness
        if only & {"utility", "robustness"}:
            _downstream(report, cfg, real, syn, train, test, class_labels, device, seed, st, fig_dir)

        # 7. montage figure
        from ldmtool.evaluate.figures import montage_png

        montage_png(real, syn, fig_dir / "montage.png")
        report["figures"]["montage"] = "figures/montage.png"
        report["stage_seconds"] = st.times
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    return report


def _downstream(report, cfg, real, syn, train, test, class_labels, device, seed, st, fig_dir) -> None:
    """Train the downstream model on real / synthetic / both; test on real test volumes."""
    from ldmtool.evaluate import downstream as ds

    dcfg = ds.DownstreamConfig(
        channels=cfg.seg_channels,
        steps=cfg.seg_steps,
        batch_size=cfg.seg_batch_size,
        lr=cfg.seg_lr,
        epsilon=cfg.epsilon,
        pgd_steps=cfg.pgd_steps,
        noise_sigma=cfg.noise_sigma,
        deepfool_iters=cfg.deepfool_iters,
    )
    only = set(cfg.only)
    base = train if train is not None else real
    if test is None:
        for c in only & {"utility", "robustness"}:
            report["skipped"][c] = "needs --test (real test volumes with labels)"
        return
    if base.root is not None and test.root is not None and base.root.resolve() == test.root.resolve():
        report.setdefault("warnings", []).append(
            f"the real training set for utility ({base.name}) is the test set: give --train so 'trained on real' "
            "is not tested on its own training data"
        )
    sources = {"real": base, "synthetic": syn}
    settings = {
        "channels": list(dcfg.channels),
        "steps": dcfg.steps,
        "batch_size": dcfg.batch_size,
        "lr": dcfg.lr,
        "trained_on_real": base.name,
        "test_set": test.name,
        "n_test": len(test),
    }
    if class_labels is not None:
        _classification(report, cfg, dcfg, sources, test, class_labels, device, seed, st, settings, fig_dir)
        return
    if any(v.labels is None for v in (base, syn, test)):
        missing = [v.name for v in (base, syn, test) if v.labels is None]
        for c in only & {"utility", "robustness"}:
            report["skipped"][c] = f"no label maps in {', '.join(missing)} (give --class-labels CSV for classification)"
        return
    n_classes = int(max(max(v.label_names.values(), default=0) for v in (base, syn, test)))
    n_classes = max(n_classes, int(max(base.labels.max(), syn.labels.max(), test.labels.max()))) + 1
    names = {v: k for k, v in (test.label_names or base.label_names).items()}
    fg = [names.get(c, f"class_{c}") for c in range(1, n_classes)]
    train_sets = {
        "real": (base.images, base.labels),
        "synthetic": (syn.images, syn.labels),
        "real+synthetic": (np.concatenate([base.images, syn.images]), np.concatenate([base.labels, syn.labels])),
    }
    perturbs = ["clean"] + (["noise", "fgsm", "pgd"] if "robustness" in only else [])
    util, rob = {}, {}
    for name, (x, y) in train_sets.items():
        step = st.stage(f"segmenter on {name}", dcfg.steps + len(perturbs))
        model = ds.train_segmenter(x, y, n_classes, dcfg, device, seed, on_step=step)
        scores = {}
        for p in perturbs:
            extra = {} if p == "clean" else None
            d = ds.evaluate_segmenter(model, test.images, test.labels, n_classes, dcfg, device, seed, p, extra)
            scores[p] = {"dice_mean": float(np.nanmean(d)), "dice": {c: float(v) for c, v in zip(fg, d)}}
            if extra is not None:
                scores[p]["iou"] = {c: float(v) for c, v in zip(fg, extra["iou"])}
                scores[p]["hd95_voxels"] = {c: float(v) for c, v in zip(fg, extra["hd95"])}
            step()
        util[name] = scores["clean"]
        if "robustness" in only:
            rob[name] = {p: scores[p] for p in perturbs if p != "clean"}
    if "utility" in only:
        report["utility"] = {
            "task": "segmentation",
            "metric": "Dice (3D, per foreground class, mean over test volumes); also IoU and HD95 in voxels (MONAI)",
            "model": "MONAI UNet 2D on axial slices, DiceCE loss",
            **settings,
            "results": util,
        }
    if "robustness" in only:
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
    from ldmtool.evaluate.figures import utility_png

    utility_png(
        {k: v["dice_mean"] for k, v in util.items()},
        {k: {p: s["dice_mean"] for p, s in v.items()} for k, v in rob.items()},
        "mean Dice",
        fig_dir / "utility.png",
    )
    report["figures"]["utility"] = "figures/utility.png"


def _classification(report, cfg, dcfg, sources, test, class_labels, device, seed, st, settings, fig_dir) -> None:
    from ldmtool.evaluate import downstream as ds

    only = set(cfg.only)
    table = ds.read_class_csv(class_labels, [sources["real"], sources["synthetic"], test])
    classes = sorted({c for v in table.values() for c in v})
    to_int = {c: i for i, c in enumerate(classes)}

    def cls_of(vs):
        return np.array([to_int[c] for c in table[vs.name]])

    train_sets = {
        "real": (sources["real"].images, cls_of(sources["real"])),
        "synthetic": (sources["synthetic"].images, cls_of(sources["synthetic"])),
        "real+synthetic": (
            np.concatenate([sources["real"].images, sources["synthetic"].images]),
            np.concatenate([cls_of(sources["real"]), cls_of(sources["synthetic"])]),
        ),
    }
    perturbs = ["clean"] + (["noise", "deepfool"] if "robustness" in only else [])
    util, rob = {}, {}
    y_test = cls_of(test)
    for name, (x, y) in train_sets.items():
        step = st.stage(f"classifier on {name}", dcfg.steps + len(perturbs))
        model = ds.train_classifier(x, y, len(classes), dcfg, device, seed, on_step=step)
        scores = {}
        for p in perturbs:
            scores[p] = ds.evaluate_classifier(model, test.images, y_test, len(classes), dcfg, device, seed, p)
            step()
        util[name] = scores["clean"]
        if "robustness" in only:
            rob[name] = {p: scores[p] for p in perturbs if p != "clean"}
    if "utility" in only:
        report["utility"] = {
            "task": "classification",
            "metric": "accuracy",
            "classes": classes,
            "model": "MONAI Classifier (3D)",
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
    from ldmtool.evaluate.figures import utility_png

    utility_png(
        {k: v["accuracy"] for k, v in util.items()},
        {k: {p: s["accuracy"] for p, s in v.items()} for k, v in rob.items()},
        "accuracy",
        fig_dir / "utility.png",
    )
    report["figures"]["utility"] = "figures/utility.png"
