"""Evaluate on the demo: real phantoms vs ldmtool samples vs a deliberately bad generator
(Gaussian-blurred training volumes) vs copies of training volumes, side by side in one run.

Data and model (about 12 minutes on a shared 2-core CPU):
    ldmtool --seed 0 demo-data runs/bench/train --n 40 --shape 32,32,16
    ldmtool --seed 1 demo-data runs/bench/test --n 20 --shape 32,32,16
    ldmtool --device cpu train-ae runs/bench/train --out runs/bench/ae --config examples/demo.yaml \
        --channels 16,32 --latent-channels 4 --max-minutes 4 --epochs 30
    ldmtool --device cpu train-ldm runs/bench/train --ae runs/bench/ae --out runs/bench/ldm \
        --config examples/demo.yaml --channels 16,32,64 --max-minutes 6 --steps 3000
    ldmtool --device cpu sample --ae runs/bench/ae --ldm runs/bench/ldm --n 20 --steps 50 --out runs/bench/samples

Then:
    python benchmarks/evaluate_demo.py --train runs/bench/train --test runs/bench/test \
        --samples runs/bench/samples --out runs/bench/eval [--seg-steps 300] [--image-size 128]

Builds under OUT: `heldout` (new phantoms, a second real set, seed 2), `blurred` (every training
volume blurred, σ = 1.5 voxels, labels kept) and `copies` (the training volumes themselves); runs
the evaluation on each and on the samples (real = --test), and prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ldmtool


def build_sets(train: Path, out: Path, n_heldout: int, shape: tuple[int, int, int], sigma: float) -> dict[str, Path]:
    from scipy import ndimage

    from ldmtool.data.phantoms import write_demo_dataset
    from ldmtool.io import Volume, load_dataset, read_nifti, write_nifti

    sets = {}
    held = out / "sets" / "heldout"
    if not held.exists():
        write_demo_dataset(held, n_cases=n_heldout, shape=shape, seed=2)
    sets["real (held-out phantoms)"] = held
    copies = out / "sets" / "copies"
    if not copies.exists():
        shutil.copytree(train, copies)
    blurred = out / "sets" / "blurred"
    if not blurred.exists():
        shutil.copytree(train, blurred)
        for case in load_dataset(blurred).cases:
            vol = read_nifti(case.image)
            arr = ndimage.gaussian_filter(np.asarray(vol.array, np.float32), sigma)
            write_nifti(Volume(arr, vol.affine, {}), case.image)
    sets[f"blurred training volumes (σ={sigma:g})"] = blurred
    sets["copies of training volumes"] = copies
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--samples", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seg-steps", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--slices-per-view", type=int, default=3)
    ap.add_argument("--sigma", type=float, default=1.5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from ldmtool.config import EvaluateConfig
    from ldmtool.evaluate.html import write_report
    from ldmtool.evaluate.report import run_evaluation
    from ldmtool.io import load_dataset, read_nifti
    from ldmtool.runtime import resolve_device

    shape = tuple(read_nifti(load_dataset(args.train).cases[0].image).shape)
    n_test = len(load_dataset(args.test).cases)
    sets = {"ldmtool samples": args.samples, **build_sets(args.train, args.out, n_test, shape, args.sigma)}
    cfg = EvaluateConfig(seg_steps=args.seg_steps, image_size=args.image_size, slices_per_view=args.slices_per_view)
    rows = []
    for name, folder in sets.items():
        print(f"== {name}: {folder}", flush=True)
        rep = run_evaluation(
            args.test,
            folder,
            args.out / "reports" / folder.name,
            cfg,
            train_dir=args.train,
            test_dir=args.test,
            device=resolve_device(args.device),
            seed=0,
        )
        write_report(rep, args.out / "reports" / folder.name)
        rows.append((name, rep))
    (args.out / "summary.json").write_text(json.dumps({n: r for n, r in rows}, indent=2, default=str))

    def g(rep, *keys, fmt="{:.3f}"):
        for k in keys:
            if not isinstance(rep, dict) or k not in rep or rep[k] is None:
                return "–"
            rep = rep[k]
        return fmt.format(rep) if isinstance(rep, (int, float)) else str(rep)

    head = [
        "set",
        "precision ↑",
        "recall ↑",
        "FID ↓",
        "pairwise SSIM",
        "pairwise MS-SSIM",
        "samples/s",
        "max SSIM to train ↓",
        "flagged",
        "NN ratio",
        "Dice syn",
        "Dice real+syn",
        "Dice syn FGSM",
        "Dice syn PGD",
        "Dice syn noise",
    ]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, rep in rows:
        u, r, p = (
            rep.get("utility", {}).get("results", {}),
            rep.get("robustness", {}).get("results", {}),
            rep.get("privacy", {}),
        )
        print(
            "| "
            + " | ".join(
                [
                    name,
                    g(rep, "fidelity", "precision"),
                    g(rep, "diversity", "recall"),
                    g(rep, "fidelity", "fid", fmt="{:.1f}"),
                    g(rep, "diversity", "pairwise_ssim_synthetic"),
                    g(rep, "diversity", "pairwise_ms_ssim_synthetic", "value"),
                    g(rep, "speed", "samples_per_second", fmt="{:.2f}"),
                    g(p, "max_ssim_mean"),
                    f"{p.get('flagged', '–')}/{len(p.get('per_sample', []))}",
                    g(p, "memorisation", "ratio"),
                    g(u, "synthetic", "dice_mean"),
                    g(u, "real+synthetic", "dice_mean"),
                    g(r, "synthetic", "fgsm", "dice_mean"),
                    g(r, "synthetic", "pgd", "dice_mean"),
                    g(r, "synthetic", "noise", "dice_mean"),
                ]
            )
            + " |"
        )
    first = rows[0][1]
    print()
    print(
        f"reference: real training set → Dice {g(first, 'utility', 'results', 'real', 'dice_mean')} "
        f"(FGSM {g(first, 'robustness', 'results', 'real', 'fgsm', 'dice_mean')}, "
        f"PGD {g(first, 'robustness', 'results', 'real', 'pgd', 'dice_mean')}, "
        f"noise {g(first, 'robustness', 'results', 'real', 'noise', 'dice_mean')}); "
        f"held-out real max SSIM to train {g(first, 'privacy', 'heldout_max_ssim_mean')}; "
        f"pairwise SSIM / MS-SSIM of real {g(first, 'diversity', 'pairwise_ssim_real')} / "
        f"{g(first, 'diversity', 'pairwise_ms_ssim_real', 'value')}; "
        f"extractor {first.get('feature_extractor', {}).get('name')}; settings: seg_steps={cfg.seg_steps}, "
        f"image_size={cfg.image_size}, slices_per_view={cfg.slices_per_view}, ε={cfg.epsilon}, σ_noise={cfg.noise_sigma}"
    )


if __name__ == "__main__":
    from _results import recorded  # benchmarks/_results.py: the stamped results file

    with recorded("evaluate_demo"):
        main()
