"""Wall time and peak memory of `evaluate` and `sample --reject-memorized` against the number and
size of volumes: the streaming two-stage path against the exhaustive in-memory one, with the recall
of the nearest training volume.

    python benchmarks/evaluate_scale.py --work runs/scale \
        --shape 160,192,160 --train 40,80 --synthetic 25,50 --real 10 --old-max 25
    python benchmarks/evaluate_scale.py --work runs/scale \
        --shape 160,192,160 --train 300 --synthetic 1000 --real 10 --full   # the whole evaluate at the target size
    python benchmarks/evaluate_scale.py --work runs/scale \
        --shape 160,192,160 --train 300 --synthetic 1000 --real 10 --kernels  # privacy kernels, old vs new

Volume sets are built from real IXI T1 brains (2 mm), resampled to --shape and stored as uint8
NIfTI: `train_N` (brains; beyond the brains available, left-right flipped copies, then both
shifted by a voxel more per round, so no two training volumes are the same), `real` (other
brains: evaluate's --real), `syn_M` (other brains with a little noise, and every 10th volume a
near-copy of a training brain, so there are known answers). Each measurement runs in its own
process (peak memory = that process's maximum resident set):

* new: `run_evaluation` with fidelity, diversity and privacy (the criteria whose cost grows
  with the number of volumes; speed reads sidecars; utility/robustness train fixed-step models),
  a fresh feature cache, then a second run over the same folders (cache warm);
* old: every set read into memory, exhaustive max SSIM of every synthetic volume to every
  training volume (the previous privacy stage; SSIM through the fast separable filter, so this
  understates the old cost; `monai_pair_s` is one pair through MONAI's SSIMMetric, as before);
* reject: `MemorizationFilter` on the training folder (index built once), then seconds per
  checked sample (samples read one at a time, the check alone timed; its cache of training
  volumes fills over the first samples, so use enough of them: --reject-samples).
* full (`--full`, instead of the three above): one `run_evaluation` with every criterion that
  reads the sets (fidelity, diversity, privacy, utility, robustness: segmenters on the training
  set, the synthetic set and both at evaluate's default size, tested clean and attacked on
  --real), on labelled twins of the sets (images linked, label maps from a fixed intensity rule),
  cold feature cache.
* kernels (`--kernels`): seconds per volume of the privacy stage's kernels, old and new side by
  side in one process: reading a case with and without its label map, the SSIM moments and a
  pair's SSIM filtered over the whole volume and in slabs (`nnsearch.SLAB_VOXELS`).
The last line fits time = a + b·synthetic + c·train over the new (or full) runs (or, all at one --train size,
time = a + b·synthetic at that size) and extrapolates to 1,000
synthetic × 300 training volumes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _write(vol: np.ndarray, path: Path) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.clip(vol * 255, 0, 255).astype(np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    tmp = path.with_name(path.name.replace(".nii.gz", ".partial.nii.gz"))
    nib.save(img, str(tmp))
    tmp.replace(path)  # a killed run leaves no truncated volume under the final name


def build_sets(ixi: Path, work: Path, shape: tuple[int, ...], n_train: list[int], n_syn: list[int], n_real: int):
    """Resampled brains written once per size; returns {set name: folder}."""
    from ldmtool.evaluate.volumes import open_volume_set, resize_volume

    src = open_volume_set(ixi, "ixi")
    n_src = len(src)
    n_tr_brains = min(max(n_train), n_src // 2)
    root = work / "x".join(map(str, shape))
    cache: dict[int, np.ndarray] = {}

    def brain(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = resize_volume(src.volume(i), shape)
        return cache[i]

    def train_volume(j: int) -> np.ndarray:
        """Training volume j: brains 0..n_tr_brains-1, their left-right flips, then both shifted by
        1, 2, … voxels (so no two are the same)."""
        v = brain(j % n_tr_brains)
        v = v[::-1] if (j // n_tr_brains) % 2 else v
        return np.roll(v, j // (2 * n_tr_brains), axis=1)

    sets = {}
    for n in n_train:
        sets[f"train_{n}"] = folder = root / f"train_{n}" / "imagesTr"
        for j in range(n):
            p = folder / f"t{j:04d}_0000.nii.gz"
            if not p.exists():
                _write(train_volume(j), p)
    others = list(range(n_tr_brains, n_src))
    sets["real"] = folder = root / "real" / "imagesTr"
    for j in range(n_real):
        p = folder / f"r{j:04d}_0000.nii.gz"
        if not p.exists():
            _write(brain(others[j % len(others)]), p)
    rng = np.random.default_rng(0)
    for n in n_syn:
        sets[f"syn_{n}"] = folder = root / f"syn_{n}" / "imagesTr"
        for j in range(n):
            p = folder / f"s{j:04d}_0000.nii.gz"
            if p.exists():
                continue
            base = train_volume(j % min(n_train)) if j % 10 == 0 else brain(others[(n_real + j) % len(others)])
            _write(np.clip(base + rng.normal(scale=0.01, size=base.shape), 0, 1), p)
    return {k: v.parent for k, v in sets.items()}


LABEL_RULE = "label 1 where 0.1 < intensity ≤ 0.45, 2 where intensity > 0.45 (intensities in [0, 1] as stored)"


def labelled_twin(folder: Path, work: Path) -> Path:
    """A labelled copy of a set for the downstream models: its images linked, label maps made from
    the image by LABEL_RULE (a tissue-class map a segmenter can learn), and a dataset.json."""
    import nibabel as nib

    twin = work / "labelled" / folder.name
    (twin / "imagesTr").mkdir(parents=True, exist_ok=True)
    (twin / "labelsTr").mkdir(parents=True, exist_ok=True)
    for img in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        link, lab = twin / "imagesTr" / img.name, twin / "labelsTr" / f"{case}.nii.gz"
        if not link.exists():
            link.symlink_to(img.resolve())
        if lab.exists():
            continue
        nii = nib.load(str(img))
        v = np.asarray(nii.dataobj).astype(np.float32) / 255.0
        seg = np.where(v > 0.45, 2, np.where(v > 0.1, 1, 0)).astype(np.uint8)
        tmp = lab.with_name(f"{case}.partial.nii.gz")
        nib.save(nib.Nifti1Image(seg, nii.affine), str(tmp))
        tmp.replace(lab)
    meta = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "tissue": 1, "bright": 2},
        "file_ending": ".nii.gz",
    }
    (twin / "dataset.json").write_text(json.dumps(meta))
    return twin


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_new(a) -> dict:
    """One `run_evaluation` (fidelity, diversity, privacy); cold then warm feature cache."""
    import warnings

    from ldmtool.config import EvaluateConfig
    from ldmtool.evaluate.report import run_evaluation

    warnings.simplefilter("ignore")
    cfg = EvaluateConfig(
        only=("fidelity", "diversity", "privacy"),
        cache_dir=a.cache,
        nn_recall_check=a.recall_queries,
        nn_candidates=a.candidates,
    )
    out = {}
    for run in ("cold", "warm")[: 1 if a.no_warm else 2]:
        t0 = time.perf_counter()
        rep = run_evaluation(Path(a.real), Path(a.syn), Path(a.out) / run, cfg, train_dir=Path(a.train))
        out[f"{run}_s"] = time.perf_counter() - t0
        out[f"{run}_stages"] = rep["stage_seconds"]
    search = rep["privacy"]["search"]
    return {
        **out,
        "recall": search["recall_vs_exhaustive"].get("recall"),
        "recall_checked": search["recall_vs_exhaustive"].get("checked"),
        "pairs_per_query": search["exact_pairs_per_query"],
        "flagged": rep["privacy"]["flagged"],
        "peak_mb": _peak_mb(),
    }


def child_full(a) -> dict:
    """One `run_evaluation` with every criterion that reads the volume sets (fidelity, diversity,
    privacy, utility, robustness) on the labelled twins: segmenters on the training set, the
    synthetic set and both, tested on --real; cold feature cache."""
    import warnings

    from ldmtool.config import EvaluateConfig
    from ldmtool.evaluate.report import run_evaluation

    warnings.simplefilter("ignore")
    cfg = EvaluateConfig(
        only=("fidelity", "diversity", "privacy", "utility", "robustness"),
        cache_dir=a.cache,
        nn_recall_check=a.recall_queries,
        nn_candidates=a.candidates,
    )
    t0 = time.perf_counter()
    rep = run_evaluation(
        Path(a.real), Path(a.syn), Path(a.out) / "full", cfg, train_dir=Path(a.train), test_dir=Path(a.real)
    )
    util = rep["utility"]
    return {
        "cold_s": time.perf_counter() - t0,
        "cold_stages": rep["stage_seconds"],
        "recall": rep["privacy"]["search"]["recall_vs_exhaustive"].get("recall"),
        "recall_checked": rep["privacy"]["search"]["recall_vs_exhaustive"].get("checked"),
        "pairs_per_query": rep["privacy"]["search"]["exact_pairs_per_query"],
        "flagged": rep["privacy"]["flagged"],
        "cases_held": util.get("cases_held"),
        "dice": {k: round(v["dice_mean"], 3) for k, v in util["results"].items()},
        "pgd_dice": {k: round(v["pgd"]["dice_mean"], 3) for k, v in rep["robustness"]["results"].items()},
        "peak_mb": _peak_mb(),
    }


def child_old(a) -> dict:
    """The exhaustive in-memory privacy stage, and one pair through MONAI's SSIMMetric."""
    from ldmtool.evaluate.privacy import max_ssim_to_set, ssim_batch
    from ldmtool.evaluate.volumes import load_volume_set

    t0 = time.perf_counter()
    real = load_volume_set(Path(a.real), "real")
    syn = load_volume_set(Path(a.syn), "synthetic", shape=real.shape, spacing=real.spacing)
    train = load_volume_set(Path(a.train), "train", shape=real.shape, spacing=real.spacing)
    read_s = time.perf_counter() - t0
    best, _ = max_ssim_to_set(syn.images, train.images)
    t1 = time.perf_counter()
    ssim_batch(syn.images[:1], train.images[:1])
    return {
        "read_s": read_s,
        "search_s": t1 - t0 - read_s,
        "monai_pair_s": time.perf_counter() - t1,
        "flagged": int((best > 0.95).sum()),
        "peak_mb": _peak_mb(),
    }


