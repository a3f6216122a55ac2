"""Missing-contrast imputation: FLAIR synthesised from T1 + T2 by `ldmtool impute --missing-channel`.

    pip install -e '.[bench]'                                   # SimpleITK: histogram matching
    python benchmarks/multicontrast.py --work /tmp/mc            # ~20 min of 2 CPU cores (budgets in steps)
    python benchmarks/multicontrast.py --quick --work /tmp/mcq   # smoke test: tiny phantoms and models

Every ldmtool step runs through the commands a user would type (in this process, output to
WORK/ldmtool.log):
  1. `demo-data --contrasts t1,t2,flair`: --n training phantoms (seed --seed) and --test held-out
     ones (another seed), --shape voxels; lesions bright in FLAIR, dark in T1;
  2. `train-ae` and `train-ldm` (examples/demo.yaml, --ae-steps / --ldm-steps optimisation steps)
     on the training phantoms, all three channels;
  3. per held-out case, `impute CASE_0000 --missing-channel flair --samples K` from a folder that
     holds its T1 and T2 files only (the FLAIR is never read); the mean of the K imputations is
     scored, their per-voxel std map is written beside it;
  4. baselines on the same cases:
       - T2 → FLAIR and T1 → FLAIR: the other contrast with its histogram matched to that of the
         pooled training FLAIRs (ITK's HistogramMatchingImageFilter, through SimpleITK);
       - UNet regression: a MONAI UNet (2D, axial slices) trained on the training phantoms for
         --unet-steps steps to regress FLAIR from T1, T2 (L1 loss; inputs normalised per volume to
         their 0.5/99.5 percentiles, target in the pooled training FLAIR range);
  5. scores against the true FLAIR, both in [0, 1] by the true FLAIR's 0.5/99.5 percentiles (clipped):
     PSNR and SSIM (MONAI; 3D, SSIM's map averaged) inside the head (label > 0) and over the
     whole volume; lesion Dice (ldmtool.metrics) of a segmenter trained with `train-seg --arch
     unet` on the training phantoms (T1, T2, FLAIR in) run with `segment` on each case with its
     FLAIR replaced by the method's (the true FLAIR: the reference row). A case without lesions
     scores 1 when none is found and 0 otherwise (ldmtool.metrics' rule).
Means ± sd over the held-out cases; the seconds are CPU seconds of this process (training, and
per case), which depend less on the machine's load than wall time does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _commands import run_logged  # noqa: E402
from _results import recorded  # noqa: E402

CONTRASTS = ("t1", "t2", "flair")
FLAIR = CONTRASTS.index("flair")
LOG: list[Path] = []  # where the commands' own output goes (the work folder's ldmtool.log)


def ldmtool(*args) -> None:
    """Run one `ldmtool` command in this process, its output to the work folder's log."""
    run_logged(LOG[0], *args)


def cpu_timed(fn, *args, **kw):
    """(fn's result, CPU seconds of this process while it ran)."""
    t0 = time.process_time()
    out = fn(*args, **kw)
    return out, time.process_time() - t0


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def write(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)


def cases_of(data: Path) -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (data / "imagesTr").glob("*_0000.nii.gz"))


def channel(data: Path, case: str, c: int) -> Path:
    return data / "imagesTr" / f"{case}_{c:04d}.nii.gz"


def percentile_range(array: np.ndarray) -> tuple[float, float]:
    """The 0.5/99.5 percentiles, as ldmtool's preprocessing takes them."""
    from ldmtool.data.preprocess import _intensity_range
    from ldmtool.data.preprocess_config import PreprocessConfig

    return _intensity_range(array, PreprocessConfig(percentiles=(0.5, 99.5)))


