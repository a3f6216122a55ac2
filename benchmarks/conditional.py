"""Synthesis on the user's terms, on the demo phantoms: mask-to-image fidelity and lesion insertion.

    python benchmarks/conditional.py                 # 48 phantoms 64×64×32, examples/demo.yaml models
    python benchmarks/conditional.py --n 24 --test 6 --shape 32,32,16 --ae-minutes 2 --seg-steps 1500 --seg-minutes 6 --ldm-steps 600 --steps 25
    python benchmarks/conditional.py --quick         # smoke test: 8 tiny phantoms, tiny models, ~2 min on CPU

Every step runs through the `ldmtool` commands a user would type (in this process):
  1. `demo-data`, split into training phantoms and held-out ones (--test);
  2. `train-ae`, a segmenter on the real training phantoms (`train-seg --arch unet`), and
     `train-ldm --condition-on labels` (mask-to-image) once per `--label-branch` (concat: the map as
     input channels; controlnet: a ControlNet branch; BRANCH:K adds `--label-detail K`, the map's
     K×K sub-squares of every latent voxel) on one budget: the same data, config, seed and
     number of steps (`--ldm-steps`; without it the config's steps and time limit), the table
     giving each model's steps and seconds;
  3. mask-to-image: `sample --labels` with the held-out label maps, judged by `evaluate --only
     fidelity,diversity,condition --segmenter SEG` against the held-out phantoms: the segmenter's Dice
     on the synthetic images against the requested maps beside its Dice on the real images of the
     same maps, FID, precision and recall; the branch with the higher mean Dice is used for step 4;
  4. lesion insertion: in every held-out phantom a ball (--radius voxels) inside the head, away from
     its lesions, placed twice: at the centre (over the ventricles, where no lesion is ever drawn) and
     in lesion tissue (as bright as the tissue around the training lesions, as --fewshot places them),
     is inpainted with `inpaint --label lesion --guidance G --margin M --grow K` (--inpaint-guidance,
     --inpaint-margin, --inpaint-grow; --method repaint and guidance), judged by `evaluate --only condition`:
     voxels outside the region bit-exact (target: all), the seam score of the run record (border gradient against the 95th percentile in
     real tissue), and the segmented new lesion against the region (Dice, volume ratio, the share of
     it inside the region, centroid distance); beside them the segmenter's own error on the real
     lesions of the same phantoms (`ldmtool segment`), the floor of those measures.

With `--ixi DIR` (../shared/data/ixi_t1_2mm) the mask-to-image part runs on real brains instead:
    python benchmarks/conditional.py --ixi ../shared/data/ixi_t1_2mm --label-branch concat   # ~125 CPU-min
the fixed split of benchmarks/real_data.py (100 training brains, 48 held out, --split-seed), the
DLMUSE parcellation merged into four tissue classes (examples/labels/ixi_tissues.yaml), every image and
map brought to --ixi-spacing (4 mm by default: 2×2×2 blocks, mean intensity, majority class; 2 mm keeps
the data's own grid) so that the segmenter, the generator and the requested maps share one grid;
`train-ae`/`train-ldm` with --ixi-config (examples/ixi_cpu.yaml) on wall-clock budgets (--ae-minutes,
--ldm-minutes: 40 and 70 by default, the budgets that met the 0.05 target on this 2-core CPU; README,
"Mask-to-image on IXI"), the segmenter on the real training brains,
and images sampled for the first --test held-out maps, at every --ixi-guidance scale, beside the
segmenter's Dice on the autoencoder's reconstructions of the real images (the autoencoder's ceiling).
On a GPU, at 2 mm (at 4 mm the autoencoder's ceiling alone costs most of the 0.05 allowance):
    python benchmarks/conditional.py --ixi ../shared/data/ixi_t1_2mm --label-branch concat \
        --ixi-spacing 2 --device cuda
With `--work W --reuse` the models an earlier run left in W that ran to their end (AE, SEG, LDM-BRANCH)
are kept and only the rest is trained: e.g. a folder holding a copy of another run's AE and SEG
trains only the denoiser, so two denoiser budgets meet the same autoencoder and segmenter (an
autoencoder trained anew, none finished in W, has every denoiser trained anew too). The few-shot
part below keeps AE, NORMAL, FEW and SEG-REAL the same way (the same --seed: the phantoms are
drawn again from it), so inpainting settings can be compared on the same models.
No lesion insertion (brains have no lesions).

With `--fewshot K` the few-shot lesion part runs instead (on phantoms):
    python benchmarks/conditional.py --fewshot 5                # ~15 CPU-min at 64×64×32
  1. `demo-data --lesion-cases` training phantoms, of which exactly K have lesions (the "annotated
     lesion cases"; lesion phantoms beyond the K-th are dropped) and the rest are lesion-free, and
     --test held-out phantoms with lesions (another seed);
  2. `train-ae` on the training phantoms, a model of normal anatomy (`train-ldm` on the lesion-free
     ones), fine-tuned on the K lesion cases alone (`train-ldm --condition-on labels --init NORMAL`,
     --fewshot-steps; --fewshot-lesion-weight W: its `--lesion-weight`, else the config's);
  3. into every lesion-free training phantom, `inpaint --label lesion` paints the lesions of one of
     the K cases (their shapes and sizes, each moved to a random place at least 6 mm inside the head
     where the image is like the tissue around the K real lesions, i.e. not over the dark
     ventricles); once per --fewshot-label-from value (default region,painted: the same images, the
     label map marking the whole region, or lesion only where the decoder reads one; `segmenter`:
     lesion only where a UNet trained on the real training phantoms alone segments one in the region);
     --fewshot-copies C paints C such cases into every lesion-free phantom (another annotated case's
     lesions each time, at another place); a list (1,3) compares the sets side by side;
     --fewshot-strength S below 1 starts each region from a sketch instead of pure noise (`inpaint
     --init SKETCH --strength S`, SDEdit): the phantom with the region's voxels brightened by how
     much brighter the K real lesions are than the tissue around them (`--fewshot-sketch scaled`), or
     with the annotated case's own lesion voxels pasted at the new place (`--fewshot-sketch lesion`);
     --fewshot-pasted adds those sketches themselves (copy and paste, no diffusion) as a control;
  4. `evaluate --only utility` (--fewshot-seeds seeds): a downstream segmenter trained on the real
     training phantoms alone, on the inpainted ones alone, and on both (--fewshot-real-share of every
     batch real: 0.75, chosen on the seed-0 phantoms), scored on the held-out phantoms. Target:
     real + inpainted beats real alone in lesion Dice. The header also gives how bright the labelled
     lesions are (mean over the head's median), of the K real cases and of the inpainted ones.
     --fewshot-headroom adds a row with as many more real lesion phantoms (another demo-data seed)
     in place of the inpainted ones: what inpainted lesions as good as real ones could add.
The autoencoder and the model of normal anatomy train on examples/demo.yaml's wall-clock limits
unless `--ae-steps` and `--ldm-steps` give them step counts: a run on a loaded machine then trains
the same models as one on an idle machine, only slower.

The hippocampus target of the same issue (deformed-label augmentation at N = 10 against joint
sampling) is run by `benchmarks/real_data.py --only augment --aug-modes joint,labels`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _commands import run_logged  # noqa: E402
from _results import recorded, save_figure  # noqa: E402

from ldmtool.data.lesions import head_median, paste_lesions, transplant  # noqa: E402

LOG: list[Path] = []  # where the commands' own output goes (the work folder's ldmtool.log)
DEVICE: list[str] = ["auto"]  # --device of every command


def ldmtool(*args) -> None:
    """Run one `ldmtool` command in this process, its output to the work folder's log."""
    run_logged(LOG[0], "--device", DEVICE[0], *args)


def split(data: Path, test: Path, n_test: int) -> list[str]:
    """Move the last `n_test` cases of an nnU-Net folder into `test` (same layout); their case ids."""
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (data / "imagesTr").glob("*_0000.nii.gz"))[-n_test:]
    subset(data, test, cases, move=True)
    meta = json.loads((data / "dataset.json").read_text())
    meta["numTraining"] -= n_test
    (data / "dataset.json").write_text(json.dumps(meta, indent=2))
    return cases


