"""ldmtool on real multi-subject MR: brain generation, hippocampus segmentation, the augmentation
curve, and imputation — every step run through the `ldmtool` commands a user would type.

    python benchmarks/real_data.py                                 # all parts, CPU budgets below
    python benchmarks/real_data.py --only hippo-seg --seg-minutes 3  # a quick look
    python benchmarks/real_data.py --device cuda --ixi-spacing 2     # on a GPU, brains at 2 mm

Data: `../shared/data` beside the repository (or --data DIR) with `ixi_t1_2mm/` (148 IXI brain T1,
2 mm, DLMUSE parcellations: label > 0 = brain) and `msd_hippocampus/` (208 MSD Task04 crops with
manual anterior/posterior labels). Without them the script says so and exits 0. Splits are fixed
(a seeded permutation of the sorted case ids, --split-seed) and printed; nothing is tuned to them.

Parts (--only, comma-separated):
  ixi        train-ae + train-ldm on 100 IXI brains (--ixi-ae-minutes + --ixi-ldm-minutes of wall
             time; --ixi-config, by default examples/ixi_cpu.yaml at 4 mm and examples/ixi_gpu.yaml
             at 2 mm), `sample` --ixi-samples brains, `evaluate` them against the 48 held-out brains
             (precision, recall, FID, per view) beside the real-vs-real floor (as many real
             training brains as samples, against the same held-out brains), privacy (nearest-
             training SSIM of samples vs of held-out brains) and slice-to-slice coherence per view
             (mean |difference| of neighbouring slices along each axis, samples / real).
             Then a half-width guide denoiser (--ixi-guide-minutes, default 5; 0: off) and the
             same seeds sampled with autoguidance at each of --ixi-guidance (default 2), scored alike.
  impute     with the ixi part's models: held-out brains with every other axial slice missing,
             and with 50 % of voxels missing at random (MCAR), filled by `ldmtool impute` (latent
             self-guidance from noise, and from the interpolated volume noised to each of
             --impute-strengths: `--init interpolation --strength S`, one draw or the mean of
             each of --impute-samples draws) vs linear and cubic
             interpolation between slices, and vs Gaussian normalised convolution (MCAR); PSNR and
             SSIM on the missing voxels inside the brain. About 6 CPU-minutes per brain at the
             defaults (--impute-samples 1,16: the 16 draws take most of it).
  age        train-ae (brain tissue and ventricles as two classes) + train-ldm conditioned on age
             (`--condition-on age --covariates meta/participants.csv`) on the same 100 brains
             (--age-ae-minutes + --age-ldm-minutes), `sample --condition age=A` --age-samples
             brains per age in --age-values; brain fraction of the head (brain tissue voxels over
             an intensity head mask) and ventricle volume (ml) measured the same way on the
             samples' generated labels and on all real brains' labels (as the generator saw them);
             the synthetic age slope (difference of the group means over the age difference, its
             bootstrap interval) against the real least-squares slope and its 95 % interval;
             per classifier-free guidance scale in --age-guidance (default 1). --age-ae and
             --age-ldm reuse trained models.
  hippo-seg  `train-seg` LDSeg and the UNet baseline for the same wall time (--seg-minutes each)
             on 160 hippocampus cases; `segment` the 48 held-out cases; Dice per class and HD95 (mm).
  augment    for N in --aug-sizes and each generator of --aug-modes (train-ae + train-ldm,
             --aug-gen-minutes each, or --aug-gen-steps: the same training on any machine) on N
             real training cases (nested subsets): max(--aug-ratios)·N
             image+label pairs, sampled jointly from noise (joint) or generated from seeded
             elastic/affine deformations of the N real label maps by a mask-to-image model
             (labels: `train-ldm --condition-on labels`, `sample --labels --deform --undeformed`;
             --aug-undeformed-share of the images follow the real maps themselves, default half;
             with the config's label detail, labels:K with `--label-detail K`, e.g. labels:1 for class
             fractions; the generators of one N share one autoencoder),
             then `evaluate --only utility --utility-curve N` (--aug-seeds seeds): downstream
             segmenters on the N real cases alone, with r·N synthetic, and synthetic only, tested
             on the 48 held-out cases; once per --aug-real-shares value (`evaluate --real-share`:
             the share of each mixed batch taken from the real cases; 0 = in proportion).
             --aug-reuse with --work W evaluates the synthetic cases an earlier run left in W again.
             With --aug-ae-ceiling (default): the downstream segmenters also trained on the
             generator's autoencoder's reconstructions of the N real cases alone, the ceiling of
             "synthetic only" through that autoencoder.

CPU budgets: the wall-clock minutes above bound every training; sampling, segmenting and the
downstream segmenters add to them (the per-part seconds are printed). The run prints markdown
tables (kept by benchmarks/_results.py, stamped with commit, date, machine and command), copies
the montages next to the results file and keeps everything it wrote under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import recorded, save_figure  # noqa: E402

PARTS = ("ixi", "impute", "age", "hippo-seg", "augment")


# ---------------------------------------------------------------- plumbing


class Runner:
    """Runs `ldmtool` commands as a user would (a child process), logging each to the work folder."""

    def __init__(self, work: Path, device: str, seed: int, log: str = "commands.log") -> None:
        self.work, self.device, self.seed = work, device, seed
        self.log = work / log

    def __call__(self, *args, seed: int | None = None) -> float:
        cmd = [
            sys.executable,
            "-m",
            "ldmtool",
            "--device",
            self.device,
            "--seed",
            str(self.seed if seed is None else seed),
        ]
        cmd += [str(a) for a in args]
        t0 = time.perf_counter()
        with self.log.open("a") as fh:
            fh.write("$ ldmtool " + " ".join(cmd[3:]) + "\n")
            fh.flush()
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = self.log.read_text().splitlines()[-15:]
            raise SystemExit(
                f"ldmtool {args[0]} failed (exit {proc.returncode}); last lines of {self.log}:\n" + "\n".join(tail)
            )
        print(f"  ldmtool {args[0]}: {seconds:.0f} s", flush=True)
        return seconds


def cases_of(folder: Path) -> list[str]:
    """Sorted case ids of an nnU-Net folder (imagesTr/CASE_0000.nii.gz)."""
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTr").glob("*_0000.nii.gz"))


def split(ids: list[str], n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """A fixed split: a seeded permutation of the sorted ids; the first n_test are held out."""
    perm = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    return perm[n_test:], perm[:n_test]


def link_subset(src: Path, dst: Path, ids: list[str]) -> Path:
    """An nnU-Net folder at dst whose images/labels are links to src's cases `ids` (no copies)."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for c in ids:
        for link, target in ((dst / "imagesTr" / f"{c}_0000.nii.gz", src / "imagesTr" / f"{c}_0000.nii.gz"),
                             (dst / "labelsTr" / f"{c}.nii.gz", src / "labelsTr" / f"{c}.nii.gz")):  # fmt: skip
            if not target.exists():
                continue
            if link.is_symlink() and link.resolve() == target.resolve():  # a kept work folder, run again
                continue
            link.symlink_to(target.resolve())
    if (src / "dataset.json").exists():
        shutil.copy(src / "dataset.json", dst / "dataset.json")
    return dst


def save_png(src: Path, tag: str) -> str:
    """Copy a montage next to the results files; returns its path relative to the repository."""
    return save_figure(src, f"real_data-{tag}")


def fmt(x, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


# ---------------------------------------------------------------- IXI brains


def block_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """The affine of a grid whose voxels are factor³ blocks of `affine`'s voxels: each new voxel's
    centre is its block's centre (half a block from the first voxel's centre)."""
    return affine @ np.array(
        [
            [factor, 0, 0, (factor - 1) / 2],
            [0, factor, 0, (factor - 1) / 2],
            [0, 0, factor, (factor - 1) / 2],
            [0, 0, 0, 1.0],
        ]
    )


def block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """Means over factor³ blocks of a 3D array (trailing voxels that fill no whole block dropped)."""
    s = [d // factor * factor for d in a.shape]
    a = a[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // factor, factor, s[1] // factor, factor, s[2] // factor, factor).mean(axis=(1, 3, 5))


def brains_at(src: Path, dst: Path, ids: list[str], factor: int) -> Path:
    """IXI cases reoriented to RAS (as ldmtool's preprocessing does) and averaged over factor³
    blocks (2 mm → 4 mm exactly for factor 2); labels become brain (label > 0, majority of the
    block). The real sets that samples are compared with, on the samples' voxel grid."""
    import nibabel as nib

    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)

    for c in ids:
        img = nib.as_closest_canonical(nib.load(src / "imagesTr" / f"{c}_0000.nii.gz"))
        lab = nib.as_closest_canonical(nib.load(src / "labelsTr" / f"{c}.nii.gz"))
        affine = block_affine(img.affine, factor)
        image = block_mean(np.asarray(img.dataobj, dtype=np.float32), factor)
        brain = (block_mean((np.asarray(lab.dataobj) > 0).astype(np.float32), factor) > 0.5).astype(np.uint8)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), dst / "imagesTr" / f"{c}_0000.nii.gz")
        nib.save(nib.Nifti1Image(brain, affine), dst / "labelsTr" / f"{c}.nii.gz")
    (dst / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "brain": 1}, "file_ending": ".nii.gz"}))
    return dst