def child_reject(a) -> dict:
    """MemorizationFilter on the training folder: build once, then seconds per checked sample."""
    from ldmtool.evaluate.privacy import MemorizationFilter
    from ldmtool.evaluate.volumes import open_volume_set

    t0 = time.perf_counter()
    f = MemorizationFilter(Path(a.train), threshold=0.95, candidates=a.candidates or None)
    build_s = time.perf_counter() - t0
    syn = open_volume_set(Path(a.syn), "synthetic")
    n = min(a.reject_samples, len(syn))
    checking, rejected = 0.0, 0
    for i in range(n):  # one sample at a time, as `sample` hands them over; only the check is timed
        v = syn.volume(i)
        t1 = time.perf_counter()
        rejected += int(f.check(v).reject)
        checking += time.perf_counter() - t1
    return {
        "build_s": build_s,
        "per_sample_s": checking / max(n, 1),
        "samples": n,
        "rejected": rejected,
        "peak_mb": _peak_mb(),
    }


def measure(mode: str, args: argparse.Namespace, **paths) -> dict:
    """Run one child process; its JSON result."""
    cmd = [sys.executable, __file__, "--child", mode, "--candidates", str(args.candidates)]
    cmd += ["--recall-queries", str(args.recall_queries), "--reject-samples", str(args.reject_samples)]
    cmd += ["--no-warm"] if args.no_warm else []
    for k, v in paths.items():
        cmd += [f"--{k}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def fit_extrapolate(rows: list[dict], n_syn: int = 1000, n_train: int = 300) -> str:
    """Least-squares time = a + b·synthetic + c·train over the new runs, at (n_syn, n_train); when
    every run has the same training set size, time = a + b·synthetic at that size (the cache
    misses of the exact stage depend on the training set size, so a fit at the target size itself
    holds more than one that extrapolates in both)."""
    y = np.array([r["cold_s"] for r in rows])
    trains = {r["train"] for r in rows}
    if len(trains) == 1 and len({r["synthetic"] for r in rows}) >= 2:
        x = np.array([[1.0, r["synthetic"]] for r in rows])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        (t,) = trains
        return (
            f"time ≈ {coef[0]:.1f} s + {coef[1]:.2f} s × synthetic at {t} training volumes; "
            f"{n_syn} × {t}: {(coef @ [1.0, n_syn]) / 60:.1f} min"
        )
    x = np.array([[1.0, r["synthetic"], r["train"]] for r in rows])
    if len(rows) < 3 or np.linalg.matrix_rank(x) < 3:
        return "(need three runs varying synthetic and train, or two varying synthetic at one train size)"
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    pred = coef @ [1.0, n_syn, n_train]
    return (
        f"time ≈ {coef[0]:.1f} s + {coef[1]:.2f} s × synthetic + {coef[2]:.2f} s × train; "
        f"{n_syn} × {n_train}: {pred / 60:.1f} min"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ixi", default=str(REPO.parent / "shared" / "data" / "ixi_t1_2mm"), help="IXI T1 folder")
    ap.add_argument("--work", default="runs/evaluate_scale")
    ap.add_argument("--shape", default="160,192,160")
    ap.add_argument("--train", default="40,80", help="training set sizes (≥ 32 for the fit to hold, see the note)")
    ap.add_argument("--synthetic", default="25,50", help="synthetic set sizes")
    ap.add_argument("--real", type=int, default=10)
    ap.add_argument("--old-max", type=int, default=25, help="run the exhaustive path up to this many synthetic")
    ap.add_argument("--old-train-max", type=int, default=40, help="… and up to this many training volumes")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--recall-queries", type=int, default=10)
    ap.add_argument("--reject-samples", type=int, default=10)
    ap.add_argument("--no-warm", action="store_true", help="skip the second (cache-warm) evaluate of each size")
    ap.add_argument(
        "--full",
        action="store_true",
        help="measure instead the full evaluate (fidelity, diversity, privacy, utility, robustness) on "
        "labelled twins of the sets (label maps by a fixed intensity rule, printed with the table)",
    )
    ap.add_argument(
        "--kernels",
        action="store_true",
        help="measure instead the per-volume kernels of the privacy stage side by side (reads with and "
        "without the label map; SSIM moments and pairs filtered whole vs in slabs)",
    )
    a = ap.parse_args()
    if not (Path(a.ixi) / "imagesTr").is_dir():
        print(f"IXI brains not found at {a.ixi} — nothing to do (give --ixi DIR)", file=sys.stderr)  # no results file
        return
    from ldmtool.evaluate.audit import AUDIT_BATCH

    shape = tuple(_ints(a.shape))
    work = Path(a.work)
    n_train, n_syn = _ints(a.train), _ints(a.synthetic)
    sets = build_sets(Path(a.ixi), work, shape, n_train, n_syn, a.real)
    configs = [(n_syn[0], t) for t in n_train] + [(s, n_train[0]) for s in n_syn[1:]]
    if a.full:
        full_table(a, work, shape, sets, configs)
        return
    if a.kernels:
        kernels_table(work, shape, sets, n_train[0])
        return
    rows = []
    for s, t in configs:
        paths = dict(real=sets["real"], syn=sets[f"syn_{s}"], train=sets[f"train_{t}"])
        tag = f"{s}x{t}"
        new = measure("new", a, **paths, cache=work / "cache" / tag, out=work / "reports" / tag)
        rej = measure("reject", a, **paths)
        old = measure("old", a, **paths) if s <= a.old_max and t <= a.old_train_max else None
        rows.append({"synthetic": s, "train": t, **new, "reject": rej, "old": old})
    print(f"## evaluate at {'×'.join(map(str, shape))}, {a.real} real volumes, candidates {a.candidates}\n")
    print(
        "| synthetic | train | new cold s | new warm s | new peak MB | NN recall (checked) | exact pairs/query "
        "| old s (read + search) | old peak MB | MONAI SSIM pair s | reject build s | reject s/sample | reject peak MB |"
    )
    print("|" + "---|" * 13)
    for r in rows:
        o, j = r["old"], r["reject"]
        warm = f"{r['warm_s']:.1f}" if "warm_s" in r else "–"
        cells = [r["synthetic"], r["train"], f"{r['cold_s']:.1f}", warm, f"{r['peak_mb']:.0f}"]
        cells += [f"{r['recall']} ({r['recall_checked']})", f"{r['pairs_per_query']:.2f}"]
        if o:
            cells += [f"{o['read_s']:.1f} + {o['search_s']:.1f}", f"{o['peak_mb']:.0f}", f"{o['monai_pair_s']:.2f}"]
        else:
            cells += ["–", "–", "–"]
        cells += [f"{j['build_s']:.1f}", f"{j['per_sample_s']:.2f}", f"{j['peak_mb']:.0f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    for run in ("cold", "warm"):
        stages = {f"{r['synthetic']}x{r['train']}": r[f"{run}_stages"] for r in rows if f"{run}_stages" in r}
        if not stages:
            continue
        print(f"\nstage seconds ({run}):", json.dumps(stages))
    if min(n_train) < AUDIT_BATCH:
        print(
            f"\nnote: the audit's encoder trains on batches of min({AUDIT_BATCH}, training volumes), so its cost "
            f"grows with the training set only up to {AUDIT_BATCH} volumes; with a training size below that "
            "the fit's per-training-volume slope overstates large sets"
        )
    print("\nlinear fit of the new path:", fit_extrapolate(rows))


def kernels_table(work: Path, shape: tuple[int, ...], sets: dict, n_train: int, n: int = 8) -> None:
    """--kernels: seconds per volume of the privacy stage's kernels, old and new side by side in
    one process, on the labelled twin of train_N (its first n volumes)."""
    import torch

    from ldmtool.evaluate import nnsearch
    from ldmtool.evaluate.privacy import ssim_window
    from ldmtool.evaluate.volumes import open_volume_set

    torch.set_num_threads(2)
    twin = labelled_twin(sets[f"train_{n_train}"], work / "x".join(map(str, shape)))
    vs = open_volume_set(twin, "train")
    n = min(n, len(vs))

    def per_volume(fn) -> float:
        fn(0)
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        return (time.perf_counter() - t) / n

    rows = [
        ("read a case: image + label map (old) vs image only", per_volume(vs.read), per_volume(vs.volume)),
    ]
    vols = [vs.volume(i) for i in range(n)]
    taps = nnsearch.gaussian_taps(ssim_window(vs.shape))
    cpu = torch.device("cpu")
    slab = nnsearch.SLAB_VOXELS

    def moments(voxels: int):
        nnsearch.SLAB_VOXELS = voxels
        return per_volume(lambda i: nnsearch.ssim_stats(vols[i], taps, cpu))

    def pairs(voxels: int) -> tuple[float, list[float]]:
        nnsearch.SLAB_VOXELS = voxels
        stats = [nnsearch.ssim_stats(v, taps, cpu) for v in vols]
        values = []
        t = time.perf_counter()
        for i in range(n):
            values.append(nnsearch.ssim_pair(stats[i], stats[(i + 1) % n], taps))
        return (time.perf_counter() - t) / n, values

    whole = int(np.prod(vs.shape))
    rows.append(("SSIM moments of a volume: whole (old) vs slabs", moments(whole), moments(slab)))
    (p_old, v_old), (p_new, v_new) = pairs(whole), pairs(slab)
    nnsearch.SLAB_VOXELS = slab
    rows.append(("SSIM of a pair from cached moments: whole (old) vs slabs", p_old, p_new))
    print(f"## privacy kernels at {'×'.join(map(str, shape))}, {n} volumes, 2 torch threads\n")
    print("| kernel | old s | new s | ratio |")
    print("|---|---|---|---|")
    for name, old, new in rows:
        print(f"| {name} | {old:.4f} | {new:.4f} | {old / new:.2f} |")
    print(f"\nlargest |SSIM whole − SSIM slabs| over {n} pairs: {max(abs(x - y) for x, y in zip(v_old, v_new)):.2e}")


def full_table(a, work: Path, shape: tuple[int, ...], sets: dict, configs: list[tuple[int, int]]) -> None:
    """--full: the whole evaluate per configuration, its stage seconds and the linear fit."""
    twins = {k: labelled_twin(v, work / "x".join(map(str, shape))) for k, v in sets.items()}
    rows = []
    for s, t in configs:
        tag = f"full-{s}x{t}"
        paths = dict(real=twins["real"], syn=twins[f"syn_{s}"], train=twins[f"train_{t}"])
        rows.append(
            {
                "synthetic": s,
                "train": t,
                **measure("full", a, **paths, cache=work / "cache" / tag, out=work / "reports" / tag),
            }
        )
    print(
        f"## full evaluate at {'×'.join(map(str, shape))}, {a.real} real (= test) volumes, candidates {a.candidates}\n"
    )
    print(f"Label maps of every set: {LABEL_RULE}. Downstream settings: evaluate's defaults.\n")
    print(
        "| synthetic | train | total s | peak MB | cases held | NN recall (checked) | Dice real / syn / both | PGD Dice real / syn / both |"
    )
    print("|" + "---|" * 8)
    for r in rows:
        dice = " / ".join(f"{r['dice'][k]:.3f}" for k in ("real", "synthetic", "real+synthetic"))
        pgd = " / ".join(f"{r['pgd_dice'][k]:.3f}" for k in ("real", "synthetic", "real+synthetic"))
        cells = [r["synthetic"], r["train"], f"{r['cold_s']:.1f}", f"{r['peak_mb']:.0f}", r["cases_held"]]
        cells += [f"{r['recall']} ({r['recall_checked']})", dice, pgd]
        print("| " + " | ".join(map(str, cells)) + " |")
    print("\nstage seconds:", json.dumps({f"{r['synthetic']}x{r['train']}": r["cold_stages"] for r in rows}))
    print("\nlinear fit of the full evaluate:", fit_extrapolate(rows))


def _child() -> None:
    ap = argparse.ArgumentParser()
    for k in ("child", "real", "syn", "train", "cache", "out"):
        ap.add_argument(f"--{k}")
    for k in ("candidates", "recall_queries", "reject_samples"):
        ap.add_argument(f"--{k.replace('_', '-')}", type=int)
    ap.add_argument("--no-warm", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    result = {"new": child_new, "old": child_old, "reject": child_reject, "full": child_full}[a.child](a)
    print(json.dumps(result))


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child()
    else:
        from _results import recorded  # benchmarks/_results.py: the stamped results file

        with recorded("evaluate_scale"):
            main()