def subset(src: Path, dst: Path, cases: list[str], move: bool = False) -> Path:
    """An nnU-Net folder of some cases of another (files copied, or moved), with its own dataset.json."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for case in cases:
        for name in (f"imagesTr/{case}_0000.nii.gz", f"labelsTr/{case}.nii.gz"):
            (shutil.move if move else shutil.copy)(src / name, dst / name)
    meta = json.loads((src / "dataset.json").read_text())
    meta["numTraining"] = len(cases)
    (dst / "dataset.json").write_text(json.dumps(meta, indent=2))
    return dst


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def evaluate(work: Path, synthetic: Path, test: Path, out: str, only: str) -> dict:
    """`ldmtool evaluate --only ONLY --segmenter SEG` of a synthetic folder against the held-out phantoms."""
    ldmtool("evaluate", "--real", test, "--synthetic", synthetic, "--out", work / out, "--segmenter", work / "SEG",
            "--only", only, "--views", "axial,coronal", "--cache-dir", "none")  # fmt: skip
    return json.loads((work / out / "report.json").read_text())


def finished(out: Path) -> bool:
    """Whether a training folder holds a run that ran to its end (its state.json says complete)."""
    state = out / "state.json"
    return (
        state.is_file()
        and bool(json.loads(state.read_text()).get("complete"))
        and (out / "model.safetensors").is_file()
    )


def train(reuse: bool, out: Path, *cmd) -> bool:
    """One training command writing `out`, skipped when `reuse` and `out` already holds a finished
    run (its config is not compared with this run's flags: --reuse is for going on with the same
    models, e.g. sampling them again or training only the denoiser anew in a copy of the folder).
    Whether it trained."""
    if reuse and finished(out):
        print(f"--reuse: {out.name} kept as it is ({trained(out)})", file=sys.stderr)
        return False
    ldmtool(*cmd)
    return True


def repaint_flags(args) -> list:
    """`inpaint --sampler --resample` of the repaint method (--inpaint-sampler, --inpaint-resample), and
    --keep-detail (--inpaint-keep-detail)."""
    detail = ["--keep-detail"] if args.inpaint_keep_detail else []
    return ["--sampler", args.inpaint_sampler, "--resample", args.inpaint_resample, *detail]


def lesion_weight_flags(args) -> list:
    """`train-ldm --lesion-weight` of the fine-tuning on the K lesion cases (--fewshot-lesion-weight;
    none: the config's)."""
    return [] if args.fewshot_lesion_weight is None else ["--lesion-weight", args.fewshot_lesion_weight]


def budget_flags(steps: int | None, minutes: float | None) -> list:
    """A training command's budget: a step count (no time limit then: the same model on any machine,
    under any load), else a time limit, else nothing (the config's own)."""
    if steps:
        return ["--steps", steps, "--max-minutes", 600]
    return ["--max-minutes", minutes] if minutes else []


def trained(ldm: Path) -> str:
    """'STEPS steps, SECONDS s' of a training run (its state.json)."""
    state = json.loads((ldm / "state.json").read_text())
    return f"{state['step']} steps, {state['elapsed_seconds']:.0f} s"


def mask_to_image_table(
    reports: dict[str, dict], budgets: dict[str, str], classes: list[str], use: str = " (used for the insertion below)"
) -> str:
    """Condition fidelity (segmenter Dice against the requested maps, evaluate's `condition` stage) and
    fidelity/diversity of each label branch; returns the branch with the higher mean Dice."""
    print("\n## Mask-to-image: segmenter Dice against the requested maps, and fidelity (`evaluate`)\n")
    cls = " | ".join(f"Dice {c}" for c in classes)
    print(
        f"| label branch | training | {cls} | Dice mean | real images, same maps | difference | FID | precision | recall |"
    )
    print("|---|---|" + "---|" * (len(classes) + 6))
    for b, rep in reports.items():
        m = rep["condition_fidelity"]["mask_to_image"]
        dice = " | ".join(f"{m['synthetic']['dice'][c]:.3f}" for c in classes)
        real, gap = m["real"]["dice_mean"], m["gap_dice_mean"]
        fid, div = rep["fidelity"], rep["diversity"]
        print(f"| {b} | {budgets[b]} | {dice} | {m['synthetic']['dice_mean']:.3f} | {real:.3f} | {gap:+.3f} | "
              f"{fid['fid']:.4g} | {fid['precision']:.3f} | {div['recall']:.3f} |")  # fmt: skip
    for b, rep in reports.items():
        real = rep["condition_fidelity"]["mask_to_image"]["real"]["dice"]
        print(f"\nReal images, per class ({b} report): " + ", ".join(f"{c} {real[c]:.3f}" for c in classes))
        break
    best = max(reports, key=lambda b: reports[b]["condition_fidelity"]["mask_to_image"]["synthetic"]["dice_mean"])
    print(f"\nHigher mean Dice on synthetic images: {best}{use}.")
    return best


def insertion_region(label: np.ndarray, lesion: int, radius: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """A ball of `radius` voxels inside the head, away from its lesions: centred at the head voxel
    deepest inside the head (the middle of the phantom, over its ventricles), or with `allowed`
    (`lesion_tissue`) at the allowed voxel farthest from anything not allowed and from the lesions."""
    from scipy import ndimage as ndi

    head = (label > 0) & (label != lesion)
    if allowed is None:
        depth = ndi.distance_transform_edt(head) * ndi.distance_transform_edt(label != lesion).clip(max=3 * radius)
    else:
        depth = ndi.distance_transform_edt(allowed & head & ~ndi.binary_dilation(label == lesion, iterations=3))
    centre = np.unravel_index(int(np.argmax(depth)), label.shape)
    grid = np.indices(label.shape)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    return ball & head


def segmenter_on_real_lesions(work: Path, test: Path, cases: list[str], lesion: int) -> dict[str, float]:
    """The segmenter's own error on the held-out phantoms' real lesions (`ldmtool segment`), the
    reference for the insertion measures: the share of its lesion voxels inside the true lesion
    (precision), its lesion volume over the true one, and Dice; means over the cases with lesions."""
    out = work / "S-real"
    ldmtool("segment", *[test / "imagesTr" / f"{c}_0000.nii.gz" for c in cases], "--model", work / "SEG", "--out", out,
            "--overwrite")  # fmt: skip
    inside, volume, dice = [], [], []
    for case in cases:
        true = read(test / "labelsTr" / f"{case}.nii.gz")[0] == lesion
        pred = read(out / f"{case}_seg.nii.gz")[0] == lesion
        if not true.any():
            continue
        both = int((true & pred).sum())
        inside.append(both / pred.sum() if pred.any() else np.nan)
        volume.append(pred.sum() / true.sum())
        dice.append(2 * both / (true.sum() + pred.sum()))
    return {
        "n": len(volume),
        "inside": float(np.nanmean(inside)) if volume else np.nan,
        "volume": float(np.mean(volume)) if volume else np.nan,
        "dice": float(np.mean(dice)) if volume else np.nan,
    }


def insertion(work: Path, test: Path, cases: list[str], args, names: dict[str, int], branch: str) -> None:
    """Lesion insertion by `inpaint --label lesion`, both methods and both placements of the region,
    measured by `evaluate --only condition`, beside the segmenter's error on real lesions."""
    import nibabel as nib

    lesion = int(names["lesion"])
    data = work / "data"
    train_lesions = lesion_cases(data, lesion)
    surroundings = lesion_surroundings(
        [(read(data / "imagesTr" / f"{c}_0000.nii.gz")[0], read(data / "labelsTr" / f"{c}.nii.gz")[0])
         for c in train_lesions], lesion) if train_lesions else float("nan")  # fmt: skip
    places = ("centre", "tissue") if train_lesions else ("centre",)  # tissue: like that around real lesions
    for place in places:
        (work / f"regions-{place}").mkdir(exist_ok=True)
    for case in cases:  # each case read once, its region written for every placement
        label, affine = read(test / "labelsTr" / f"{case}.nii.gz")
        image = read(test / "imagesTr" / f"{case}_0000.nii.gz")[0] if "tissue" in places else None
        for place in places:
            allowed = lesion_tissue(image, label, lesion, surroundings) if place == "tissue" else None
            region = insertion_region(label, lesion, args.radius, allowed)
            nib.save(nib.Nifti1Image(region.astype(np.uint8), affine), work / f"regions-{place}" / f"{case}.nii.gz")
    reports, seconds = {}, {}
    for place in places:
        regions = work / f"regions-{place}"
        for method in ("repaint", "guidance"):
            out = work / f"I-{place}-{method}"
            for case in cases:
                ldmtool("--seed", args.seed, "inpaint", test / "imagesTr" / f"{case}_0000.nii.gz", "--region",
                        regions / f"{case}.nii.gz", "--labels", test / "labelsTr" / f"{case}.nii.gz", "--label",
                        "lesion", "--ae", work / "AE", "--ldm", work / f"LDM-{branch}", "--out", out, "--method",
                        method, "--steps", args.steps, "--guidance", args.inpaint_guidance, "--margin", args.inpaint_margin,
                        "--grow", args.inpaint_grow, "--overwrite",
                        *(repaint_flags(args) if method == "repaint" else []))  # fmt: skip
            key = (place, method)
            seconds[key] = np.mean([json.loads((out / f"{c}_inpaint.json").read_text())["seconds"] for c in cases])
            report = evaluate(work, out, test, f"R-I-{place}-{method}", "condition")
            reports[key] = report["condition_fidelity"]["inpainting"]
    real = segmenter_on_real_lesions(work, test, cases, lesion)
    print(f"\n## Lesion insertion (`inpaint --label lesion --guidance {args.inpaint_guidance:g} --margin "
          f"{args.inpaint_margin} --grow {args.inpaint_grow}`, repaint with `{' '.join(map(str, repaint_flags(args)))}`, "
          f"{branch} model, "
          f"ball of radius {args.radius} voxels, {len(cases)} phantoms; `evaluate --only condition`)\n")  # fmt: skip
    if not train_lesions:
        print("No training phantom has a lesion: the region is placed at the phantom's centre only.\n")
    else:
        print("Region placed at the phantom's centre (deepest inside the head: over the ventricles, where no "
              "training lesion lies), or in lesion tissue (the voxel deepest inside the tissue `--fewshot` admits: "
              f"at least half as bright as the tissue around the training lesions, {surroundings:.2f}× the head's "
              "median).\n")  # fmt: skip
    print("| region | method | outside bit-exact | seam: border gradient | real tissue p95 | seam within p95 | "
          "lesion Dice vs region | lesion volume / region | new lesion inside the region | centroid error (mm) | "
          "no lesion found | s per case |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (place, method), p in reports.items():
        n = p["n_cases"]
        cells = [f"{p['outside_exact']}/{p['outside_checked']}", f"{p['seam_border_gradient_mean']:.4g}",
                 f"{p['seam_tissue_p95_mean']:.4g}", f"{p['seam_within']}/{n}", _f(p["dice_mean"]),
                 _f(p["volume_ratio_mean"]), _f(p["inside_share_mean"]), _f(p["centroid_error_mm_mean"], ".2f"),
                 f"{p['missed']}/{n}",
                 f"{seconds[(place, method)]:.1f}"]  # fmt: skip
        print(f"| {place} | {method} | " + " | ".join(cells) + " |")
    print(f"\nThe segmenter on the real lesions of the same {real['n']} held-out phantoms (its own error, the "
          f"measures' floor): lesion Dice {real['dice']:.3f}, volume / true volume {real['volume']:.3f}, share of its "
          f"lesion inside the true lesion {real['inside']:.3f}.")  # fmt: skip


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def save_png(src: Path, tag: str) -> str:
    """Copy a montage next to the results files; returns its path relative to the repository."""
    return save_figure(src, f"conditional-{tag}")


def mask_to_image(
    args, work: Path, data: Path, test: Path, config: Path, budget: list, reuse: bool = False
) -> tuple[dict, dict]:
    """One `train-ldm --condition-on labels` per --label-branch on `budget` (a finished one in `work`
    kept when `reuse`), images for the held-out maps (`sample --labels`), each judged by `evaluate`:
    (reports, training budgets) per branch."""
    reports, budgets = {}, {}
    for entry in args.label_branch.split(","):
        b, flags = branch_flags(entry)
        ldm = work / f"LDM-{b}"
        train(reuse, ldm, "--seed", args.seed, "train-ldm", data, "--ae", work / "AE",
              "--out", ldm, "--config", config, "--condition-on", "labels", *flags, *budget)  # fmt: skip
        budgets[b] = trained(ldm)
        ldmtool("--seed", args.seed, "sample", "--ae", work / "AE", "--ldm", ldm, "--labels", test, "--out",
                work / f"M-{b}", "--steps", args.steps, "--guidance", args.guidance)  # fmt: skip
        reports[b] = evaluate(work, work / f"M-{b}", test, f"R-M-{b}", "fidelity,diversity,condition")
    return reports, budgets


def branch_flags(entry: str) -> tuple[str, list]:
    """A --label-branch entry, BRANCH (the config's label_detail) or BRANCH:K (`--label-detail K`) →
    (its name in folders and tables, e.g. concat-d4, and its train-ldm flags)."""
    branch, _, detail = entry.partition(":")
    if not detail:
        return branch, ["--label-branch", branch]
    return f"{branch}-d{detail}", ["--label-branch", branch, "--label-detail", detail]


def ixi_tissues(src: Path, dst: Path, ids: list[str], factor: int = 2) -> Path:
    """IXI cases as an nnU-Net folder of the four tissue classes of examples/labels/ixi_tissues.yaml:
    reoriented to RAS and averaged over factor³ blocks (2 mm → 4 mm for factor 2; factor 1 keeps the
    grid), each block's label its most frequent class (background included)."""
    import nibabel as nib
    from real_data import block_affine, block_mean

    from ldmtool.data.labels import parse_labels

    mapping = parse_labels(str(REPO / "examples" / "labels" / "ixi_tissues.yaml"))
    names = mapping.label_names
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)

    for c in ids:
        img = nib.as_closest_canonical(nib.load(src / "imagesTr" / f"{c}_0000.nii.gz"))
        lab = mapping.apply(np.asarray(nib.as_closest_canonical(nib.load(src / "labelsTr" / f"{c}.nii.gz")).dataobj))
        affine = block_affine(img.affine, factor)
        image = block_mean(np.asarray(img.dataobj, dtype=np.float32), factor)
        share = np.stack([block_mean((lab == v).astype(np.float32), factor) for v in names.values()])
        nib.save(nib.Nifti1Image(image, affine), dst / "imagesTr" / f"{c}_0000.nii.gz")
        nib.save(nib.Nifti1Image(share.argmax(0).astype(np.uint8), affine), dst / "labelsTr" / f"{c}.nii.gz")
    meta = {"channel_names": {"0": "T1"}, "labels": names, "numTraining": len(ids), "file_ending": ".nii.gz"}
    (dst / "dataset.json").write_text(json.dumps(meta, indent=2))
    return dst


def ae_ceiling(work: Path, test: Path, cases: list[str]) -> dict:
    """The segmenter's Dice on the autoencoder's reconstructions of the held-out real images (each
    encoded and decoded, brought back into its map's grid): what a generator that drew the real image
    of every map would score through this autoencoder, the ceiling of the mask-to-image Dice.
    Segmented with `ldmtool segment` and scored against the maps like the samples (MONAI Dice)."""
    from real_data import reconstructions_in_source_grid

    from ldmtool.metrics import dice_per_class

    dst = reconstructions_in_source_grid(work / "AE", test, work / "recon") / "imagesTr"
    out = work / "S-recon"
    ldmtool("segment", *[dst / f"{c}_0000.nii.gz" for c in cases], "--model", work / "SEG", "--out", out,
            "--overwrite")  # fmt: skip
    names = json.loads((test / "dataset.json").read_text())["labels"]
    fg = sorted((v, n) for n, v in names.items() if v > 0)
    rows = [
        dice_per_class(read(out / f"{c}_seg.nii.gz")[0], read(test / "labelsTr" / f"{c}.nii.gz")[0], fg[-1][0] + 1)
        for c in cases
    ]
    per = {n: float(np.nanmean([r[v - 1] for r in rows])) for v, n in fg}
    return {"dice": per, "dice_mean": float(np.nanmean(list(per.values()))), "n": len(rows)}


def guidance_table(work: Path, test: Path, args, branch: str, main_report: dict, classes: list[str]) -> None:
    """Mask-to-image Dice of one model sampled at every --ixi-guidance scale (the same seeds and
    maps; `evaluate --only condition`), beside the autoencoder's ceiling and the real images."""
    rows = {args.guidance: main_report["condition_fidelity"]["mask_to_image"]}
    for g in args.ixi_guidance:
        if g in rows:
            continue
        out = work / f"M-{branch}-g{g:g}"
        ldmtool("--seed", args.seed, "sample", "--ae", work / "AE", "--ldm", work / f"LDM-{branch}", "--labels", test,
                "--out", out, "--steps", args.steps, "--guidance", g)  # fmt: skip
        rows[g] = evaluate(work, out, test, f"R-M-{branch}-g{g:g}", "condition")["condition_fidelity"]["mask_to_image"]
    from real_data import cases_of

    ceiling = ae_ceiling(work, test, cases_of(test))
    real = rows[args.guidance]["real"]
    print(f"\n## Guidance and the autoencoder's ceiling ({branch}; segmenter Dice against the requested maps)\n")
    print("| images | " + " | ".join(f"Dice {c}" for c in classes) + " | Dice mean | − real images |")
    print("|---|" + "---|" * (len(classes) + 2))
    for g in sorted(rows):
        m = rows[g]["synthetic"]
        cells = " | ".join(f"{m['dice'][c]:.3f}" for c in classes)
        print(
            f"| samples, guidance {g:g} | {cells} | {m['dice_mean']:.3f} | {m['dice_mean'] - real['dice_mean']:+.3f} |"
        )
    cells = " | ".join(f"{ceiling['dice'][c]:.3f}" for c in classes)
    print(f"| autoencoder reconstructions of the real images | {cells} | {ceiling['dice_mean']:.3f} | "
          f"{ceiling['dice_mean'] - real['dice_mean']:+.3f} |")  # fmt: skip
    cells = " | ".join(f"{real['dice'][c]:.3f}" for c in classes)
    print(f"| real images | {cells} | {real['dice_mean']:.3f} | |")


def run_ixi(args, work: Path) -> None:
    """Mask-to-image on real brains: tissue maps of held-out IXI brains (module docstring)."""
    from real_data import cases_of
    from real_data import split as ixi_split

    config = args.ixi_config
    factor = int(round(args.ixi_spacing / 2))
    spacing = ",".join([f"{args.ixi_spacing:g}"] * 3)
    work.mkdir(parents=True, exist_ok=True)
    LOG[:] = [work / "ldmtool.log"]
    train_ids, held_out = ixi_split(cases_of(args.ixi), 48, args.split_seed)
    if args.quick:
        train_ids = train_ids[:8]
    data = ixi_tissues(args.ixi, work / "data", train_ids, factor)
    test = ixi_tissues(args.ixi, work / "test", held_out[: args.test], factor)
    new_ae = train(args.reuse, work / "AE", "--seed", args.seed, "train-ae", data, "--out", work / "AE", "--config",
                   config, "--spacing", spacing, *budget_flags(args.ae_steps, args.ae_minutes or 40))  # fmt: skip
    seg_budget = ["--steps", args.seg_steps, "--batch-size", 16] if args.seg_steps else ["--epochs", args.seg_epochs]
    train(args.reuse, work / "SEG", "--seed", args.seed, "train-seg", data, "--out", work / "SEG", "--arch", "unet",
          "--lr", args.seg_lr, *seg_budget, "--max-minutes", args.seg_minutes or 12)  # fmt: skip
    budget = budget_flags(args.ldm_steps, args.ldm_minutes)
    # a new autoencoder: denoisers of another one's latents are no use, so they are trained anew too
    reports, budgets = mask_to_image(args, work, data, test, config, budget, reuse=args.reuse and not new_ae)
    print(f"# Mask-to-image on IXI brains ({len(train_ids)} training, images for {args.test} held-out tissue maps, "
          f"{args.ixi_spacing:g} mm, split seed {args.split_seed}, {config.name}, {args.steps} sampling steps, guidance {args.guidance:g}, "
          f"autoencoder {trained(work / 'AE')}, "
          f"segmenter: `train-seg --arch unet` on the real training brains, {trained(work / 'SEG')})")  # fmt: skip
    classes = reports[next(iter(reports))]["condition_fidelity"]["classes"]
    best = mask_to_image_table(reports, budgets, classes, use="")
    print(
        "\nTarget: segmenter Dice on the synthetic images within 0.05 of its Dice on the real images of the same maps."
    )
    guidance_table(work, test, args, best, reports[best], classes)
    if not args.quick:
        print()
        for b in reports:
            print(
                f"montage of mask-to-image samples ({b}): {save_png(work / f'M-{b}' / 'montage.png', f'ixi-{b}-samples')}"
            )


def lesion_cases(folder: Path, lesion: int) -> list[str]:
    """Case ids of an nnU-Net folder whose label map holds the lesion class."""
    cases = sorted(p.name[: -len(".nii.gz")] for p in (folder / "labelsTr").glob("*.nii.gz"))
    return [c for c in cases if (read(folder / "labelsTr" / f"{c}.nii.gz")[0] == lesion).any()]


def lesion_surroundings(cases: list[tuple[np.ndarray, np.ndarray]], lesion: int) -> float:
    """How bright the tissue around real lesions is: the median, over the cases (image, label map),
    of the median intensity of a two-voxel shell around the lesions divided by the head's median."""
    from scipy import ndimage as ndi

    ratios = []
    for image, label in cases:
        les, head = label == lesion, (label > 0) & (label != lesion)
        shell = ndi.binary_dilation(les, iterations=2) & head
        ratios.append(float(np.median(image[shell]) / np.median(image[head])))
    return float(np.median(ratios))


def lesion_brightness(folder: Path, cases: list[str], lesion: int) -> list[float]:
    """How bright each case's labelled lesion is: the mean intensity of its lesion voxels divided by
    the median of the rest of its head (nnU-Net folder `folder`; cases without lesion voxels are
    left out). The inpainted lesions are judged by the same measure as the real ones they imitate."""
    out = []
    for case in cases:
        image = read(folder / "imagesTr" / f"{case}_0000.nii.gz")[0]
        label = read(folder / "labelsTr" / f"{case}.nii.gz")[0]
        les, head = label == lesion, (label > 0) & (label != lesion)
        if les.any() and head.any():
            out.append(float(image[les].mean() / np.median(image[head])))
    return out


def brightness_text(values: list[float]) -> str:
    """Median and range of per-case lesion brightness ratios (`lesion_brightness`)."""
    if not values:
        return "none (no labelled lesion)"
    return f"median {np.median(values):.2f}× ({min(values):.2f}–{max(values):.2f}, {len(values)} cases)"


def lesion_tissue(image: np.ndarray, label: np.ndarray, lesion: int, surroundings: float) -> np.ndarray:
    """Where a lesion may be placed in a lesion-free case: voxels whose smoothed intensity is at least
    half that of the tissue around real lesions (`lesion_surroundings`, relative to this head's median),
    one voxel in from any darker place (ventricles, CSF). The smoothing brightens a dark structure's
    outermost edges and corners, so they may pass; its inside does not."""
    from scipy import ndimage as ndi

    head = (label > 0) & (label != lesion)
    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.0)
    return ndi.binary_erosion(head & (smooth >= 0.5 * surroundings * float(np.median(image[head]))))


def fewshot_montage(normals: Path, syn: Path, regions: Path, pairs: list[tuple[str, str]], png: Path) -> Path:
    """One row: for each pair, the normal phantom's axial slice through the region's centre and the
    same slice after inpainting, the new lesion label in red."""
    from PIL import Image

    from ldmtool.pipelines.montage import montage

    vols = []
    for normal, new in pairs:
        label = read(syn / "labelsTr" / f"{new}.nii.gz")[0]
        k = int(np.argwhere(read(regions / f"{new}.nii.gz")[0] > 0)[:, 2].mean())
        for image, lab in ((read(normals / "imagesTr" / f"{normal}_0000.nii.gz")[0], None),
                           (read(syn / "imagesTr" / f"{new}_0000.nii.gz")[0], label)):  # fmt: skip
            vols.append((image[:, :, k : k + 1].astype(np.float32), None if lab is None else lab[:, :, k : k + 1]))
    Image.fromarray(montage(vols)).save(png)
    return png


def segmenter_labels(args, work: Path, data: Path, normals: Path, syn: Path, regions: Path, pairs, lesion: int):
    """--fewshot-label-from segmenter: the inpainted cases' label maps rewritten as a segmenter trained
    on the real training phantoms alone (`train-seg --arch unet`, the downstream model's steps) reads
    their images: lesion where it segments lesion inside the region, elsewhere the lesion-free
    phantom's own map (outside the region the image is that phantom's, bit for bit). Labels the
    inpainted lesions by what the few real annotations teach, not by the autoencoder's decoder. The
    share of each region labelled lesion, per case."""
    import nibabel as nib

    seg = work / "SEG-REAL"
    train(args.reuse, seg, "--seed", args.seed, "train-seg", data, "--out", seg, "--arch", "unet", "--lr", args.seg_lr,
          "--steps", args.fewshot_seg_steps, "--batch-size", 16, "--max-minutes", 600,
          *(["--config", REPO / "examples" / "tiny.yaml"] if args.quick else []))  # fmt: skip
    ldmtool("segment", syn / "imagesTr", "--model", seg, "--out", work / "SEG-REAL-inpainted", "--overwrite")
    shares = []
    for case, new, *_ in pairs:
        host, affine = read(normals / "labelsTr" / f"{case}.nii.gz")
        region = read(regions / f"{new}.nii.gz")[0] > 0
        found = read(work / "SEG-REAL-inpainted" / f"{new}_seg.nii.gz")[0] == lesion
        label = np.array(host, dtype=np.uint8)
        label[region & found] = lesion
        tmp = syn / "labelsTr" / f".{new}.tmp.nii.gz"
        nib.save(nib.Nifti1Image(label, affine), tmp)
        tmp.replace(syn / "labelsTr" / f"{new}.nii.gz")
        shares.append(float((region & found).sum() / region.sum()))
    return shares


def region_rise(normals: Path, syn: Path, regions: Path, case: str, new: str) -> float:
    """How much brighter the region became: mean intensity inside it after inpainting over the
    lesion-free phantom's there, minus 1 (0: nothing drawn)."""
    before = read(normals / "imagesTr" / f"{case}_0000.nii.gz")[0]
    after = read(syn / "imagesTr" / f"{new}_0000.nii.gz")[0]
    inside = read(regions / f"{new}.nii.gz")[0] > 0
    return float(after[inside].mean() / before[inside].mean() - 1)


def write_sketch(host: Path, region: Path, gain: float, out: Path) -> Path:
    """The lesion-free phantom `host` with the voxels of `region` multiplied by `gain` (a rough
    lesion for `inpaint --init`), in the host's grid and value type."""
    import nibabel as nib

    img = nib.load(host)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[np.asarray(nib.load(region).dataobj) > 0] *= gain
    return save_like(img, data, out)


def pasted_sketch(host: Path, donor: np.ndarray, ratio: float, moves, out: Path) -> Path:
    """The lesion-free phantom `host` with a real lesion's own voxels pasted in (`paste_lesions`: the
    donor image's voxels of every moved lesion × `ratio`, the host head's median over the donor's),
    in the host's grid and value type."""
    import nibabel as nib

    img = nib.load(host)
    return save_like(img, paste_lesions(np.asarray(img.dataobj), donor, moves, ratio), out)


def save_like(img, data: np.ndarray, out: Path) -> Path:
    """`data` saved to `out` in the grid, header and value type of the NIfTI image `img` (rounded and
    clipped to an integer type's range)."""
    import nibabel as nib

    dtype = img.get_data_dtype()
    if np.issubdtype(dtype, np.integer):
        data = np.clip(np.rint(data), np.iinfo(dtype).min, np.iinfo(dtype).max)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(dtype), img.affine, img.header), out)
    return out