def coherence_per_view(syn_dir: Path, real_dir: Path) -> dict[str, dict[str, float]]:
    """Mean |difference| between neighbouring slices along each array axis (RAS: I = sagittal,
    J = coronal, K = axial slices), samples and real, both on the real set's grid in [0, 1]."""
    from ldmtool.evaluate.volumes import load_volume_set

    real = load_volume_set(real_dir, "real")
    syn = load_volume_set(syn_dir, "synthetic", shape=real.shape, spacing=real.spacing)
    out = {}
    for axis, view in (
        (1, "across sagittal slices (I)"),
        (2, "across coronal slices (J)"),
        (3, "across axial slices (K)"),
    ):
        r = float(np.abs(np.diff(real.images, axis=axis)).mean())
        s = float(np.abs(np.diff(syn.images, axis=axis)).mean())
        out[view] = {"real": r, "synthetic": s, "ratio": s / r}
    return out


def anatomy_measures(folder: Path, real_dir: Path) -> dict[str, float]:
    """Whole-head measures of a set on the real set's grid, [0, 1] intensities: head fraction of the
    volume (`head_mask`: mean and spread across volumes: how varied head size and field of view
    are), the spread of head centroids (voxels, mean over the axes) and in-plane detail (mean
    |Laplacian| of axial slices inside the head, two voxels in from its edge)."""
    from scipy import ndimage

    from ldmtool.evaluate.volumes import load_volume_set

    real = load_volume_set(real_dir, "real")
    vols = (
        real
        if Path(folder) == Path(real_dir)
        else load_volume_set(folder, "set", shape=real.shape, spacing=real.spacing)
    )
    frac, cent, detail = [], [], []
    for v in vols.images:
        m = head_mask(v)
        frac.append(float(m.mean()))
        cent.append(np.array(np.nonzero(m), dtype=np.float64).mean(1))
        lap = np.abs(4 * v[1:-1, 1:-1] - v[:-2, 1:-1] - v[2:, 1:-1] - v[1:-1, :-2] - v[1:-1, 2:])  # in-plane (I, J)
        inner = ndimage.binary_erosion(m, iterations=2)[1:-1, 1:-1]  # inside the head, not its edge with the air
        detail.append(float(lap[inner].mean()))
    return {
        "head_fraction": float(np.mean(frac)),
        "head_fraction_sd": float(np.std(frac)),
        "centroid_sd": float(np.std(np.stack(cent), axis=0).mean()),
        "detail": float(np.mean(detail)),
    }


def ae_reconstructions(ae_dir: Path, src: Path, dst: Path, device: str = "cpu") -> Path:
    """Every case of `src` encoded and decoded by the autoencoder of `ae_dir` (its own preprocessing,
    posterior mean), written as NIfTI in the preprocessed grid. Scored against the held-out brains
    like samples, they are the autoencoder's ceiling: what a perfect latent denoiser would reach.
    In-process (no ldmtool command writes reconstructions); uses ldmtool's own encode/decode."""
    import nibabel as nib
    import torch

    from ldmtool.data.prepared import prepare_dataset, slices_to_volume
    from ldmtool.diffusion.pipeline import decode_latents, encode_volume
    from ldmtool.models.loaders import load_autoencoder
    from ldmtool.runtime import resolve_device

    ae, cfg = load_autoencoder(ae_dir / "model.safetensors", resolve_device(device))
    ae.eval()
    data = prepare_dataset(src, cfg.preprocess, shapes="pad")
    (dst / "imagesTr").mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for i, case in enumerate(data.case_ids):
            label = data.labels[i] if ae.cfg.label_input and data.labels is not None else None  # AEs that encode it
            image, _ = decode_latents(ae, encode_volume(ae, data.images[i], label)[None])
            vol = slices_to_volume(image[0].numpy()).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, data.affines[i]), dst / "imagesTr" / f"{case}_0000.nii.gz")
    return dst


def reconstructions_in_source_grid(ae_dir: Path, src: Path, dst: Path, device: str = "cpu") -> Path:
    """`ae_reconstructions` of every case of `src`, each brought back into its own case's grid
    (`nibabel.processing.resample_from_to`: the preprocessed grid's shifted affine makes a pad undone
    an exact crop), with the case's label map and dataset.json beside it: a labelled nnU-Net folder
    that reads like the real one, its images replaced by what the autoencoder makes of them."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    model_grid = ae_reconstructions(ae_dir, src, dst.with_name(dst.name + "-model-grid"), device)
    (dst / "imagesTr").mkdir(parents=True, exist_ok=True)
    for case in cases_of(src):
        name = f"{case}_0000.nii.gz"
        ref = nib.load(src / "imagesTr" / name)
        nib.save(resample_from_to(nib.load(model_grid / "imagesTr" / name), ref, order=1), dst / "imagesTr" / name)
        label = src / "labelsTr" / f"{case}.nii.gz"
        if label.exists():
            (dst / "labelsTr").mkdir(exist_ok=True)
            shutil.copy(label, dst / "labelsTr" / label.name)
    if (src / "dataset.json").exists():
        shutil.copy(src / "dataset.json", dst / "dataset.json")
    return dst


def ldm_steps(ldm: Path) -> int | None:
    """Optimisation steps of the latent denoiser a train-ldm output holds."""
    return (json.loads((ldm / "config.json").read_text()).get("metrics") or {}).get("step")


def ixi_part(args, run: Runner, work: Path) -> dict:
    src = args.data / "ixi_t1_2mm"
    train_ids, test_ids = split(cases_of(src), 48, args.split_seed)
    factor = int(round(args.ixi_spacing / 2))
    print(
        f"\n## IXI brains: {len(train_ids)} train / {len(test_ids)} held out (split seed {args.split_seed}), {args.ixi_spacing:g} mm",
        flush=True,
    )
    train = link_subset(src, work / "train", train_ids)
    t = {}

    def real_sets() -> tuple[Path, Path, Path]:
        """The real brains on the samples' grid, and the real-vs-real floor (model-free)."""
        real_train = brains_at(src, work / "train_eval", train_ids, factor)
        heldout = brains_at(src, work / "heldout_eval", test_ids, factor)
        floor_set = link_subset(real_train, work / "floor_set", train_ids[: args.ixi_samples])
        floor_run = Runner(work, args.device, args.seed, log="commands-floor.log")
        t["evaluate floor"] = floor_run(
            "evaluate", "--only", "fidelity,diversity", "--real", heldout, "--synthetic", floor_set,
            "--out", work / "report_floor",
        )  # fmt: skip
        return real_train, heldout, floor_set

    # On a GPU the CPU-side preparation of the real sets and the floor's evaluation run beside the
    # training (which leaves CPU cores and most of the GPU idle); on a CPU they run first, so that
    # they take no cores from the wall-clock training budgets.
    pool = ThreadPoolExecutor(1)
    prepared = pool.submit(real_sets)
    from ldmtool.runtime import resolve_device

    if resolve_device(args.device).type == "cpu":
        prepared.result()
    cfg = args.ixi_config
    sp = ",".join([f"{args.ixi_spacing:g}"] * 3)
    ae, ldm, samples = work / "ae", work / "ldm", work / "samples"
    if args.ixi_ae:  # an autoencoder trained earlier (same data split and config), e.g. on a GPU
        shutil.copytree(args.ixi_ae, ae)
        print(f"  autoencoder: {args.ixi_ae} (not trained in this run)", flush=True)
    else:
        t["train-ae"] = run(
            "train-ae",
            train,
            "--out",
            ae,
            "--config",
            cfg,
            "--spacing",
            sp,
            "--labels",
            "brain=1-255",
            "--max-minutes",
            args.ixi_ae_minutes,
        )
    if args.ixi_ldm:  # a denoiser trained earlier on that autoencoder
        shutil.copytree(args.ixi_ldm, ldm)
        print(f"  latent denoiser: {args.ixi_ldm} (not trained in this run)", flush=True)
    else:
        t["train-ldm"] = run(
            "train-ldm", train, "--ae", ae, "--out", ldm, "--config", cfg, "--max-minutes", args.ixi_ldm_minutes
        )
    t["sample"] = run("sample", "--ae", ae, "--ldm", ldm, "--out", samples, "--n", args.ixi_samples, "--config", cfg)
    real_train, heldout, _ = prepared.result()
    pool.shutdown()
    common = ["--only", "fidelity,diversity,privacy", "--real", heldout, "--train", real_train]
    t["evaluate"] = run("evaluate", *common, "--synthetic", samples, "--out", work / "report")
    against_heldout = ["evaluate", "--only", "fidelity,diversity", "--real", heldout, "--synthetic"]
    recon = ae_reconstructions(
        ae,
        link_subset(src, work / "recon_input", train_ids[: args.ixi_samples]),
        work / "recon",
        args.device,
    )
    t["evaluate autoencoder ceiling"] = run(*against_heldout, recon, "--out", work / "report_recon")
    rep = json.loads((work / "report" / "report.json").read_text())
    floor = json.loads((work / "report_floor" / "report.json").read_text())
    ceiling = json.loads((work / "report_recon" / "report.json").read_text())
    guided = ixi_autoguidance(args, run, work, train, (ae, ldm), (heldout, real_train), t)
    return {
        "autoguidance": guided,
        "split": {"train": train_ids, "heldout": test_ids},
        "seconds": t,
        "samples": rep,
        "floor": floor,
        "ceiling": ceiling,
        "coherence": coherence_per_view(samples, heldout),
        "anatomy": {
            name: anatomy_measures(d, heldout)
            for name, d in (("real", heldout), ("ceiling", recon), ("samples", samples))
        },
        "ldm_steps": ldm_steps(ldm),
        "montages": {
            "samples": save_png(samples / "montage.png", "ixi-samples"),
            "evaluate": save_png(work / "report" / "figures" / "montage.png", "ixi-vs-real"),
        },
    }