def to_unit(array: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
    lo, hi = rng
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# baselines
# ------------------------------------------------------------------------------------------------


def histogram_copy(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`source` (another contrast) with the intensity histogram of `reference` (the training FLAIRs
    side by side): ITK's histogram matching (SimpleITK; 256 levels, 7 match points, voxels below the
    mean intensity, the background, left out of the matching)."""
    import SimpleITK as sitk

    match = sitk.HistogramMatchingImageFilter()
    match.SetNumberOfHistogramLevels(256)
    match.SetNumberOfMatchPoints(7)
    match.ThresholdAtMeanIntensityOn()
    out = match.Execute(sitk.GetImageFromArray(source.astype(np.float32)), sitk.GetImageFromArray(reference))
    return sitk.GetArrayFromImage(out).astype(np.float32)


def unet_inputs(t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """(K, 2, I, J) axial slices of T1, T2, each normalised to its own 0.5/99.5 percentiles."""
    stacked = np.stack([to_unit(t1, percentile_range(t1)), to_unit(t2, percentile_range(t2))])  # (2, I, J, K)
    return np.ascontiguousarray(stacked.transpose(3, 0, 1, 2))


def make_unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=2, out_channels=1, channels=(16, 32, 64), strides=(2, 2), num_res_units=1)


def train_unet(train: Path, cases: list[str], flair_range: tuple[float, float], steps: int, seed: int):
    """A 2D MONAI UNet regressing the FLAIR slice (in the pooled training FLAIR range) from T1, T2."""
    import torch

    xs, ys = [], []
    for case in cases:
        t1, t2, flair = (read(channel(train, case, c))[0] for c in range(3))
        xs.append(unet_inputs(t1, t2))
        ys.append(((flair - flair_range[0]) / (flair_range[1] - flair_range[0])).transpose(2, 0, 1)[:, None])
    x, y = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys).astype(np.float32))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = make_unet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (16,), generator=g)
        loss = torch.nn.functional.l1_loss(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def unet_predict(net, t1: np.ndarray, t2: np.ndarray, flair_range: tuple[float, float]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = net(torch.from_numpy(unet_inputs(t1, t2)))[:, 0].numpy()  # (K, I, J)
    return (out.transpose(1, 2, 0) * (flair_range[1] - flair_range[0]) + flair_range[0]).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------------


def image_scores(pred: np.ndarray, truth: np.ndarray, head: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (MONAI; 3D, Gaussian window 7) in [0, 1] by the true FLAIR's percentiles, over
    the whole volume and inside the head (SSIM: its map averaged over the head voxels it covers)."""
    import torch
    from monai.metrics import PSNRMetric
    from monai.metrics.regression import compute_ssim_and_cs

    rng = percentile_range(truth)
    p, t = (torch.from_numpy(to_unit(v, rng))[None, None] for v in (pred, truth))
    win = 7
    ssim_map, _ = compute_ssim_and_cs(p, t, 3, [win] * 3, [1.5] * 3, data_range=1.0)  # (1, 1, I-6, J-6, K-6)
    h = win // 2
    inner = torch.from_numpy(head[h:-h, h:-h, h:-h])
    psnr = PSNRMetric(max_val=1.0)
    m = torch.from_numpy(head)
    return {
        "psnr_head": float(psnr(p[0, 0][m][None, None], t[0, 0][m][None, None])[0, 0]),
        "ssim_head": float(ssim_map[0, 0][inner].mean()),
        "psnr": float(psnr(p, t)[0, 0]),
        "ssim": float(ssim_map.mean()),
    }


def lesion_dice(seg_dir: Path, test: Path, cases: list[str], lesion: int, num_classes: int) -> list[float]:
    from ldmtool.metrics import dice_per_class

    out = []
    for case in cases:
        pred = read(seg_dir / f"{case}_seg.nii.gz")[0].astype(np.int64)
        truth = read(test / "labelsTr" / f"{case}.nii.gz")[0].astype(np.int64)
        out.append(dice_per_class(pred, truth, num_classes)[lesion - 1])
    return out


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def run(args, work: Path) -> None:
    config = REPO / "examples" / ("tiny.yaml" if args.quick else "demo.yaml")
    train, test = work / "train", work / "test"
    LOG[:] = [work / "ldmtool.log"]
    contrasts = ",".join(CONTRASTS)
    ldmtool("--seed", args.seed, "demo-data", train, "--n", args.n, "--shape", args.shape, "--contrasts", contrasts)
    ldmtool("--seed", args.seed + 1000, "demo-data", test, "--n", args.test, "--shape", args.shape,
            "--contrasts", contrasts)  # fmt: skip
    meta = json.loads((train / "dataset.json").read_text())
    lesion, num_classes = meta["labels"]["lesion"], len(meta["labels"])
    train_cases, test_cases = cases_of(train), cases_of(test)
    cpu: dict[str, float] = {}

    # the generator: autoencoder + latent denoiser on all three channels
    no_limit = ["--max-minutes", 10_000]  # the budgets are steps, not minutes
    _, t_ae = cpu_timed(ldmtool, "--seed", args.seed, "train-ae", train, "--out", work / "AE", "--config", config,
                        "--steps", args.ae_steps, *no_limit)  # fmt: skip
    _, t_ldm = cpu_timed(ldmtool, "--seed", args.seed, "train-ldm", train, "--ae", work / "AE", "--out",
                         work / "LDM", "--config", config, "--steps", args.ldm_steps, *no_limit)  # fmt: skip
    cpu["ldm"] = t_ae + t_ldm
    # the segmenter that judges every FLAIR
    _, cpu["seg"] = cpu_timed(ldmtool, "--seed", args.seed, "train-seg", train, "--out", work / "SEG", "--arch",
                              "unet", "--steps", args.seg_steps, "--batch-size", 16, "--lr", 2e-3, *no_limit,
                              *(["--config", config] if args.quick else []))  # fmt: skip

    # what the imputation may see: T1 and T2 only
    observed = work / "observed" / "imagesTr"
    observed.mkdir(parents=True, exist_ok=True)
    for case in test_cases:
        for c in range(len(CONTRASTS)):
            if c != FLAIR:
                shutil.copy(channel(test, case, c), observed / channel(test, case, c).name)

    methods = ("LDM impute (mean of K)", "T2 → FLAIR, histogram-matched", "T1 → FLAIR, histogram-matched",
               "UNet regression (supervised)")  # fmt: skip
    flair: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
    per_case: dict[str, float] = {}
    train_cpu = {methods[0]: cpu["ldm"], methods[1]: 0.0, methods[2]: 0.0}

    t0 = time.process_time()
    for case in test_cases:
        ldmtool("--seed", args.seed, "impute", observed / f"{case}_0000.nii.gz", "--ae", work / "AE", "--ldm",
                work / "LDM", "--out", work / "imputed", "--missing-channel", "flair", "--samples", args.samples,
                "--steps", args.steps, "--guidance", args.guidance, "--batch-size", args.samples)  # fmt: skip
        flair[methods[0]][case] = read(work / "imputed" / f"{case}_imputed_{FLAIR:04d}.nii.gz")[0]
    per_case[methods[0]] = (time.process_time() - t0) / len(test_cases)

    reference = np.concatenate([read(channel(train, c, FLAIR))[0] for c in train_cases], axis=2)
    for method, source in ((methods[1], CONTRASTS.index("t2")), (methods[2], CONTRASTS.index("t1"))):
        t0 = time.process_time()
        for case in test_cases:
            flair[method][case] = histogram_copy(read(channel(test, case, source))[0], reference)
        per_case[method] = (time.process_time() - t0) / len(test_cases)

    flair_range = percentile_range(reference)
    net, train_cpu[methods[3]] = cpu_timed(train_unet, train, train_cases, flair_range, args.unet_steps, args.seed)
    t0 = time.process_time()
    for case in test_cases:
        t1, t2 = (read(channel(test, case, c))[0] for c in (0, 1))
        flair[methods[3]][case] = unet_predict(net, t1, t2, flair_range)
    per_case[methods[3]] = (time.process_time() - t0) / len(test_cases)

    # scores: images, then the segmenter on every FLAIR (the true one included)
    rows: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        rows[method] = {}
        for case in test_cases:
            truth, _ = read(channel(test, case, FLAIR))
            head = read(test / "labelsTr" / f"{case}.nii.gz")[0] > 0
            for k, v in image_scores(flair[method][case], truth, head).items():
                rows[method].setdefault(k, []).append(v)
    dice = {}
    for tag, method in enumerate(("true FLAIR", *methods)):
        folder = work / "segin" / f"m{tag}"
        for case in test_cases:
            for c in range(len(CONTRASTS)):
                dst = folder / f"{case}_{c:04d}.nii.gz"
                dst.parent.mkdir(parents=True, exist_ok=True)
                if c == FLAIR and method != "true FLAIR":
                    write(flair[method][case], read(channel(test, case, c))[1], dst)
                else:
                    shutil.copy(channel(test, case, c), dst)
        ldmtool("segment", folder, "--model", work / "SEG", "--out", work / "segout" / f"m{tag}", "--overwrite")
        dice[method] = lesion_dice(work / "segout" / f"m{tag}", test, test_cases, lesion, num_classes)

    report(args, rows, dice, train_cpu, per_case, cpu, len(train_cases), len(test_cases))


def _ms(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.3f} ± {v.std():.3f}" if v.size else "–"


def _ms_db(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.2f} ± {v.std():.2f}"


def report(args, rows, dice, train_cpu, per_case, cpu, n_train, n_test) -> None:
    print(f"# Missing FLAIR synthesised from T1 + T2 on demo phantoms ({n_train} training, {n_test} held out, "
          f"shape {args.shape}, {'examples/tiny.yaml' if args.quick else 'examples/demo.yaml'})\n")  # fmt: skip
    print(f"generator: train-ae {args.ae_steps} steps + train-ldm {args.ldm_steps} steps; impute: DDIM {args.steps} "
          f"steps, guidance {args.guidance:g}, {args.samples} samples per case (their mean scored); UNet regression: "
          f"{args.unet_steps} steps of 16 slices; segmenter: train-seg --arch unet, {args.seg_steps} steps of 16 "
          f"slices ({cpu['seg']:.0f} CPU s)\n")  # fmt: skip
    print("PSNR (dB) and SSIM in [0, 1] by the true FLAIR's 0.5/99.5 percentiles; lesion Dice of the segmenter "
          "on T1, T2 and this FLAIR; mean ± sd over the held-out cases\n")  # fmt: skip
    print("| method | PSNR head | SSIM head | PSNR volume | SSIM volume | lesion Dice (seg on this FLAIR) | "
          "training CPU s | CPU s per case |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(f"| true FLAIR (reference) | – | – | – | – | {_ms(dice['true FLAIR'])} | – | – |")
    for method, r in rows.items():
        print(f"| {method} | {_ms_db(r['psnr_head'])} | {_ms(r['ssim_head'])} | {_ms_db(r['psnr'])} | "
              f"{_ms(r['ssim'])} | {_ms(dice[method])} | {train_cpu[method]:.0f} | {per_case[method]:.1f} |")  # fmt: skip
    scores = {
        "PSNR head": {m: np.mean(r["psnr_head"]) for m, r in rows.items()},
        "SSIM head": {m: np.mean(r["ssim_head"]) for m, r in rows.items()},
        "lesion Dice": {m: np.mean(dice[m]) for m in rows},
    }
    best = {k: [m for m, v in s.items() if v == max(s.values())] for k, s in scores.items()}  # ties: all
    print("\nbest (highest mean): " + "; ".join(f"{k}: {' = '.join(m)}" for k, m in best.items()))
    top = scores["lesion Dice"][best["lesion Dice"][0]]
    print(f"lesion Dice on the true FLAIR {np.mean(dice['true FLAIR']):.3f}, on the best synthetic one {top:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny phantoms and models: a smoke test, not a result")
    ap.add_argument("--n", type=int, default=32, help="training phantoms")
    ap.add_argument("--test", type=int, default=8, help="held-out phantoms")
    ap.add_argument("--shape", default="64,64,32")
    ap.add_argument("--ae-steps", type=int, default=1200, help="train-ae optimisation steps")
    ap.add_argument("--ldm-steps", type=int, default=1200, help="train-ldm optimisation steps")
    ap.add_argument("--seg-steps", type=int, default=600, help="train-seg steps (batches of 16 slices)")
    ap.add_argument("--unet-steps", type=int, default=1200, help="UNet regression steps (batches of 16 slices)")
    ap.add_argument("--steps", type=int, default=25, help="impute denoising steps")
    ap.add_argument("--samples", type=int, default=4, help="imputations per case (--samples of impute)")
    ap.add_argument("--guidance", type=float, default=0.5, help="impute self-guidance strength")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the data, models and outputs here (a new folder)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.test, args.shape = 6, 2, "32,32,16"
        args.ae_steps, args.ldm_steps, args.seg_steps, args.unet_steps, args.steps, args.samples = 4, 4, 4, 4, 3, 2
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"--work {args.work} is not empty; give a new folder")
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ldmtool-multicontrast-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    with recorded("multicontrast", enabled="--quick" not in sys.argv and "--help" not in sys.argv):
        main()