def inpaint_pairs(args, work: Path, normals: Path, regions: Path, syn: Path, pairs, mode: str, sketches: dict):
    """`inpaint --label lesion` of every (lesion-free case, new case id, seed) of `pairs` with the
    fine-tuned model FEW into the nnU-Net folder `syn` (`--label-from` mode; segmenter: region, the
    maps rewritten afterwards; with --fewshot-strength below 1 from the case's sketch in `sketches`);
    (seconds per case, share of each region labelled lesion)."""
    seconds, labelled = [], []
    for case, new, seed, _ in pairs:
        out = syn / "runs" / new
        host = normals / "imagesTr" / f"{case}_0000.nii.gz"
        start = []
        if args.fewshot_strength < 1:
            start = ["--init", sketches[new], "--strength", args.fewshot_strength]
        ldmtool("--seed", seed, "inpaint", host, "--region",
                regions / f"{new}.nii.gz", "--labels", normals / "labelsTr" / f"{case}.nii.gz", "--label",
                "lesion", "--ae", work / "AE", "--ldm", work / "FEW", "--out", out, "--method", "repaint",
                "--steps", args.steps, "--guidance", args.inpaint_guidance, "--margin", args.inpaint_margin,
                "--grow", args.inpaint_grow, "--label-from", "region" if mode == "segmenter" else mode,
                *repaint_flags(args), *start)  # fmt: skip
        shutil.copy(out / f"{case}_inpainted.nii.gz", syn / "imagesTr" / f"{new}_0000.nii.gz")
        shutil.copy(out / f"{case}_inpainted_label.nii.gz", syn / "labelsTr" / f"{new}.nii.gz")
        record = json.loads((out / f"{case}_inpaint.json").read_text())
        seconds.append(record["seconds"])
        labelled.append(record["label_voxels"] / record["region_voxels"])
    return seconds, labelled


