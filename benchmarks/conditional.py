"""Synthesis on the user's terms, on the demo phantoms: mask-to-image fidelity and lesion insertion.

    python benchmarks/conditional.py                 # 48 phantoms 64×64×32, examples/demo.yaml models
    python benchmarks/conditional.py --quick         # smoke test: 8 tiny phantoms, tiny models, ~2 min on CPU

Every step runs through the `ldmtool` commands a user would type (in this process):
  1. `demo-data`, split into training phantoms and held-out ones (--test);
  2. `train-ae`, `train-ldm --condition-on labels` (mask-to-image) once per `--label-branch`
     (concat: the map as input channels; controlnet: a ControlNet branch; same config, seed and
     steps), and a segmenter trained on the real training phantoms (`train-seg --arch unet`);
  3. mask-to-image: `sample --labels` with the held-out label maps; the segmenter's Dice on the
     synthetic images against the requested maps vs its Dice on the real held-out images against
     their true maps (target: within 0.05, per foreground class); the branch with the higher
     mean Dice is used for step 4;
  4. lesion insertion: in every held-out phantom a ball (--radius voxels) inside the head, away from
     its lesions, is inpainted with `inpaint --label lesion` (both --method repaint and guidance).
     Reported: voxels outside the region bit-exact (target: all), the share of new lesion voxels
     (segmenter: lesion, where the input had none) inside the region (target 100 %), their volume
     against the region's (target within 20 %), and the seam score of the run record.

The IXI and hippocampus targets of the same issue (tissue classes from held-out IXI label maps;
deformed-label augmentation at N = 10 against joint sampling) need the real data sets and a GPU;
they are not run by this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _results import recorded  # noqa: E402

from ldmtool.cli.main import main as ldmtool_main  # noqa: E402

LOG: list[Path] = []  # where the commands' own output goes (the work folder's ldmtool.log)


def ldmtool(*args) -> None:
    """Run one `ldmtool` command in this process, its output to the log; an error if it fails."""
    t0 = time.perf_counter()
    with open(LOG[0], "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        print("$ ldmtool " + " ".join(map(str, args)), flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            code = ldmtool_main(["--quiet", *[str(a) for a in args]])
    if code != 0:
        tail = "\n".join(LOG[0].read_text().splitlines()[-5:])
        raise SystemExit(f"ldmtool {' '.join(map(str, args))} failed (exit {code}); last lines of {LOG[0]}:\n{tail}")
    name = next(a for a in map(str, args) if not a.startswith("-") and not a.isdigit())
    print(f"  ldmtool {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def split(data: Path, test: Path, n_test: int) -> list[str]:
    """Move the last `n_test` cases of an nnU-Net folder into `test` (same layout); their case ids."""
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (data / "imagesTr").glob("*_0000.nii.gz"))[-n_test:]
    for sub in ("imagesTr", "labelsTr"):
        (test / sub).mkdir(parents=True, exist_ok=True)
    for case in cases:
        shutil.move(data / "imagesTr" / f"{case}_0000.nii.gz", test / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.move(data / "labelsTr" / f"{case}.nii.gz", test / "labelsTr" / f"{case}.nii.gz")
    meta = json.loads((data / "dataset.json").read_text())
    meta["numTraining"] -= n_test
    (data / "dataset.json").write_text(json.dumps(meta, indent=2))
    meta["numTraining"] = n_test
    (test / "dataset.json").write_text(json.dumps(meta, indent=2))
    return cases


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def dice_table(work: Path, test: Path, cases: list[str], names: dict[str, int], branches: list[str]) -> str:
    """Segmenter Dice per class: real held-out images vs their maps, synthetic images (one model per
    label branch) vs the requested maps; returns the branch with the higher mean foreground Dice."""
    from ldmtool.metrics import dice_per_class

    k = max(names.values()) + 1
    real, synth = [], {b: [] for b in branches}
    for case in cases:
        truth, _ = read(test / "labelsTr" / f"{case}.nii.gz")
        real.append(dice_per_class(read(work / "SR" / f"{case}_seg.nii.gz")[0], truth, k))
        for b in branches:
            synth[b].append(dice_per_class(read(work / f"SM-{b}" / f"synth_{case}_000_seg.nii.gz")[0], truth, k))
    real_m, synth_m = np.nanmean(real, 0), {b: np.nanmean(v, 0) for b, v in synth.items()}
    print("\n## Mask-to-image: segmenter Dice (held-out label maps; target: synthetic within 0.05 of real)\n")
    print("| class | real images | " + " | ".join(f"synthetic, {b} (difference)" for b in branches) + " |")
    print("|---|---|" + "---|" * len(branches))
    for name, value in names.items():
        if value == 0:
            continue
        r = real_m[value - 1]
        cells = [f"{synth_m[b][value - 1]:.3f} ({synth_m[b][value - 1] - r:+.3f})" for b in branches]
        print(f"| {name} | {r:.3f} | " + " | ".join(cells) + " |")
    best = max(branches, key=lambda b: float(np.nanmean(synth_m[b])))
    print(f"\nHigher mean foreground Dice on synthetic images: {best} (used for the insertion below).")
    return best


def insertion_region(label: np.ndarray, lesion: int, radius: float) -> np.ndarray:
    """A ball of `radius` voxels centred at the head voxel deepest inside the head and farthest from lesions."""
    from scipy import ndimage as ndi

    head = (label > 0) & (label != lesion)
    depth = ndi.distance_transform_edt(head) * ndi.distance_transform_edt(label != lesion).clip(max=3 * radius)
    centre = np.unravel_index(int(np.argmax(depth)), label.shape)
    grid = np.indices(label.shape)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    return ball & head


def insertion(work: Path, test: Path, cases: list[str], args, names: dict[str, int], branch: str) -> None:
    """Lesion insertion by `inpaint --label lesion`, both methods; the table of the targets."""
    import nibabel as nib

    lesion = names["lesion"]
    rows = []
    for method in ("repaint", "guidance"):
        exact, inside, ratio, seams = [], [], [], []
        for case in cases:
            image_path = test / "imagesTr" / f"{case}_0000.nii.gz"
            label, affine = read(test / "labelsTr" / f"{case}.nii.gz")
            region = insertion_region(label, lesion, args.radius)
            region_path = work / "regions" / f"{case}.nii.gz"
            region_path.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(region.astype(np.uint8), affine), region_path)
            out = work / f"I-{method}"
            ldmtool("--seed", args.seed, "inpaint", image_path, "--region", region_path, "--labels",
                    test / "labelsTr" / f"{case}.nii.gz", "--label", "lesion", "--ae", work / "AE", "--ldm",
                    work / f"LDM-{branch}", "--out", out, "--method", method, "--steps", args.steps, "--overwrite")  # fmt: skip
            before, _ = read(image_path)
            after, _ = read(out / f"{case}_inpainted.nii.gz")
            exact.append(bool(np.array_equal(before[~region], after[~region])))
            ldmtool("segment", out / f"{case}_inpainted.nii.gz", "--model", work / "SEG", "--out", out / "seg",
                    "--overwrite")  # fmt: skip
            seg, _ = read(out / "seg" / f"{case}_inpainted_seg.nii.gz")
            new = (seg == lesion) & (label != lesion)
            inside.append(float((new & region).sum() / max(new.sum(), 1)))
            ratio.append(float((new & region).sum() / region.sum()))
            seams.append(json.loads((out / f"{case}_inpaint.json").read_text())["seam"])
        rows.append((method, exact, inside, ratio, seams))
    print(
        f"\n## Lesion insertion (`inpaint --label lesion`, ball of radius {args.radius} voxels, {len(cases)} phantoms)\n"
    )
    print("| method | outside bit-exact | new lesion inside region | lesion volume / region | "
          "within 20 % | seam: border gradient | real tissue p50 / p95 | seam within p95 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for method, exact, inside, ratio, seams in rows:
        ok = sum(abs(r - 1) <= 0.2 for r in ratio)
        border = np.mean([s["border_gradient"] for s in seams])
        p50, p95 = (np.mean([s[k] for s in seams]) for k in ("tissue_gradient_p50", "tissue_gradient_p95"))
        within = sum(bool(s["within"]) for s in seams)
        print(f"| {method} | {sum(exact)}/{len(exact)} | {100 * np.mean(inside):.1f} % (min {100 * min(inside):.1f} %) | "
              f"{np.mean(ratio):.2f} | {ok}/{len(ratio)} | {border:.4g} | {p50:.4g} / {p95:.4g} | {within}/{len(seams)} |")  # fmt: skip


def run(args, work: Path) -> None:
    config = REPO / "examples" / ("tiny.yaml" if args.quick else "demo.yaml")
    data, test = work / "data", work / "test"
    work.mkdir(parents=True, exist_ok=True)
    LOG[:] = [work / "ldmtool.log"]
    ldmtool("--seed", args.seed, "demo-data", data, "--n", args.n, "--shape", args.shape)
    cases = split(data, test, args.test)
    names = json.loads((data / "dataset.json").read_text())["labels"]
    ldmtool("--seed", args.seed, "train-ae", data, "--out", work / "AE", "--config", config)
    extra = ["--steps", args.ldm_steps] if args.ldm_steps else []
    branches = args.label_branch.split(",")
    ldmtool("--seed", args.seed, "train-seg", data, "--out", work / "SEG", "--arch", "unet", "--epochs", args.seg_epochs,
            *(["--config", config] if args.quick else []))  # fmt: skip
    ldmtool("segment", test / "imagesTr", "--model", work / "SEG", "--out", work / "SR")
    for b in branches:  # the same data, config, seed and step budget for every branch
        ldm = work / f"LDM-{b}"
        ldmtool("--seed", args.seed, "train-ldm", data, "--ae", work / "AE", "--out", ldm, "--config", config,
                "--condition-on", "labels", "--label-branch", b, *extra)  # fmt: skip
        ldmtool("--seed", args.seed, "sample", "--ae", work / "AE", "--ldm", ldm, "--labels", test, "--out",
                work / f"M-{b}", "--steps", args.steps, "--guidance", args.guidance)  # fmt: skip
        ldmtool("segment", work / f"M-{b}" / "imagesTr", "--model", work / "SEG", "--out", work / f"SM-{b}")
    print(f"# Conditional synthesis on demo phantoms ({args.n - args.test} training, {args.test} held out, "
          f"shape {args.shape}, {config.name}, {args.steps} sampling steps, guidance {args.guidance:g})")  # fmt: skip
    best = dice_table(work, test, cases, names, branches)
    insertion(work, test, cases, args, names, best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny phantoms and models: a smoke test, not a result")
    ap.add_argument("--n", type=int, default=48, help="phantoms in all")
    ap.add_argument("--test", type=int, default=8, help="held-out phantoms")
    ap.add_argument("--shape", default="64,64,32")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps")
    ap.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of mask-to-image")
    ap.add_argument("--ldm-steps", type=int, default=None, help="override the config's train-ldm steps")
    ap.add_argument("--seg-epochs", type=int, default=30)
    ap.add_argument("--radius", type=float, default=3.0, help="inserted lesion radius in voxels")
    ap.add_argument("--label-branch", default="concat,controlnet", help="train-ldm --label-branch values to compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the models and outputs here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.test, args.shape, args.steps, args.seg_epochs = 8, 2, "32,32,16", 3, 2
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ldmtool-conditional-")
    work = args.work or Path(tmp.name)
    try:
        run(args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    with recorded("conditional", enabled="--quick" not in sys.argv):
        main()