def ixi_autoguidance(args, run: Runner, work: Path, train: Path, models, real, t: dict) -> dict:
    """With `--ixi-guide-minutes`: a smaller denoiser (half the channels) trained that long on the same
    autoencoder and brains, and the samples of the main denoiser guided away from it
    (`sample --guide-ldm --guidance G`, autoguidance) at every `--ixi-guidance` G, each scored like
    the unguided ones (same seeds)."""
    if not args.ixi_guide_minutes:
        return {}
    (ae, ldm), (heldout, real_train) = models, real
    guide = work / "ldm_guide"
    channels = ",".join(str(max(8, c // 2)) for c in ixi_denoiser_channels(args.ixi_config))
    t["train-ldm guide"] = run(
        "train-ldm", train, "--ae", ae, "--out", guide, "--config", args.ixi_config,
        "--channels", channels, "--max-minutes", args.ixi_guide_minutes,
    )  # fmt: skip
    out = {"channels": channels, "steps": ldm_steps(guide)}
    for g in args.ixi_guidance:
        samples = work / f"samples-guided{g:g}"
        t[f"sample guided {g:g}"] = run(
            "sample", "--ae", ae, "--ldm", ldm, "--guide-ldm", guide, "--guidance", g,
            "--out", samples, "--n", args.ixi_samples, "--config", args.ixi_config,
        )  # fmt: skip
        report = work / f"report-guided{g:g}"
        t[f"evaluate guided {g:g}"] = run(
            "evaluate", "--only", "fidelity,diversity,privacy", "--real", heldout, "--train", real_train,
            "--synthetic", samples, "--out", report,
        )  # fmt: skip
        out[f"{g:g}"] = {
            "report": json.loads((report / "report.json").read_text()),
            "coherence": coherence_per_view(samples, heldout),
            "anatomy": anatomy_measures(samples, heldout),
            "montage": save_png(report / "figures" / "montage.png", f"ixi-vs-real-guided{g:g}"),
        }
    return out


def ixi_denoiser_channels(config: Path) -> list[int]:
    """The denoiser's channels in an ldmtool config (the package default where it sets none)."""
    from ldmtool.config import DenoiserConfig, from_dict, load_yaml

    return list(from_dict(DenoiserConfig, load_yaml(config).get("denoiser") or {}, "denoiser").channels)


def ixi_guided_report(res: dict, args) -> None:
    """The autoguidance rows beside the unguided samples (`ixi_autoguidance`)."""
    guided = res.get("autoguidance") or {}
    if not guided:
        return
    s, f = res["samples"], res["floor"]
    print(
        f"\nautoguidance: guide = the same recipe with channels {guided['channels']}, "
        f"{args.ixi_guide_minutes:g} min ({guided['steps']} steps); same seeds\n"
    )
    print("| samples | precision | recall | FID | pairwise SSIM / real | privacy: nearest-training SSIM |")
    print("|---|---|---|---|---|---|")

    def row(name: str, rep: dict) -> str:
        d, p = rep["diversity"], rep["privacy"]
        ratio = d["pairwise_ssim_synthetic"] / d["pairwise_ssim_real"] if d["pairwise_ssim_real"] else float("nan")
        return (
            f"| {name} | {fmt(rep['fidelity']['precision'])} | {fmt(d['recall'])} | {fmt(rep['fidelity']['fid'], 1)} "
            f"| {fmt(ratio, 2)} | {fmt(p['max_ssim_mean'])} (held-out {fmt(p.get('heldout_max_ssim_mean'))}) |"
        )

    print(row("unguided", s))
    for g in args.ixi_guidance:
        print(row(f"guidance {g:g}", guided[f"{g:g}"]["report"]))
    print(
        f"| real-vs-real floor | {fmt(f['fidelity']['precision'])} | {fmt(f['diversity']['recall'])} "
        f"| {fmt(f['fidelity']['fid'], 1)} | 1 | |"
    )
    for g in args.ixi_guidance:
        print(f"\nguidance {g:g}: montage {guided[f'{g:g}']['montage']}; whole-head anatomy:\n")
        print(anatomy_table({"real": res["anatomy"]["real"], "samples": guided[f"{g:g}"]["anatomy"]}))


def ixi_report(res: dict, args) -> None:
    s, f, c = res["samples"], res["floor"], res["ceiling"]
    print(
        f"\n### IXI generation ({args.ixi_samples} samples vs {len(res['split']['heldout'])} held-out brains, {args.ixi_spacing:g} mm)\n"
    )
    print(
        f"autoencoder ceiling: the autoencoder's reconstructions of {args.ixi_samples} training brains, scored like samples "
        "(what a perfect latent denoiser would reach)\n"
    )
    print("| measure | samples | autoencoder ceiling | real-vs-real floor | samples / floor | target |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("precision", ("fidelity", "precision"), "≥ 0.8× floor"),
        ("recall", ("diversity", "recall"), "≥ 0.8× floor"),
        ("FID", ("fidelity", "fid"), "≤ 2× floor"),
    ]
    for name, (sec, key), target in rows:
        a, b = s[sec][key], f[sec][key]
        print(
            f"| {name} | {fmt(a)} | {fmt(c[sec][key])} | {fmt(b)} | {fmt(a / b if b else float('nan'), 2)} | {target} |"
        )
    a, b = s["diversity"]["pairwise_ssim_synthetic"], s["diversity"]["pairwise_ssim_real"]
    print(
        f"| pairwise SSIM within set | {fmt(a)} | {fmt(c['diversity']['pairwise_ssim_synthetic'])} | {fmt(b)} "
        f"| {fmt(a / b if b else float('nan'), 2)} | ≈ 1× |"
    )
    print("\nper view (samples / autoencoder ceiling / floor):\n")
    print("| view | precision | recall | FID |")
    print("|---|---|---|---|")
    for view, v in s["fidelity"]["per_view"].items():
        fv, cv = f["fidelity"]["per_view"].get(view, {}), c["fidelity"]["per_view"].get(view, {})
        print(
            f"| {view} | {fmt(v.get('precision'))} / {fmt(cv.get('precision'))} / {fmt(fv.get('precision'))} "
            f"| {fmt(v.get('recall'))} / {fmt(cv.get('recall'))} / {fmt(fv.get('recall'))} "
            f"| {fmt(v.get('fid'), 1)} / {fmt(cv.get('fid'), 1)} / {fmt(fv.get('fid'), 1)} |"
        )
    p = s["privacy"]
    print(
        f"\nprivacy: nearest-training 3D SSIM, samples {fmt(p['max_ssim_mean'])} (max {fmt(max(x['max_ssim'] for x in p['per_sample']))}) "
        f"vs held-out real brains {fmt(p.get('heldout_max_ssim_mean'))}; flagged above {p['flag_threshold']}: {p['flagged']}"
    )
    print("\nslice-to-slice coherence (mean |Δ| between neighbouring slices, [0, 1] intensities):\n")
    print("| direction | real | samples | samples / real |")
    print("|---|---|---|---|")
    for view, v in res["coherence"].items():
        print(f"| {view} | {v['real']:.4f} | {v['synthetic']:.4f} | {v['ratio']:.2f} |")
    print(
        "\nwhole-head anatomy (head_mask of [0, 1] volumes on the held-out grid; detail: mean |in-plane Laplacian| inside the head):\n"
    )
    print(anatomy_table(res["anatomy"]))
    print(f"\nconfig: {args.ixi_config}; LDM steps: {res['ldm_steps']}")
    print(f"seconds: {json.dumps({k: round(v) for k, v in res['seconds'].items()})}")
    print(f"montages: {res['montages']['samples']}, {res['montages']['evaluate']}")
    ixi_guided_report(res, args)


def anatomy_table(anatomy: dict[str, dict[str, float]]) -> str:
    """The markdown table of `anatomy_measures` for held-out brains, the autoencoder ceiling and samples."""
    rows = [
        "| set | head fraction | its sd across volumes | head centroid sd (voxels) | in-plane detail |",
        "|---|---|---|---|---|",
    ]
    names = {"real": "held-out real brains", "ceiling": "autoencoder reconstructions", "samples": "samples"}
    for key, label in names.items():
        if key in anatomy:
            a = anatomy[key]
            rows.append(
                f"| {label} | {a['head_fraction']:.3f} | {a['head_fraction_sd']:.3f} | {a['centroid_sd']:.2f} | {a['detail']:.4f} |"
            )
    return "\n".join(rows)


# ---------------------------------------------------------------- age conditioning

# DLMUSE region ids (Neuromorphometrics numbering): 4 third ventricle, 11 fourth ventricle,
# 49/50 inferior lateral ventricles, 51/52 lateral ventricles; every other id > 0 is brain tissue.
AGE_LABELS = "brain=1-3,5-10,12-48,53-1000;ventricles=4,11,49-52"


def head_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The head: voxels above `threshold` of the robust [0, 1] range, closed, holes filled, the
    largest connected part. The same rule for real and synthetic volumes."""
    from scipy import ndimage

    from ldmtool.evaluate.volumes import normalise01

    m = ndimage.binary_fill_holes(ndimage.binary_closing(normalise01(image) > threshold, iterations=2))
    parts, n = ndimage.label(m)
    if n > 1:
        sizes = ndimage.sum(m, parts, range(1, n + 1))
        m = parts == 1 + int(np.argmax(sizes))
    return m


def age_measures(image: np.ndarray, label: np.ndarray, names: dict, voxel_ml: float) -> dict[str, float]:
    """Brain fraction of the head and ventricle volume (ml) of one volume and its label map."""
    head = head_mask(image)
    brain = (label == names["brain"]) & head
    return {
        "brain_fraction": float(brain.sum() / max(head.sum(), 1)),
        "ventricles_ml": float((label == names["ventricles"]).sum() * voxel_ml),
    }


def real_age_table(src: Path, ae: Path, participants: Path) -> list[dict]:
    """Every real brain with an age, preprocessed as the generator's training data were
    (orientation, spacing, shape, label merging of the autoencoder's settings), measured."""
    import csv

    from ldmtool.data.prepared import prepare_dataset, slices_to_volume
    from ldmtool.data.preprocess import PreprocessConfig

    pre = PreprocessConfig.from_dict(json.loads((ae / "config.json").read_text())["preprocess"])
    data = prepare_dataset(src, pre)
    ages = {r["MRID"]: r["Age"] for r in csv.DictReader(participants.open())}
    voxel_ml = float(np.prod(pre.spacing)) / 1000.0
    rows = []
    for i, case in enumerate(data.case_ids):
        if not ages.get(case):
            continue
        image = slices_to_volume(data.images[i].numpy())
        label = slices_to_volume(data.labels[i].numpy())
        rows.append({"case": case, "age": float(ages[case]), **age_measures(image, label, data.label_names, voxel_ml)})
    return rows


def synthetic_age_table(folder: Path, age: float) -> list[dict]:
    """The samples of one requested age, measured on their generated label maps."""
    import nibabel as nib

    names = json.loads((folder / "dataset.json").read_text())["labels"]
    rows = []
    for f in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
        img = nib.load(f)
        lab = np.asarray(nib.load(folder / "labelsTr" / f.name.replace("_0000.nii.gz", ".nii.gz")).dataobj)
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        rows.append({"case": f.name, "age": age, **age_measures(img.get_fdata(dtype=np.float32), lab, names, voxel_ml)})
    return rows


def real_slope(ages: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """Least-squares slope per year with its 95 % interval (t distribution)."""
    from scipy import stats

    fit = stats.linregress(ages, values)
    half = stats.t.ppf(0.975, len(ages) - 2) * fit.stderr
    return {"slope": fit.slope, "low": fit.slope - half, "high": fit.slope + half, "r": fit.rvalue, "n": len(ages)}


def synthetic_slope(groups: dict[float, np.ndarray], seed: int = 0, reps: int = 2000) -> dict[str, float]:
    """Slope between the youngest and oldest requested ages (difference of group means over the age
    difference) with a 95 % bootstrap interval (cases resampled within each group)."""
    (a0, v0), (a1, v1) = sorted(groups.items())[0], sorted(groups.items())[-1]
    rng = np.random.default_rng(seed)
    boot = [(rng.choice(v1, len(v1)).mean() - rng.choice(v0, len(v0)).mean()) / (a1 - a0) for _ in range(reps)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"slope": (v1.mean() - v0.mean()) / (a1 - a0), "low": float(lo), "high": float(hi)}


def age_part(args, run: Runner, work: Path) -> dict:
    src = args.data / "ixi_t1_2mm"
    participants = src / "meta" / "participants.csv"
    if args.age_ldm and not args.age_ae:
        raise SystemExit("--age-ldm needs the --age-ae it was trained on")
    train_ids, test_ids = split(cases_of(src), 48, args.split_seed)
    print(f"\n## IXI age conditioning: {len(train_ids)} train brains (split seed {args.split_seed})", flush=True)
    train = link_subset(src, work / "train", train_ids)
    cfg = args.ixi_config
    sp = ",".join([f"{args.ixi_spacing:g}"] * 3)
    ae, ldm, t = work / "ae", work / "ldm", {}
    if args.age_ae:
        shutil.copytree(args.age_ae, ae)
        print(f"  autoencoder: {args.age_ae} (not trained in this run)", flush=True)
    else:
        t["train-ae"] = run(
            "train-ae", train, "--out", ae, "--config", cfg, "--spacing", sp, "--labels", AGE_LABELS,
            "--max-minutes", args.age_ae_minutes,
        )  # fmt: skip
    if args.age_ldm:
        shutil.copytree(args.age_ldm, ldm)
        print(f"  age-conditioned denoiser: {args.age_ldm} (not trained in this run)", flush=True)
    else:
        t["train-ldm"] = run(
            "train-ldm", train, "--ae", ae, "--out", ldm, "--config", cfg, "--condition-on", "age",
            "--covariates", participants, "--max-minutes", args.age_ldm_minutes,
        )  # fmt: skip
    real = real_age_table(src, ae, participants)
    summary, montages = {}, {}
    for g in args.age_guidance:
        synthetic = []
        for age in args.age_values:
            tag = f"age{age:g}" if g == 1 else f"guidance{g:g}-age{age:g}"
            out = work / f"samples_{tag}"
            t[f"sample age={age:g} guidance {g:g}"] = run(
                "sample", "--ae", ae, "--ldm", ldm, "--out", out, "--n", args.age_samples, "--config", cfg,
                "--condition", f"age={age:g}", "--guidance", g,
            )  # fmt: skip
            synthetic += synthetic_age_table(out, age)
            montages[f"age {age:g}, guidance {g:g}"] = save_png(out / "montage.png", f"ixi-{tag}")
        summary[f"{g:g}"] = age_summary(real, synthetic, args)
    return {
        "split": {"train": train_ids},
        "seconds": t,
        "ldm_steps": ldm_steps(ldm),
        "summary": summary,
        "real": real,
        "montages": montages,
    }


def age_summary(real: list[dict], synthetic: list[dict], args) -> dict:
    """Per measure: the real slope with its interval, the samples' slope, whether it is inside."""
    summary = {}
    for key in ("brain_fraction", "ventricles_ml"):
        r = real_slope(np.array([x["age"] for x in real]), np.array([x[key] for x in real]))
        groups = {a: np.array([x[key] for x in synthetic if x["age"] == a]) for a in args.age_values}
        s = synthetic_slope(groups, seed=args.seed)
        fit = {
            a: float(np.mean([x[key] for x in real]) + r["slope"] * (a - np.mean([x["age"] for x in real])))
            for a in args.age_values
        }
        summary[key] = {
            "real": r,
            "synthetic": s,
            "real_fit_at": fit,
            "synthetic_mean_at": {a: float(g.mean()) for a, g in groups.items()},
            "inside": bool(r["low"] <= s["slope"] <= r["high"]),
            "values": {f"{a:g}": [float(v) for v in g] for a, g in groups.items()},
        }
    return summary


def age_report(res: dict, args) -> None:
    ages = " vs ".join(f"{a:g}" for a in args.age_values)
    n_real = next(iter(res["summary"].values()))["brain_fraction"]["real"]["n"]
    print(
        f"\n### IXI age conditioning (samples asked for age {ages}, {args.age_samples} each; real: {n_real} brains)\n"
    )
    print(
        "| measure | guidance | real slope / year [95 % CI] | synthetic slope / year [95 % bootstrap] | inside real CI "
        "| real fit at ages | synthetic means |"
    )
    print("|---|---|---|---|---|---|---|")
    for key in ("brain_fraction", "ventricles_ml"):
        for g, summ in res["summary"].items():
            s = summ[key]
            r, y = s["real"], s["synthetic"]
            nd = 5 if key == "brain_fraction" else 3
            digits = 3 if key == "brain_fraction" else 1
            at = " / ".join(fmt(v, digits) for v in s["real_fit_at"].values())
            means = " / ".join(fmt(v, digits) for v in s["synthetic_mean_at"].values())
            print(
                f"| {key} | {g} | {fmt(r['slope'], nd)} [{fmt(r['low'], nd)}, {fmt(r['high'], nd)}] (r = {fmt(r['r'], 2)}) "
                f"| {fmt(y['slope'], nd)} [{fmt(y['low'], nd)}, {fmt(y['high'], nd)}] | {'yes' if s['inside'] else 'no'} "
                f"| {at} | {means} |"
            )
    print(f"\nLDM steps: {res['ldm_steps']}; seconds: {json.dumps({k: round(v) for k, v in res['seconds'].items()})}")
    print(f"montages: {', '.join(res['montages'].values())}")


# ---------------------------------------------------------------- imputation


def _masked_scores(pred: np.ndarray, truth: np.ndarray, where: np.ndarray) -> dict[str, float]:
    """PSNR over the voxels `where` and SSIM (3D Gaussian, MONAI) averaged over them; [0, 1] scale."""
    import torch
    from monai.metrics.regression import compute_ssim_and_cs

    mse = float(((pred - truth)[where] ** 2).mean())
    psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
    ssim_map, _ = compute_ssim_and_cs(t(pred), t(truth), 3, [7, 7, 7], [1.5, 1.5, 1.5], 1.0)
    m = ssim_map[0, 0].numpy()
    inner = where[3:-3, 3:-3, 3:-3]  # the SSIM map of a 7-voxel kernel covers the interior
    return {"psnr": psnr, "ssim": float(m[inner].mean())}


def _slice_baselines(vol: np.ndarray, missing: list[int]) -> dict[str, np.ndarray]:
    from scipy.interpolate import CubicSpline

    k = np.arange(vol.shape[2])
    obs = np.array([i for i in k if i not in set(missing)])
    lin = vol.copy()
    cub = vol.copy()
    spline = CubicSpline(obs, vol[..., obs], axis=2)
    for i in missing:
        lo, hi = obs[obs < i], obs[obs > i]
        if len(lo) and len(hi):
            a, b = lo[-1], hi[0]
            w = (i - a) / (b - a)
            lin[..., i] = (1 - w) * vol[..., a] + w * vol[..., b]
            cub[..., i] = spline(i)
        else:
            lin[..., i] = cub[..., i] = vol[..., (lo[-1] if len(lo) else hi[0])]
    return {"linear interpolation": lin, "cubic interpolation": cub}


def _mcar_baseline(vol: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
    from scipy.ndimage import gaussian_filter

    num = gaussian_filter(np.where(observed, vol, 0.0), 1.0)
    den = gaussian_filter(observed.astype(np.float64), 1.0)
    fill = np.where(den > 1e-6, num / np.maximum(den, 1e-6), vol[observed].mean())
    return {"normalised convolution (σ 1 voxel)": np.where(observed, vol, fill)}


def impute_part(args, run: Runner, work: Path, ixi_work: Path) -> dict:
    import nibabel as nib

    heldout = ixi_work / "heldout_eval"
    if not (ixi_work / "ldm").exists() or not heldout.exists():
        raise SystemExit(f"impute needs the ixi part's models and held-out brains in {ixi_work} (run --only ixi first)")
    ids = cases_of(heldout)[: args.impute_cases]
    # (row name, output folder, impute flags); from noise one draw (each takes all --impute-steps)
    methods = [("latent self-guidance (ldmtool impute)", "noise", [])] + [
        (f"self-guidance from the interpolation, strength {st:g} (--init interpolation)"
         + ("" if k == 1 else f", mean of {k} draws (--samples {k})"),
         f"interp{st:g}" + ("" if k == 1 else f"_k{k}"),
         ["--init", "interpolation", "--strength", st, *([] if k == 1 else ["--samples", k])])
        for st in args.impute_strengths
        for k in args.impute_samples
    ]  # fmt: skip

    scores: dict[str, dict[str, dict[str, list]]] = {"every other slice": {}, "50% MCAR": {}}
    for c in ids:
        path = heldout / "imagesTr" / f"{c}_0000.nii.gz"
        truth_raw = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        brain = np.asarray(nib.load(heldout / "labelsTr" / f"{c}.nii.gz").dataobj) > 0
        lo, hi = np.percentile(truth_raw, (0.5, 99.5))  # one [0, 1] scale for every method: the truth's

        def scale(v: np.ndarray, lo=lo, hi=hi) -> np.ndarray:
            return np.clip((v - lo) / (hi - lo + 1e-8), 0, 1)

        depth = truth_raw.shape[2]
        odd = list(range(1, depth, 2))
        for task, extra in (
            ("every other slice", ["--missing-slices", ",".join(map(str, odd))]),
            ("50% MCAR", ["--simulate-mcar", "0.5"]),
        ):
            imputed = {}
            for name, folder, how in methods:
                out = work / task.replace(" ", "_").replace("%", "") / folder / c
                run(
                    "impute", path, "--ae", ixi_work / "ae", "--ldm", ixi_work / "ldm", "--out", out,
                    "--steps", args.impute_steps, *extra, *how,
                )  # fmt: skip
                imputed[name] = np.asarray(nib.load(out / f"{c}_imputed.nii.gz").dataobj, dtype=np.float32)
            missing = np.asarray(nib.load(out / f"{c}_missing.nii.gz").dataobj) > 0
            ref = scale(truth_raw)
            observed = ~missing
            base = (
                _slice_baselines(truth_raw, odd) if task == "every other slice" else _mcar_baseline(truth_raw, observed)
            )
            where = missing & brain
            for name, vol in {**imputed, **base}.items():
                s = _masked_scores(scale(vol), ref, where)
                d = scores[task].setdefault(name, {"psnr": [], "ssim": []})
                d["psnr"].append(s["psnr"])
                d["ssim"].append(s["ssim"])
    return {
        "cases": ids,
        "scores": scores,
        "steps": args.impute_steps,
        "strengths": args.impute_strengths,
        "samples": args.impute_samples,
    }


def impute_report(res: dict, args) -> None:
    print(
        f"\n### IXI imputation ({len(res['cases'])} held-out brains at {args.ixi_spacing:g} mm; scores on the missing voxels inside the brain, [0, 1] scale)\n"
    )
    print("| missing | method | PSNR (dB) | SSIM |")
    print("|---|---|---|---|")
    for task, methods in res["scores"].items():
        for name, v in methods.items():
            print(
                f"| {task} | {name} | {np.mean(v['psnr']):.2f} ± {np.std(v['psnr']):.2f} | {np.mean(v['ssim']):.3f} ± {np.std(v['ssim']):.3f} |"
            )
    print(
        f"\nDDIM {res['steps']} steps from noise (from the interpolation: round({res['steps']} × strength) steps, "
        f"starting at that fraction of the schedule); models: the ixi part's autoencoder and latent denoiser"
    )


# ---------------------------------------------------------------- hippocampus segmentation


def score_segmentations(pred_dir: Path, truth: Path, ids: list[str], n_classes: int) -> dict:
    import nibabel as nib

    from ldmtool.metrics import segmentation_metrics

    dice, hd = [], []
    for c in ids:
        pred = np.asarray(nib.load(pred_dir / f"{c}_seg.nii.gz").dataobj).astype(np.int64)
        lab = nib.load(truth / "labelsTr" / f"{c}.nii.gz")
        m = segmentation_metrics(
            pred,
            np.asarray(lab.dataobj).astype(np.int64),
            n_classes,
            metrics=("dice", "hd95"),
            spacing=tuple(float(z) for z in lab.header.get_zooms()[:3]),
        )
        dice.append(m["dice"])
        hd.append(m["hd95"])
    dice, hd = np.array(dice, dtype=float), np.array(hd, dtype=float)
    return {
        "dice": list(np.nanmean(dice, 0)),
        "dice_mean": float(np.nanmean(dice)),
        "hd95": list(np.nanmean(hd, 0)),
        "per_case_dice_mean": list(np.nanmean(dice, 1)),
    }


def hippo_seg_part(args, run: Runner, work: Path) -> dict:
    src = args.data / "msd_hippocampus"
    train_ids, test_ids = split(cases_of(src), 48, args.split_seed)
    print(
        f"\n## Hippocampus segmentation: {len(train_ids)} train / {len(test_ids)} held out (split seed {args.split_seed})",
        flush=True,
    )
    train = link_subset(src, work / "train", train_ids)
    test = link_subset(src, work / "test", test_ids)
    res = {"split": {"train": train_ids, "test": test_ids}, "models": {}}
    for arch in ("ldseg", "unet"):
        model = work / arch
        reuse = args.seg_ldseg if arch == "ldseg" else None
        if reuse:  # a model trained earlier on the same split and budget
            shutil.copytree(reuse, model)
            print(f"  {arch}: {reuse} (not trained in this run)", flush=True)
            secs = float(json.loads((model / "history.json").read_text())[-1]["seconds"])
        else:
            secs = run(
                "train-seg", train, "--out", model, "--arch", arch, "--epochs", 10000, "--max-minutes", args.seg_minutes
            )
        t0 = time.perf_counter()
        draws = ["--steps", args.seg_steps, "--samples", args.seg_samples] if arch == "ldseg" else []
        run("segment", test / "imagesTr", "--model", model, "--out", work / f"{arch}_seg", *draws)
        seg_s = time.perf_counter() - t0
        res["models"][arch] = {
            "train_seconds": secs,
            "segment_seconds": seg_s,
            **score_segmentations(work / f"{arch}_seg", test, test_ids, 3),
        }
    return res


def hippo_seg_report(res: dict, args) -> None:
    n = len(res["split"]["test"])
    print(
        f"\n### Hippocampus segmentation ({len(res['split']['train'])} train / {n} held-out cases; {args.seg_minutes:g} min of training each)\n"
    )
    print(
        "| model | Dice anterior | Dice posterior | mean Dice | HD95 anterior (mm) | HD95 posterior (mm) | train s | segment s (all cases) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arch, m in res["models"].items():
        print(
            f"| {arch} | {m['dice'][0]:.3f} | {m['dice'][1]:.3f} | {m['dice_mean']:.3f} | {fmt(m['hd95'][0], 2)} | {fmt(m['hd95'][1], 2)} "
            f"| {m['train_seconds']:.0f} | {m['segment_seconds']:.0f} |"
        )
    ld, un = res["models"]["ldseg"]["dice_mean"], res["models"]["unet"]["dice_mean"]
    print(
        f"\nLDSeg − UNet mean Dice: {ld - un:+.3f} (target ≥ −0.02); LDSeg mean Dice {ld:.3f} (target ≥ 0.85; nnU-Net ≈ 0.90, 5-fold)"
    )
    print(
        f"LDSeg with --steps {args.seg_steps} (DDIM) --samples {args.seg_samples} (mean probabilities of the draws); "
        "both trained with `train-seg` defaults but the time budget"
    )


# ---------------------------------------------------------------- augmentation curve


def _generator(run: Runner, sub: Path, d: Path, cfg: Path, mode: str, args, ae: Path | None) -> dict[str, float]:
    """Train a generator on the real cases `sub` into d/ae and d/ldm. joint: image and label sampled
    together from noise; labels: a mask-to-image model (`--condition-on labels`), labels:K with
    `--label-detail K`. `ae`: the autoencoder another generator of the same N trained (the same
    config and cases), linked as d/ae instead of trained again."""
    ae_budget, ldm_budget = generator_budgets(args)
    if ae is None:
        t = {"train-ae": run("train-ae", sub, "--out", d / "ae", "--config", cfg, *ae_budget)}
    else:
        t = {}
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "ae").exists():
            (d / "ae").symlink_to(ae.resolve(), target_is_directory=True)
    kind, _, detail = mode.partition(":")
    extra = ["--condition-on", "labels"] if kind == "labels" else []
    extra += ["--label-detail", detail] if detail else []
    t["train-ldm"] = run(
        "train-ldm", sub, "--ae", d / "ae", "--out", d / "ldm", "--config", cfg, *extra, *ldm_budget
    )  # fmt: skip
    # time-budgeted trainings reach fewer steps on a slower or busier machine: say how far they got
    steps = {k: json.loads((d / k / "state.json").read_text())["step"] for k in ("ae", "ldm")}
    print(f"  generator steps in the budget: autoencoder {steps['ae']:,}, denoiser {steps['ldm']:,}", flush=True)
    return t


def steps_pair(v: str) -> tuple[int, int]:
    """--aug-gen-steps AE,LDM: two positive integers (3_900 allowed; a comma separates the two)."""
    parts = [x.strip().replace("_", "") for x in v.split(",")]
    if len(parts) != 2 or not all(x.isdigit() and int(x) > 0 for x in parts):
        raise argparse.ArgumentTypeError(f"{v!r}: two positive step counts, AE,LDM (e.g. 3900,2100)")
    return int(parts[0]), int(parts[1])


def generator_budgets(args) -> tuple[list, list]:
    """train-ae and train-ldm budget options of the augment generators: --aug-gen-steps AE,LDM
    (optimisation steps, comparable across machines) or --aug-gen-minutes each."""
    if args.aug_gen_steps:
        return ["--steps", args.aug_gen_steps[0]], ["--steps", args.aug_gen_steps[1]]
    return ["--max-minutes", args.aug_gen_minutes], ["--max-minutes", args.aug_gen_minutes]


def generator_budget_text(args) -> str:
    if args.aug_gen_steps:
        return f"train-ae {args.aug_gen_steps[0]:,} + train-ldm {args.aug_gen_steps[1]:,} steps per N"
    return f"train-ae + train-ldm, {args.aug_gen_minutes:g} + {args.aug_gen_minutes:g} min per N"


def _sample(run: Runner, sub: Path, d: Path, out: Path, cfg: Path, n_syn: int, undeformed: float | None) -> float:
    """n_syn synthetic image+label pairs from the generator in d, into `out`: from noise
    (undeformed None: the joint generator) or for the real label maps of `sub`, the share
    `undeformed` of them for the maps themselves and the rest for seeded deformations."""
    what = (
        ["--n", n_syn]
        if undeformed is None
        else ["--labels", sub, *label_sampling(n_syn, len(cases_of(sub)), undeformed)]
    )
    return run("sample", "--ae", d / "ae", "--ldm", d / "ldm", "--out", out, *what, "--config", cfg)


def label_sampling(n_syn: int, n_maps: int, undeformed: float) -> list:
    """`sample --labels` options for n_syn images from n_maps real label maps: per map k =
    ceil(n_syn / n_maps) images, the share `undeformed` of them of the map itself and the rest of
    seeded deformations of it (one image each)."""
    k = int(np.ceil(n_syn / n_maps))
    keep = int(np.floor(k * undeformed + 0.5))
    if keep == 0:
        return ["--deform", k]
    if keep == k:
        return ["--per-label", k]
    return ["--deform", k - keep, "--undeformed", keep]


def ae_ceiling_curve(run: Runner, d: Path, sub: Path, test: Path, n: int, args) -> float:
    """The downstream model trained on the generator's autoencoder's reconstructions of the N real
    cases alone (in their own grids, with their real label maps): what synthetic pairs can reach
    through this autoencoder, however good the denoiser. Scored like the curve (the same seeds,
    steps and test cases) in d/report_recon; returns the seconds it took."""
    recon = d / "recon"
    shutil.rmtree(recon, ignore_errors=True)
    shutil.rmtree(d / "recon-model-grid", ignore_errors=True)
    reconstructions_in_source_grid(d / "ae", sub, recon, args.device)
    return run(
        "evaluate", "--only", "utility", "--real", test, "--synthetic", recon, "--train", sub, "--test", test,
        "--utility-curve", n, "--curve-ratios", 1, "--curve-seeds", args.aug_seeds, "--seg-steps", args.aug_seg_steps,
        "--real-share", args.aug_real_shares[0], "--out", d / "report_recon",
    )  # fmt: skip


def augment_part(args, run: Runner, work: Path) -> dict:
    src = args.data / "msd_hippocampus"
    train_ids, test_ids = split(cases_of(src), 48, args.split_seed)
    test = link_subset(src, work / "test", test_ids)
    cfg = REPO / "examples" / "hippocampus.yaml"
    ratios = ",".join(f"{r:g}" for r in args.aug_ratios)
    out = {"sizes": args.aug_sizes, "modes": args.aug_modes, "curves": {}, "seconds": {}, "montages": {}}
    print(
        f"\n## Augmentation curve: N = {args.aug_sizes} real cases (nested, first N of the training permutation), {len(test_ids)} held out; generators: {', '.join(args.aug_modes)}",
        flush=True,
    )
    for n in args.aug_sizes:
        sub = link_subset(src, work / f"N{n}" / "real", train_ids[:n])
        shared_ae = None  # one autoencoder per N, shared by its generators (same config, same cases)
        for mode in args.aug_modes:
            d = work / f"N{n}" / mode.replace(":", "-d")
            need = int(np.ceil(max(args.aug_ratios) * n))
            # one generator; one synthetic set per --aug-undeformed-share value for the labels generator
            multi = mode.startswith("labels") and len(args.aug_undeformed_share) > 1
            sets = (
                [(mode, None, d / "synthetic")]
                if mode == "joint"
                else [
                    (f"labels u{u:g}" if multi else mode, u, d / ("synthetic" if not multi else f"synthetic_u{u:g}"))
                    for u in args.aug_undeformed_share
                ]
            )
            reused = args.aug_reuse and all((syn / "dataset.json").is_file() for _, _, syn in sets)
            t = {} if reused else _generator(run, sub, d, cfg, mode, args, shared_ae)
            shared_ae = shared_ae or d / "ae"
            for name, undeformed, syn in sets:
                tag = "" if name == mode else f" ({name})"
                if reused:
                    have = len(cases_of(syn))
                    if have < need:
                        raise SystemExit(f"--aug-reuse: {syn} holds {have} synthetic cases; --aug-ratios needs {need}")
                    print(f"  N={n} {name}: the {have} synthetic cases already in {syn} (--aug-reuse)", flush=True)
                else:
                    t[f"sample{tag}"] = _sample(run, sub, d, syn, cfg, need, undeformed)
                for share in args.aug_real_shares:  # the same synthetic cases, mixed into the batches two ways
                    rep_dir = syn.parent / f"report{syn.name.removeprefix('synthetic')}_share{share:g}"
                    t[f"evaluate{tag} (real share {share:g})"] = run(
                        "evaluate", "--only", "utility", "--real", test, "--synthetic", syn, "--train", sub, "--test", test,
                        "--utility-curve", n, "--curve-ratios", ratios, "--curve-seeds", args.aug_seeds, "--seg-steps", args.aug_seg_steps,
                        "--real-share", share, "--out", rep_dir,
                    )  # fmt: skip
                    out["curves"][f"{n}/{name}/{share:g}"] = json.loads((rep_dir / "report.json").read_text())[
                        "utility_curve"
                    ]
                if n == args.aug_sizes[0]:
                    out["montages"][name] = save_png(
                        syn / "montage.png", f"hippocampus-N{n}-{name.replace(' ', '-').replace(':', '-d')}-samples"
                    )
            if args.aug_ae_ceiling:
                t["autoencoder ceiling"] = ae_ceiling_curve(run, d, sub, test, n, args)
                out.setdefault("ae_ceiling", {})[f"{n}/{mode}"] = json.loads(
                    (d / "report_recon" / "report.json").read_text()
                )["utility_curve"]["results"][str(n)]
            out["seconds"][f"{n}/{mode}"] = t
    return out


def augment_report(res: dict, args) -> None:
    print(
        f"\n### Augmentation: downstream 2D UNet ({args.aug_seg_steps} steps) Dice on held-out real hippocampus, mean ± std over {args.aug_seeds} seeds\n"
    )
    print(
        f"generators ({generator_budget_text(args)}): joint = image and label map sampled together from noise; "
        "labels = mask-to-image, the share u (--aug-undeformed-share "
        f"{','.join(f'{u:g}' for u in args.aug_undeformed_share)}) of its images for the N real label maps themselves "
        "and the rest for seeded elastic/affine deformations of them (`sample --labels --deform --undeformed`); "
        "labels:K = the same with `train-ldm --label-detail K` (labels: the config's label detail); "
        "the generators of one N share one autoencoder\n"
    )
    print(
        "real share = share of each downstream batch drawn from the real cases when real and synthetic are mixed "
        "(`evaluate --real-share`; 0 = every case equally likely)\n"
    )
    rows = {}
    for key, curve in res["curves"].items():
        n = key.split("/")[0]
        rows[key] = curve["results"][n]
    conds = list(next(iter(rows.values())).keys())
    print("| N real | generator | real share | " + " | ".join(conds) + " |")
    print("|---" * (len(conds) + 3) + "|")
    for key, row in rows.items():
        n, mode, share = key.split("/")
        cells = " | ".join(f"{row[c]['mean']:.3f} ± {row[c]['std']:.3f}" for c in conds)
        print(f"| {n} | {mode} | {share} | {cells} |")
    print("\nbest real+synthetic − real alone (targets: ≥ +0.02 at the smallest N, ≥ −0.005 at the largest):")
    for key, row in rows.items():
        mixed = [c for c in row if c.startswith("real+")]
        best = max(mixed, key=lambda c: row[c]["mean"])
        syn = [c for c in row if c.startswith("synthetic")]
        syn_gap = f"; synthetic only − real {row[syn[0]]['mean'] - row['real']['mean']:+.3f}" if syn else ""
        print(f"  N={key}: {best} {row[best]['mean'] - row['real']['mean']:+.3f}{syn_gap}")
    if res.get("ae_ceiling"):
        from ldmtool.evaluate.utility_curve import SYNTHETIC_ONLY

        print(
            "\nthe autoencoder's ceiling: the downstream model trained only on each generator's autoencoder's "
            "reconstructions of the N real cases (their own grids, the real label maps), same seeds and steps:"
        )
        for key, row in res["ae_ceiling"].items():
            syn = row[SYNTHETIC_ONLY]
            print(
                f"  N={key}: {syn['mean']:.3f} ± {syn['std']:.3f} (real only {row['real']['mean']:.3f}; "
                f"{syn['mean'] - row['real']['mean']:+.3f})"
            )
    for mode, png in res.get("montages", {}).items():
        print(f"montage of synthetic cases ({mode}): {png}")


# ---------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = REPO.parent / "shared" / "data"
    p.add_argument(
        "--data", type=Path, default=default, help=f"folder holding ixi_t1_2mm/ and msd_hippocampus/ [{default}]"
    )
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    p.add_argument("--work", type=Path, default=None, help="keep every file here (default: a temporary folder)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--ixi-spacing", type=float, default=4.0, help="mm: 4 on a CPU, 2 on a GPU")
    p.add_argument("--ixi-ae-minutes", type=float, default=20.0)
    p.add_argument("--ixi-ldm-minutes", type=float, default=35.0)
    p.add_argument("--ixi-samples", type=int, default=32)
    p.add_argument("--ixi-ae", type=Path, default=None, help="reuse this train-ae output instead of training one")
    p.add_argument(
        "--ixi-ldm",
        type=Path,
        default=None,
        help="reuse this train-ldm output (trained on --ixi-ae) instead of training one",
    )
    p.add_argument(
        "--ixi-guide-minutes",
        type=float,
        default=5.0,
        help="train a half-width guide denoiser this long and also sample with autoguidance (0: off)",
    )
    p.add_argument(
        "--ixi-guidance",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[2.0],
        help="autoguidance scales to sample at, e.g. 1.5,2,3",
    )
    p.add_argument(
        "--ixi-config",
        type=Path,
        default=None,
        help="ldmtool config of the ixi and age parts [examples/ixi_cpu.yaml at 4 mm, examples/ixi_gpu.yaml below]",
    )
    p.add_argument("--age-ae-minutes", type=float, default=15.0)
    p.add_argument("--age-ldm-minutes", type=float, default=30.0)
    p.add_argument("--age-samples", type=int, default=16, help="samples per requested age")
    p.add_argument("--age-values", type=lambda s: [float(x) for x in s.split(",")], default=[25.0, 75.0])
    p.add_argument(
        "--age-ae", type=Path, default=None, help="reuse this train-ae output (two classes: brain, ventricles)"
    )
    p.add_argument(
        "--age-ldm", type=Path, default=None, help="reuse this age-conditioned train-ldm output (with --age-ae)"
    )
    p.add_argument(
        "--age-guidance",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[1.0],
        help="classifier-free guidance scales to sample at (each its own samples and slopes)",
    )
    p.add_argument("--impute-cases", type=int, default=8)
    p.add_argument("--impute-steps", type=int, default=50)
    p.add_argument(
        "--impute-strengths",
        type=lambda v: [float(x) for x in v.split(",") if x.strip()],
        default=[0.5],
        help="also impute from the interpolated volume noised to these fractions of the schedule "
        "(impute --init interpolation --strength S; empty: from noise only)",
    )
    p.add_argument(
        "--impute-samples",
        type=lambda v: [int(x) for x in v.split(",") if x.strip()],
        default=[1, 16],
        help="draws per imputation from the interpolation, each K its own row: above 1 the mean of K "
        "(impute --samples K; the mean of several draws, not one draw, is what PSNR rewards)",
    )
    p.add_argument("--seg-minutes", type=float, default=12.0, help="training minutes of LDSeg and of the UNet each")
    p.add_argument(
        "--seg-ldseg", type=Path, default=None, help="reuse this train-seg LDSeg output instead of training one"
    )
    p.add_argument("--seg-steps", type=int, default=1, help="LDSeg DDIM steps at segmentation")
    p.add_argument("--seg-samples", type=int, default=4, help="LDSeg draws averaged per case at segmentation")
    p.add_argument("--aug-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 20, 50])
    p.add_argument("--aug-ratios", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0, 5.0])
    p.add_argument("--aug-seeds", type=int, default=3)
    p.add_argument(
        "--aug-ae-ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the downstream model on each generator's autoencoder's reconstructions of the N real "
        "cases alone (about 5 CPU-minutes per N and generator): the most synthetic-only training can reach",
    )
    p.add_argument("--aug-gen-minutes", type=float, default=4.0, help="minutes of train-ae and of train-ldm, per N")
    p.add_argument(
        "--aug-gen-steps",
        type=steps_pair,
        default=None,
        metavar="AE,LDM",
        help="optimisation steps of train-ae and of train-ldm per N instead of --aug-gen-minutes: the same "
        "generators on a slower or busier machine (the benchmark prints the steps a minutes budget reached)",
    )
    p.add_argument(
        "--aug-modes",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        default=["joint", "labels"],
        help="generators compared: joint (image+label from noise), labels (mask-to-image from the real maps and "
        "deformations of them, --aug-undeformed-share; the config's label detail), labels:K (the same with train-ldm "
        "--label-detail K, e.g. labels:1: class fractions); "
        "the generators of one N share one autoencoder",
    )
    p.add_argument(
        "--aug-undeformed-share",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.5],
        help="labels generator: share of the synthetic images drawn for the real label maps themselves, the rest "
        "for seeded deformations of them (0 = deformations only); several values = one synthetic set each from "
        "the same generator, compared side by side [0.5]",
    )
    p.add_argument("--aug-seg-steps", type=int, default=1000, help="downstream segmenter steps")
    p.add_argument(
        "--aug-reuse",
        action="store_true",
        help="with --work W of an earlier run: evaluate the synthetic cases already in W/augment/N*/MODE again "
        "(e.g. at other --aug-real-shares) instead of training new generators",
    )
    p.add_argument(
        "--aug-real-shares",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[0.5, 0.75],
        help="evaluate --real-share values compared on the same synthetic cases [0.5,0.75]",
    )
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in PARTS]
    if not all(0.0 <= u <= 1.0 for u in args.aug_undeformed_share):
        p.error("--aug-undeformed-share takes shares between 0 and 1")
    if not args.impute_samples or min(args.impute_samples) < 1:
        p.error("--impute-samples takes draw counts of at least 1, e.g. 1,16")
    if any(m != "joint" and not re.fullmatch(r"labels(:[1-9][0-9]*)?", m) for m in args.aug_modes):
        p.error("--aug-modes takes joint, labels and/or labels:K (K: train-ldm --label-detail)")
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)}")
    if args.ixi_spacing not in (2.0, 4.0):
        p.error("--ixi-spacing takes 2 (the data's own grid) or 4 (2×2×2 blocks averaged)")
    if args.ixi_ldm and not args.ixi_ae:
        p.error("--ixi-ldm goes with --ixi-ae (the autoencoder it was trained on)")
    if any(g <= 1 for g in args.ixi_guidance):
        p.error("--ixi-guidance takes autoguidance scales above 1, e.g. 2,3")
    if args.ixi_config is None:  # tiny models for a CPU at 4 mm, GPU-sized ones at 2 mm
        args.ixi_config = REPO / "examples" / ("ixi_cpu.yaml" if args.ixi_spacing >= 4 else "ixi_gpu.yaml")
    return args


def missing_data(args) -> list[str]:
    """The data folders the chosen parts need that are not there."""
    need = {
        "ixi": "ixi_t1_2mm",
        "impute": "ixi_t1_2mm",
        "age": "ixi_t1_2mm",
        "hippo-seg": "msd_hippocampus",
        "augment": "msd_hippocampus",
    }
    return sorted({str(args.data / need[p]) for p in args.only if not (args.data / need[p] / "imagesTr").is_dir()})


def main(args) -> None:
    import tempfile

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ldmtool-real-")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"work folder: {work}; device {args.device}; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}; parts {', '.join(args.only)}",
        flush=True,
    )
    results = {}
    steps = {
        "ixi": (lambda w: ixi_part(args, Runner(w, args.device, args.seed), w), ixi_report),
        "impute": (lambda w: impute_part(args, Runner(w, args.device, args.seed), w, work / "ixi"), impute_report),
        "age": (lambda w: age_part(args, Runner(w, args.device, args.seed), w), age_report),
        "hippo-seg": (lambda w: hippo_seg_part(args, Runner(w, args.device, args.seed), w), hippo_seg_report),
        "augment": (lambda w: augment_part(args, Runner(w, args.device, args.seed), w), augment_report),
    }
    for part in PARTS:
        if part not in args.only:
            continue
        w = work / part
        if w.exists() and not (part == "augment" and args.aug_reuse):  # --aug-reuse: what is there is the input
            shutil.rmtree(w)
        w.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        results[part] = steps[part][0](w)
        results[part]["part_seconds"] = time.perf_counter() - t0
        (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
        steps[part][1](results[part], args)
        print(f"\n{part}: {results[part]['part_seconds'] / 60:.1f} min", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    arguments = parse()
    if missing_data(arguments):
        # a fresh clone without the data: nothing to measure and no results file
        print(f"real data not found: {', '.join(missing_data(arguments))} — nothing to do (give --data DIR)")
        sys.exit(0)
    with recorded("real_data"):
        main(arguments)