def downstream(args, data: Path, extra: Path, test: Path, rep: Path, seed: int) -> dict:
    """`evaluate --only utility`: the downstream segmenter on `data` alone, on `extra` alone and on
    both (--fewshot-real-share), scored on `test`; the report's utility results."""
    ldmtool("--seed", seed, "evaluate", "--real", data, "--synthetic", extra, "--test", test, "--out", rep,
            "--only", "utility", "--seg-steps", args.fewshot_seg_steps, "--real-share", args.fewshot_real_share,
            "--cache-dir", "none")  # fmt: skip
    return json.loads((rep / "report.json").read_text())["utility"]["results"]


def run_fewshot(args, work: Path) -> None:
    """Few-shot lesion synthesis as augmentation (module docstring)."""
    import nibabel as nib

    config = REPO / "examples" / ("tiny.yaml" if args.quick else "demo.yaml")
    work.mkdir(parents=True, exist_ok=True)
    LOG[:] = [work / "ldmtool.log"]
    k = args.fewshot
    # enough lesion phantoms that K of them have lesions (a phantom draws 0-3)
    ldmtool("--seed", args.seed, "demo-data", work / "all", "--n", args.n, "--shape", args.shape,
            "--lesion-cases", min(args.n, 2 * k + 4))  # fmt: skip
    names = json.loads((work / "all" / "dataset.json").read_text())["labels"]
    lesion = int(names["lesion"])
    with_lesions = lesion_cases(work / "all", lesion)
    if len(with_lesions) < k:
        sys.exit(f"--fewshot {k}: only {len(with_lesions)} of the phantoms drew lesions; raise --n")
    annotated = with_lesions[:k]
    # lesion-free: the twins after the drawn lesion phantoms, and the lesion phantoms that drew none
    normal = sorted(p.name[: -len(".nii.gz")] for p in (work / "all" / "labelsTr").glob("*.nii.gz"))
    normal = [c for c in normal if c not in with_lesions]
    data_cases = sorted(annotated + normal)
    data = subset(work / "all", work / "data", data_cases)
    normals = subset(work / "all", work / "normal", sorted(normal))
    few = subset(work / "all", work / "few", annotated)
    ldmtool("--seed", args.seed + 1, "demo-data", work / "test_all", "--n", args.test, "--shape", args.shape)
    test_cases = lesion_cases(work / "test_all", lesion)
    test = subset(work / "test_all", work / "test", test_cases)

    kept = args.reuse  # an autoencoder or normal model trained anew: what builds on it is trained anew too
    kept = not train(kept, work / "AE", "--seed", args.seed, "train-ae", data, "--out", work / "AE", "--config", config,
                     *budget_flags(args.ae_steps, args.ae_minutes)) and kept  # fmt: skip
    budget = budget_flags(args.ldm_steps, None)
    kept = not train(kept, work / "NORMAL", "--seed", args.seed, "train-ldm", normals, "--ae", work / "AE", "--out",
                     work / "NORMAL", "--config", config, *budget) and kept  # fmt: skip
    train(kept, work / "FEW", "--seed", args.seed, "train-ldm", few, "--ae", work / "AE", "--out", work / "FEW",
          "--config", config, "--condition-on", "labels", "--init", work / "NORMAL", "--steps", args.fewshot_steps,
          "--max-minutes", 600, *lesion_weight_flags(args))  # fmt: skip

    modes = [m.strip() for m in args.fewshot_label_from.split(",") if m.strip()]
    regions_dir = work / "regions"
    regions_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    donors = {c: read(few / "labelsTr" / f"{c}.nii.gz")[0] for c in annotated}
    surroundings = lesion_surroundings(
        [(read(few / "imagesTr" / f"{c}_0000.nii.gz")[0], donors[c]) for c in annotated], lesion
    )
    # a sketch's lesion: as much brighter than the tissue it replaces as the real lesions are than theirs
    gain = float(np.median(lesion_brightness(few, annotated, lesion))) / surroundings
    copies = sorted({int(c) for c in args.fewshot_copies.split(",") if c.strip()})
    # (lesion-free case, new case id, its seed, round): round r gives every lesion-free phantom the
    # lesions of the (i + r)-th annotated case at a new place; the set of c copies is rounds 0..c-1
    hosts = []  # every lesion-free phantom's label map, affine and the tissue a lesion may go in, read once
    for case in normal:
        label, affine = read(normals / "labelsTr" / f"{case}.nii.gz")
        image = read(normals / "imagesTr" / f"{case}_0000.nii.gz")[0]
        hosts.append((label, affine, lesion_tissue(image, label, lesion, surroundings)))
    pairs, empty, moves = [], 0, {}
    for r in range(copies[-1]):
        for i, (case, (label, affine, allowed)) in enumerate(zip(normal, hosts)):
            donor = annotated[(i + r) % k]
            zooms = nib.affines.voxel_sizes(affine)
            region, moved = transplant(label, donors[donor], lesion, zooms, rng, allowed=allowed)
            if not region.any():
                empty += 1
                continue
            new = f"{case}_from_{donor}" + (f"_{r}" if r else "")
            nib.save(nib.Nifti1Image(region.astype(np.uint8), affine), regions_dir / f"{new}.nii.gz")
            pairs.append((case, new, args.seed + r * len(normal) + i, r))
            moves[new] = (donor, moved)

    host_of = dict(zip(normal, hosts))  # lesion-free case -> (label map, affine, where a lesion may go)
    sketches = {}  # new case id -> the image its region starts from (--fewshot-strength below 1, --fewshot-pasted)
    if args.fewshot_strength < 1 or args.fewshot_pasted:
        donor_images = {c: read(few / "imagesTr" / f"{c}_0000.nii.gz")[0] for c in annotated}
        for case, new, *_ in pairs:
            host = normals / "imagesTr" / f"{case}_0000.nii.gz"
            out = work / "sketches" / f"{new}.nii.gz"
            if args.fewshot_sketch == "scaled":
                sketches[new] = write_sketch(host, regions_dir / f"{new}.nii.gz", gain, out)
            else:
                donor, moved = moves[new]
                label = host_of[case][0]
                ratio = head_median(read(host)[0], label, lesion) / head_median(
                    donor_images[donor], donors[donor], lesion
                )
                sketches[new] = pasted_sketch(host, donor_images[donor], ratio, moved, out)

    seconds, labelled, reports, bright = {}, {}, {}, {}
    inpainted_first = None  # the first mode's folder: its images serve --label-from segmenter as they are
    kept = None  # the inpainted cases the downstream models see (--fewshot-keep-drawn)
    for mode in modes:  # the same regions and seeds: the same images, labelled each way
        syn = work / ("inpainted" if mode == "painted" else f"inpainted-{mode}")
        for sub in ("imagesTr", "labelsTr", "runs"):
            (syn / sub).mkdir(parents=True, exist_ok=True)
        if mode == "segmenter" and inpainted_first is not None:
            for _, new, *_ in pairs:
                shutil.copy(
                    inpainted_first / "imagesTr" / f"{new}_0000.nii.gz", syn / "imagesTr" / f"{new}_0000.nii.gz"
                )
        else:
            seconds[mode], labelled[mode] = inpaint_pairs(args, work, normals, regions_dir, syn, pairs, mode, sketches)
            inpainted_first = inpainted_first or syn
        if mode == "segmenter":
            labelled[mode] = segmenter_labels(args, work, data, normals, syn, regions_dir, pairs, lesion)
        if kept is None:  # the images are the same for every mode: judged once
            rises = {new: region_rise(normals, syn, regions_dir, case, new) for case, new, *_ in pairs}
            floor = args.fewshot_keep_drawn * (gain - 1)
            kept = {new for new, rise in rises.items() if not args.fewshot_keep_drawn or rise >= floor}
        bright[mode] = lesion_brightness(syn, [new for _, new, *_ in pairs], lesion)
        meta = json.loads((data / "dataset.json").read_text())
        meta["numTraining"] = len(pairs)
        (syn / "dataset.json").write_text(json.dumps(meta, indent=2))
        for c in copies:  # the set of c copies: a subset of the inpainted cases (the same images)
            chosen = [new for _, new, _, r in pairs if r < c and new in kept]
            if not chosen:
                sys.exit(
                    f"--fewshot-keep-drawn {args.fewshot_keep_drawn:g}: none of the inpainted cases kept; lower it"
                )
            every = c == copies[-1] and len(chosen) == len(pairs)
            sub_syn = syn if every else subset(syn, work / f"{syn.name}-x{c}", chosen)
            reports[(mode, c)] = [
                downstream(
                    args,
                    data,
                    sub_syn,
                    test,
                    work / ((f"U{s}" if mode == "painted" else f"U{s}-{mode}") + (f"-x{c}" if c > 1 else "")),
                    s,
                )  # fmt: skip
                for s in range(args.fewshot_seeds)
            ]
    more = []
    if args.fewshot_headroom:  # as many more real lesion phantoms as inpainted ones: what those could give at best
        n_more = sum(r == 0 for *_, r in pairs)
        ldmtool("--seed", args.seed + 2, "demo-data", work / "more_all", "--n", 2 * n_more + 8, "--shape", args.shape)
        more = lesion_cases(work / "more_all", lesion)[:n_more]
        more_dir = subset(work / "more_all", work / "more", more)
        reports[("headroom", 1)] = [
            downstream(args, data, more_dir, test, work / f"U{s}-headroom", s) for s in range(args.fewshot_seeds)
        ]

    if args.fewshot_pasted:  # the sketches themselves as training data: copy and paste, no diffusion
        pasted = work / "pasted"
        for sub in ("imagesTr", "labelsTr"):
            (pasted / sub).mkdir(parents=True, exist_ok=True)
        for case, new, *_ in pairs:
            label, affine, _ = host_of[case]
            label = np.array(label, dtype=np.uint8)
            label[read(regions_dir / f"{new}.nii.gz")[0] > 0] = lesion
            nib.save(nib.Nifti1Image(label, affine), pasted / "labelsTr" / f"{new}.nii.gz")
            shutil.copy(sketches[new], pasted / "imagesTr" / f"{new}_0000.nii.gz")
        meta = json.loads((data / "dataset.json").read_text())
        meta["numTraining"] = len(pairs)
        (pasted / "dataset.json").write_text(json.dumps(meta, indent=2))
        reports[("pasted", 1)] = [
            downstream(args, data, pasted, test, work / f"U{s}-pasted", s) for s in range(args.fewshot_seeds)
        ]

    print(f"# Few-shot lesions on demo phantoms (shape {args.shape}, {config.name})\n")
    print(f"- real training phantoms: {len(data_cases)}: {k} with lesions "
          f"({', '.join(annotated)}), {len(normal)} lesion-free")  # fmt: skip
    print(f"- held-out phantoms with lesions: {len(test_cases)} (demo-data seed {args.seed + 1})")
    print(f"- autoencoder on the {len(data_cases)} training phantoms: {trained(work / 'AE')}; model of normal "
          f"anatomy on the {len(normal)} lesion-free ones: {trained(work / 'NORMAL')}; fine-tuned on the {k} lesion "
          f"cases (`--condition-on labels --init`): {trained(work / 'FEW')}")  # fmt: skip
    share = ", ".join(f"{m} {100 * np.mean(v) if v else float('nan'):.0f} %" for m, v in labelled.items())
    every = [x for v in seconds.values() for x in v]
    print(
        f"- inpainted: {len(pairs)} cases, each of the {len(normal)} lesion-free phantoms given the lesions of "
        f"{copies[-1]} of the {k} cases, one at a time "
        f"(`inpaint --label lesion --method repaint --steps {args.steps} --guidance {args.inpaint_guidance:g} "
        f"--margin {args.inpaint_margin} --grow {args.inpaint_grow} {' '.join(map(str, repaint_flags(args)))} "
        f"--label-from M`, "
        f"{np.mean(every) if every else float('nan'):.1f} s per case); {empty} left out (no place found); "
        f"labelled lesion, share of the region voxels: {share} (--label-from region: all of them; painted: those "
        f"the decoder reads as lesion; segmenter: those a UNet trained on the real training phantoms segments as "
        f"lesion; the images are the same)"
    )
    if args.fewshot_keep_drawn > 0:
        print(f"- kept for the downstream models: {len(kept)} of the {len(pairs)} inpainted cases, those whose region "
              f"became at least {args.fewshot_keep_drawn:g}× as much brighter than the phantom's tissue there as the "
              f"real lesions are than the tissue around them ({args.fewshot_keep_drawn * (gain - 1):.3f}; "
              f"`--fewshot-keep-drawn`)")  # fmt: skip
    if args.fewshot_strength < 1 or args.fewshot_pasted:
        what = (f"the phantom with the region's voxels × {gain:.2f} (the real lesions' brightness over that of the "
                f"tissue around them)" if args.fewshot_sketch == "scaled" else
                "the phantom with the annotated case's own lesion voxels pasted at their new place (× the phantom's "
                "head median over the annotated case's)")  # fmt: skip
        if args.fewshot_strength < 1:
            print(f"- every region started from a sketch (`inpaint --init SKETCH --strength "
                  f"{args.fewshot_strength:g}`, `--fewshot-sketch {args.fewshot_sketch}`): {what}")  # fmt: skip
        if args.fewshot_pasted:
            print(f"- pasted (`--fewshot-pasted`, the control without diffusion): the sketches themselves, all "
                  f"{len(pairs)}, the region labelled lesion: {what}")  # fmt: skip
    weight = json.loads((work / "FEW" / "config.json").read_text())["train"]["lesion_weight"]  # kept FEW: its own
    print(f"- fine-tuning lesion weight (`train-ldm --lesion-weight`, FEW's config): {weight:g}")
    print(f"- labelled lesion brightness (mean of the lesion voxels / the rest of the head's median), per case: "
          f"{brightness_text(lesion_brightness(few, annotated, lesion))} for the {k} real lesion cases; "
          + "; ".join(f"{brightness_text(v)} inpainted, label from {m}" for m, v in bright.items()))  # fmt: skip
    print(
        f"- lesions placed at least 6 mm inside the head where the smoothed image is at least half as bright as "
        f"the tissue around the {k} real lesions ({surroundings:.2f}× the head's median): not over ventricles"
    )
    print(
        f"- downstream: `evaluate --only utility --seg-steps {args.fewshot_seg_steps} --real-share "
        f"{args.fewshot_real_share:g}`, "
        f"seeds 0..{args.fewshot_seeds - 1}\n"
    )
    print("| trained on | lesion Dice | head Dice | mean Dice | lesion HD95 (voxels) |")
    print("|---|---|---|---|---|")
    lesion_name = next(n for n, v in names.items() if int(v) == lesion)
    head_name = next(n for n, v in names.items() if int(v) not in (0, lesion))
    sets = [(m, c) for m in modes for c in copies]
    rows = [("real", sets[0], f"real ({len(data_cases)}: {k} with lesions)")]
    for m, c in sets:
        n_syn = sum(r < c and new in kept for _, new, _, r in pairs)
        tag = ", ".join(
            ([f"label from {m}"] if len(modes) > 1 else []) + ([f"{c} per phantom"] if len(copies) > 1 else [])
        )
        tag = f", {tag}" if tag else ""
        rows += [("synthetic", (m, c), f"inpainted only ({n_syn}{tag})"),
                 ("real+synthetic", (m, c), f"real + inpainted ({len(data_cases)} + {n_syn}{tag})")]  # fmt: skip
    if args.fewshot_pasted:
        rows += [("synthetic", ("pasted", 1), f"pasted only ({len(pairs)}, no diffusion)"),
                 ("real+synthetic", ("pasted", 1), f"real + pasted ({len(data_cases)} + {len(pairs)}, no diffusion)")]  # fmt: skip
    if more:
        rows.append(("real+synthetic", ("headroom", 1),
                     f"real + {len(more)} more real lesion phantoms (headroom; demo-data seed {args.seed + 2})"))  # fmt: skip
    summary = {}
    for key, ms, title in rows:
        rs = reports[ms]
        les = np.array([r[key]["dice"][lesion_name] for r in rs])
        head = np.array([r[key]["dice"][head_name] for r in rs])
        mean = np.array([r[key]["dice_mean"] for r in rs])
        hd = np.array([r[key]["hd95_voxels"][lesion_name] for r in rs])
        summary[(key, ms)] = les
        print(f"| {title} | {les.mean():.3f} ± {les.std():.3f} | {head.mean():.3f} ± {head.std():.3f} | "
              f"{mean.mean():.3f} ± {mean.std():.3f} | {np.nanmean(hd):.1f} |")  # fmt: skip
    print()
    for m, c in sets:
        diff = summary[("real+synthetic", (m, c))] - summary[("real", sets[0])]
        print(f"real + inpainted (label from {m}, {c} per lesion-free phantom) − real alone, lesion Dice: "
              f"{diff.mean():+.3f} (per seed: {', '.join(f'{d:+.3f}' for d in diff)}); target: > 0")  # fmt: skip
    if args.fewshot_pasted:
        diff = summary[("real+synthetic", ("pasted", 1))] - summary[("real", sets[0])]
        print(f"real + pasted lesions (no diffusion) − real alone, lesion Dice: {diff.mean():+.3f} "
              f"(per seed: {', '.join(f'{d:+.3f}' for d in diff)})")  # fmt: skip
    if more:
        diff = summary[("real+synthetic", ("headroom", 1))] - summary[("real", sets[0])]
        print(f"real + {len(more)} more real lesion phantoms − real alone, lesion Dice (the headroom: inpainted "
              f"lesions as good as real ones): {diff.mean():+.3f} (per seed: {', '.join(f'{d:+.3f}' for d in diff)})")  # fmt: skip
    if not args.quick and pairs:
        syn = work / ("inpainted" if modes[0] == "painted" else f"inpainted-{modes[0]}")
        png = fewshot_montage(normals, syn, regions_dir, [(c, n) for c, n, *_ in pairs[:6]], work / "fewshot.png")
        print(f"\nmontage (pairs: lesion-free phantom, the same after inpainting, new lesion label in red): "
              f"{save_png(png, 'fewshot-inpainted')}")  # fmt: skip


def run(args, work: Path) -> None:
    config = REPO / "examples" / ("tiny.yaml" if args.quick else "demo.yaml")
    data, test = work / "data", work / "test"
    work.mkdir(parents=True, exist_ok=True)
    LOG[:] = [work / "ldmtool.log"]
    ldmtool("--seed", args.seed, "demo-data", data, "--n", args.n, "--shape", args.shape)
    cases = split(data, test, args.test)
    names = json.loads((data / "dataset.json").read_text())["labels"]
    ldmtool("--seed", args.seed, "train-ae", data, "--out", work / "AE", "--config", config,
            *budget_flags(args.ae_steps, args.ae_minutes))  # fmt: skip
    seg_budget = ["--steps", args.seg_steps, "--batch-size", 16] if args.seg_steps else ["--epochs", args.seg_epochs]
    seg_budget += ["--max-minutes", args.seg_minutes] if args.seg_minutes else []
    ldmtool("--seed", args.seed, "train-seg", data, "--out", work / "SEG", "--arch", "unet", "--lr", args.seg_lr,
            *seg_budget, *(["--config", config] if args.quick else []))  # fmt: skip
    # one budget for every branch: the same data, config, seed and number of steps (no time limit)
    budget = budget_flags(args.ldm_steps, None)
    reports, budgets = mask_to_image(args, work, data, test, config, budget)
    print(f"# Conditional synthesis on demo phantoms ({args.n - args.test} training, {args.test} held out, "
          f"shape {args.shape}, {config.name}, {args.steps} sampling steps, guidance {args.guidance:g}, "
          f"segmenter: `train-seg --arch unet`, {trained(work / 'SEG')})")  # fmt: skip
    classes = reports[next(iter(reports))]["condition_fidelity"]["classes"]
    best = mask_to_image_table(reports, budgets, classes)
    insertion(work, test, cases, args, names, best)
    if not args.quick:
        print()
        for b in reports:
            print(
                f"montage of mask-to-image samples ({b}): {save_png(work / f'M-{b}' / 'montage.png', f'{b}-samples')}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny phantoms and models: a smoke test, not a result")
    ap.add_argument("--n", type=int, default=48, help="phantoms in all")
    ap.add_argument("--test", type=int, default=8, help="held-out phantoms")
    ap.add_argument("--shape", default="64,64,32")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps")
    ap.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of mask-to-image")
    ap.add_argument("--inpaint-guidance", type=float, default=2.0,
                    help="classifier-free guidance of the label map in `inpaint` (lesion insertion, --fewshot)")  # fmt: skip
    ap.add_argument("--inpaint-margin", type=int, default=2,
                    help="`inpaint --margin`: latent voxels regenerated around the region")  # fmt: skip
    ap.add_argument("--inpaint-sampler", default="ddim", help="`inpaint --sampler` of the repaint method: ddim | ddpm")
    ap.add_argument("--inpaint-resample", type=int, default=1,
                    help="`inpaint --resample` of the repaint method (RePaint's resampling; ddim or ddpm)")  # fmt: skip
    ap.add_argument("--inpaint-keep-detail", action="store_true",
                    help="`inpaint --keep-detail` (repaint): the start image plus the model's change is written")  # fmt: skip
    ap.add_argument("--inpaint-grow", type=int, default=1,
                    help="`inpaint --grow`: voxels the drawn lesion's condition reaches beyond the region")  # fmt: skip
    ap.add_argument("--ldm-steps", type=int, default=None,
                    help="train-ldm steps of every label branch (the equal budget; no time limit then)")  # fmt: skip
    ap.add_argument(
        "--ae-minutes",
        type=float,
        default=None,
        help="override the config's train-ae time limit (--ixi: 40 by default)",
    )
    ap.add_argument("--ae-steps", type=int, default=None,
                    help="train-ae steps (wins over --ae-minutes; no time limit then)")  # fmt: skip
    ap.add_argument("--seg-epochs", type=int, default=30)
    ap.add_argument("--seg-steps", type=int, default=None, help="train-seg steps of batch 16 (wins over --seg-epochs)")
    ap.add_argument("--seg-lr", type=float, default=2e-3, help="train-seg learning rate")
    ap.add_argument("--seg-minutes", type=float, default=None, help="time limit of train-seg")
    ap.add_argument("--radius", type=float, default=3.0, help="inserted lesion radius in voxels")
    ap.add_argument("--label-branch", default="concat,controlnet",
                    help="train-ldm --label-branch values to compare; BRANCH:K adds --label-detail K (e.g. concat:4)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the models and outputs here")
    ap.add_argument("--reuse", action="store_true",
                    help="--ixi: keep the autoencoder, segmenter and denoisers already trained to the end in --work "
                         "(their folders AE, SEG, LDM-BRANCH) instead of training them again; --fewshot: the same "
                         "for AE, NORMAL, FEW and SEG-REAL")  # fmt: skip
    ap.add_argument("--ixi", type=Path, default=None, help="ixi_t1_2mm folder: mask-to-image on real brains instead")
    ap.add_argument("--split-seed", type=int, default=0, help="--ixi: the real_data.py split of 100/48 brains")
    ap.add_argument(
        "--ixi-spacing", type=float, default=4.0, help="--ixi: mm, 2 (the data's grid) or 4 [4; 2 on a GPU]"
    )
    ap.add_argument("--ixi-config", type=Path, default=REPO / "examples" / "ixi_cpu.yaml",
                    help="--ixi: ldmtool config of train-ae/train-ldm [examples/ixi_cpu.yaml]")  # fmt: skip
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda: --device of every ldmtool command")
    ap.add_argument("--ldm-minutes", type=float, default=70.0, help="--ixi: train-ldm time limit of each branch")
    ap.add_argument("--ixi-guidance", type=lambda v: [float(x) for x in v.split(",")], default=[1.0, 2.0, 4.0],
                    help="--ixi: guidance scales the better branch is also sampled at (default 1,2,4)")  # fmt: skip
    ap.add_argument("--fewshot", type=int, default=None, metavar="K",
                    help="the few-shot lesion part instead: K annotated lesion cases")  # fmt: skip
    ap.add_argument("--fewshot-steps", type=int, default=800, help="--fewshot: fine-tuning steps on the K cases")
    ap.add_argument("--fewshot-lesion-weight", type=float, default=None,
                    help="--fewshot: train-ldm --lesion-weight of the fine-tuning on the K lesion cases "
                         "(default: the config's)")  # fmt: skip
    ap.add_argument("--fewshot-seg-steps", type=int, default=1000, help="--fewshot: downstream segmenter steps")
    ap.add_argument("--fewshot-label-from", default="region,painted",
                    help="--fewshot: `inpaint --label-from` of the inpainted cases' label maps (region, painted), or "
                         "segmenter (lesion where a segmenter trained on the real phantoms reads it), each compared")  # fmt: skip
    ap.add_argument("--fewshot-seeds", type=int, default=3, help="--fewshot: downstream seeds")
    ap.add_argument("--fewshot-copies", default="1",
                    help="--fewshot: inpainted cases per lesion-free phantom (each another annotated case's lesions at "
                         "another place); a list (1,3) compares the sets, the smaller ones subsets of the largest")  # fmt: skip
    ap.add_argument("--fewshot-strength", type=float, default=1.0,
                    help="--fewshot: below 1, every region starts from a sketch noised to this strength "
                    "(`inpaint --init --strength`, SDEdit); 1: from pure noise")  # fmt: skip
    ap.add_argument("--fewshot-sketch", choices=("scaled", "lesion"), default="scaled",
                    help="--fewshot: the sketch of --fewshot-strength and --fewshot-pasted: scaled (the region's own "
                    "tissue brightened by the real lesions' contrast) or lesion (the annotated case's lesion voxels "
                    "pasted at the new place)")  # fmt: skip
    ap.add_argument("--fewshot-pasted", action="store_true",
                    help="--fewshot: also train the downstream segmenter on the sketches themselves (copy and paste, "
                    "no diffusion): the control of what the inpainting adds")  # fmt: skip
    ap.add_argument("--fewshot-keep-drawn", type=float, default=0.0,
                    help="--fewshot: keep for the downstream models only the inpainted cases whose region brightened "
                    "by at least this share of the real lesions' contrast (0: all)")  # fmt: skip
    ap.add_argument("--fewshot-headroom", action="store_true",
                    help="--fewshot: also train the downstream segmenter on the real phantoms plus as many more real "
                    "lesion phantoms (another demo-data seed) as inpainted ones: the most inpainting could add")  # fmt: skip
    ap.add_argument("--fewshot-real-share", type=float, default=0.75,
                    help="--fewshot: share of real slices in every real + inpainted batch (evaluate --real-share)")  # fmt: skip
    args = ap.parse_args()
    DEVICE[0] = args.device
    if args.reuse and ((args.ixi is None and args.fewshot is None) or args.work is None):
        sys.exit("--reuse: only with --ixi or --fewshot, and --work (the folder holding the models to keep)")
    if args.ixi is not None:
        if not (args.ixi / "imagesTr").is_dir():
            sys.exit(f"--ixi {args.ixi}: no imagesTr/ there (expected ../shared/data/ixi_t1_2mm)")
        if args.ixi_spacing / 2 < 1 or abs(args.ixi_spacing / 2 - round(args.ixi_spacing / 2)) > 1e-6:
            sys.exit(f"--ixi-spacing {args.ixi_spacing:g}: must be a multiple of the data's 2 mm (2, 4, 6, …)")
        if not args.ixi_config.is_file():
            sys.exit(f"--ixi-config {args.ixi_config}: no such file")
        args.test = min(args.test, 48)
        if args.quick:
            args.test, args.steps, args.seg_epochs = 2, 3, 1
            args.ae_minutes, args.seg_minutes, args.ldm_minutes = 0.3, 0.3, 0.3
    elif args.fewshot is not None and not all(
        c.strip().isdigit() and int(c) > 0 for c in args.fewshot_copies.split(",")
    ):
        sys.exit(f"--fewshot-copies {args.fewshot_copies}: expected positive whole numbers, e.g. 1,3")
    elif args.fewshot is not None and not (
        {m.strip() for m in args.fewshot_label_from.split(",") if m.strip()} or {"none"}
    ) <= {"region", "painted", "segmenter"}:
        sys.exit(
            f"--fewshot-label-from {args.fewshot_label_from}: expected region, painted or segmenter, e.g. painted,segmenter"
        )
    elif args.fewshot is not None and not args.fewshot_keep_drawn >= 0:
        sys.exit(f"--fewshot-keep-drawn must be ≥ 0; got {args.fewshot_keep_drawn:g}")
    elif args.fewshot is not None and not 0 < args.fewshot_strength <= 1:
        sys.exit(f"--fewshot-strength must lie in (0, 1]; got {args.fewshot_strength:g}")
    elif args.fewshot is not None and args.fewshot_lesion_weight is not None and not args.fewshot_lesion_weight >= 0:
        sys.exit(f"--fewshot-lesion-weight {args.fewshot_lesion_weight:g}: expected a number ≥ 0 (0: no extra weight)")
    elif args.quick and args.fewshot is not None:
        args.n, args.test, args.shape, args.steps = 12, 6, "32,32,16", 3
        args.fewshot_steps, args.fewshot_seg_steps, args.fewshot_seeds = 5, 5, 1
    elif args.quick:
        args.n, args.test, args.shape, args.steps, args.seg_epochs = 8, 2, "32,32,16", 3, 2
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="ldmtool-conditional-")
    work = args.work or Path(tmp.name)
    try:
        if args.ixi is not None:
            run_ixi(args, work)
        elif args.fewshot is not None:
            run_fewshot(args, work)
        else:
            run(args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    with recorded("conditional", enabled="--quick" not in sys.argv):
        main()
