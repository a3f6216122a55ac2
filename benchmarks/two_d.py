"""Class-conditional 2D synthesis on PneumoniaMNIST: does a classifier learn from the samples?

    python benchmarks/two_d.py --work /tmp/twod        # 25-40 min on a shared 2-core CPU
    python benchmarks/two_d.py --quick --work /tmp/q   # smoke test: ~3 min, not a result

Data: PneumoniaMNIST (MedMNIST v2; paediatric chest X-rays, 28×28, 0 normal / 1 pneumonia), the
file `pneumoniamnist.npz` in `../shared/data/pneumoniamnist/` beside the repository (or --data).
Without it the script says so and exits 0.

Every step runs through the `ldmtool` commands a user would type (in this process), on PNG class
folders written into --work (never into the repository):
  1. the train split as `WORK/train/normal/*.png`, `WORK/train/pneumonia/*.png`;
  2. `train-ae` on it, then `train-ldm --condition-on class` (the classes come from the folder
     names; attribute dropout gives classifier-free guidance);
  3. `sample --class normal` and `sample --class pneumonia` (--per-class images each, by default as
     many as the real train split has of the class; DPM-Solver++
     2M, classifier-free guidance --guidance);
  4. `evaluate` (all six criteria) of both sample folders as one set against the real train split
     (--real/--train) and the real test split (--test), all as class folders: utility and robustness
     are classification (train on real / synthetic / both, test on real), classes from the folder
     names and the samples' provenance;
  5. a small CNN classifier (the same fixed number of steps for every training set, --seeds runs),
     tested on the real test split (accuracy, AUROC), trained on: the real train split; the
     synthetic images only (train on synthetic, test on real); a stratified 10 % of the real train
     split; that 10 % plus all synthetic images.
The generator is trained on the whole train split, so "10 % + synthetic" measures what samples of
a model of the full split add to a small labelled subset, not a generator trained on the 10 % alone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _commands import run_logged  # noqa: E402
from _results import RESULTS_DIR, commit, recorded  # noqa: E402

CLASSES = ("normal", "pneumonia")
LOG: list[Path] = []  # where the commands' own output goes (the work folder's ldmtool.log)

CONFIG = """# benchmarks/two_d.py: PneumoniaMNIST 28×28 → latents 4×14×14
autoencoder:
  channels: [32, 64]
  latent_channels: 4
  norm_num_groups: 8
  position_features: 0
ae_train:
  epochs: {ae_epochs}
  batch_size: 64
  lr: 2.0e-3
  warmup_steps: 50
  max_minutes: {ae_minutes}
  val_fraction: 0.05
denoiser:
  channels: [32, 64]
  attention_levels: [false, true]
  num_head_channels: 32
  objective: v
ldm_train:
  epochs: 1000
  batch_size: 64
  lr: 1.0e-3
  warmup_steps: 100
  max_minutes: {ldm_minutes}
  ema_decay: 0.999
  cfg_dropout: 0.15
  val_fraction: 0.05
"""


def ldmtool(*args) -> None:
    """Run one `ldmtool` command in this process, its output to the work folder's log."""
    run_logged(LOG[0], *args)


def write_pngs(images: np.ndarray, labels: np.ndarray, root: Path) -> None:
    """Class folders root/CLASS/NNNNN.png of uint8 images (N, 28, 28) with labels (N,)."""
    from PIL import Image

    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == k):
            Image.fromarray(images[i]).save(root / name / f"{i:05d}.png")


def read_samples(folder: Path) -> np.ndarray:
    """The PNG samples of one `sample` output folder as (N, H, W) uint8."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "imagesTr").glob("*.png"))])


def classifier():
    """A small CNN for 28×28 grey images → 2 logits."""
    import torch.nn as nn

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2)
    )


def train_and_test(x, y, x_test, y_test, seed: int, steps: int) -> tuple[float, float]:
    """Train the CNN for `steps` steps of 64 images (random flips), test: (accuracy, AUROC)."""
    import torch
    from monai.metrics import compute_roc_auc

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = classifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    xt = torch.from_numpy(x).float()[:, None] / 255.0
    yt = torch.from_numpy(y).long()
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=g)
        batch = xt[idx]
        flip = torch.rand(64, generator=g) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        loss = torch.nn.functional.cross_entropy(net(batch), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        prob = torch.softmax(net(torch.from_numpy(x_test).float()[:, None] / 255.0), 1)[:, 1]
    acc = float(((prob > 0.5).long().numpy() == y_test).mean())
    auc = float(compute_roc_auc(prob, torch.from_numpy(y_test)))
    return acc, auc


def stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a class-stratified random `fraction` of the cases."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(y == k))[: max(1, round(fraction * (y == k).sum()))] for k in (0, 1)]
    return np.sort(np.concatenate(keep))


def print_report(path: Path, seconds: float) -> None:
    """The six criteria of `ldmtool evaluate`'s report.json as tables."""
    import json

    r = json.loads(path.read_text())
    f, d, p, sp = r["fidelity"], r["diversity"], r["privacy"], r["speed"]
    ms = d["pairwise_ms_ssim_synthetic"], d["pairwise_ms_ssim_real"]
    print(f"\n`ldmtool evaluate` (all six criteria; {seconds / 60:.1f} min; report.json in the work folder)\n")
    print("| criterion | measure | value |")
    print("|---|---|---:|")
    rows = [
        ("fidelity", f"precision (k={f['k']}, {f['synthetic_points']} synthetic / {f['real_points']} real images)",
         f"{f['precision']:.3f}"),
        ("fidelity", "FID (EfficientNet-Lite0 features)", f"{f['fid']:.1f}"),
        ("fidelity", "FRD (radiomic attributes)", f"{r['attributes']['frd']:.3f}"),
        ("diversity", "recall", f"{d['recall']:.3f}"),
        ("diversity", "pairwise SSIM synthetic / real", f"{d['pairwise_ssim_synthetic']:.3f} / {d['pairwise_ssim_real']:.3f}"),
        ("diversity", "pairwise MS-SSIM synthetic / real",
         " / ".join("–" if m["value"] is None else f"{m['value']:.3f}" for m in ms)),
        ("speed", "samples/s (provenance)", f"{sp['samples_per_second']:.1f}" if sp.get("available") else "–"),
        ("privacy", f"max SSIM to train (q={p['q']}) synthetic / held-out real",
         f"{p['max_ssim_mean']:.3f} / {p.get('heldout_max_ssim_mean', float('nan')):.3f}"),
        ("privacy", f"flagged (SSIM > {p['flag_threshold']})", str(p["flagged"])),
    ]  # fmt: skip
    if "memorisation" in p:
        rows.append(("privacy", "memorisation ratio (NN distance)", f"{p['memorisation']['ratio']:.3f}"))
    if "audit" in p:
        rows.append(("privacy", "copies (contrastive audit)", str(p["audit"]["copies"])))
    for src, v in r["utility"]["results"].items():
        rows.append(("utility", f"accuracy, classifier trained on {src}", f"{v['accuracy']:.3f}"))
    for src, v in r["robustness"]["results"].items():
        rows.extend(("robustness", f"trained on {src}: {k}", f"{s['accuracy']:.3f}") for k, s in v.items())
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nutility/robustness: {r['utility']['model']}, {r['utility']['steps']} steps, "
          f"test {r['utility']['n_test']} real images")  # fmt: skip


def montage(real: np.ndarray, y: np.ndarray, synth: dict[str, np.ndarray], path: Path, n: int = 8) -> None:
    """Rows: real normal, synthetic normal, real pneumonia, synthetic pneumonia (n each), 2× upscaled."""
    from PIL import Image

    rows = []
    for k, name in enumerate(CLASSES):
        rows.append(np.concatenate(list(real[np.flatnonzero(y == k)[:n]]), axis=1))
        rows.append(np.concatenate(list(synth[name][:n]), axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def run(args, work: Path, data: np.lib.npyio.NpzFile) -> None:
    LOG.append(work / "ldmtool.log")
    x, y = data["train_images"], data["train_labels"].ravel().astype(np.int64)
    x_test, y_test = data["test_images"], data["test_labels"].ravel().astype(np.int64)
    if args.quick:
        keep = stratified_subset(y, 0.1, 0)
        x, y = x[keep], y[keep]
    train_dir, test_dir = work / "train", work / "test"
    if not train_dir.is_dir():
        write_pngs(x, y, train_dir)
    if not test_dir.is_dir():
        write_pngs(x_test, y_test, test_dir)
    cfg = work / "two_d.yaml"
    cfg.write_text(CONFIG.format(ae_epochs=args.ae_epochs, ae_minutes=args.ae_minutes, ldm_minutes=args.ldm_minutes))
    t0 = time.perf_counter()
    ldmtool("--seed", args.seed, "train-ae", train_dir, "--out", work / "AE", "--config", cfg)
    t_ae = time.perf_counter() - t0
    ldmtool("--seed", args.seed, "train-ldm", train_dir, "--ae", work / "AE", "--out", work / "LDM",
            "--config", cfg, "--condition-on", "class")  # fmt: skip
    t_ldm = time.perf_counter() - t0 - t_ae
    synth, t_sample = {}, {}
    for k, name in enumerate(CLASSES):
        n = args.per_class or int((y == k).sum())
        t1 = time.perf_counter()
        ldmtool("--seed", args.seed + k, "sample", "--ae", work / "AE", "--ldm", work / "LDM", "--out",
                work / f"synth_{name}", "--n", n, "--class", name, "--guidance", args.guidance,
                "--sampler", "dpmpp2m", "--steps", args.steps, "--batch-size", 128, "--decode-batch", 256)  # fmt: skip
        t_sample[name] = time.perf_counter() - t1
        synth[name] = read_samples(work / f"synth_{name}")
    t1 = time.perf_counter()
    ldmtool("--seed", args.seed, "evaluate", "--real", train_dir, "--train", train_dir, "--test", test_dir,
            *(a for c in CLASSES for a in ("--synthetic", work / f"synth_{c}")), "--out", work / "report",
            "--seg-steps", args.clf_steps)  # fmt: skip
    t_eval = time.perf_counter() - t1
    xs = np.concatenate([synth[c] for c in CLASSES])
    ys = np.concatenate([np.full(len(synth[c]), k) for k, c in enumerate(CLASSES)])
    sub = stratified_subset(y, 0.1, args.seed)
    sets = {
        "real (train split)": (x, y),
        "synthetic only": (xs, ys),
        "10 % real": (x[sub], y[sub]),
        "10 % real + synthetic": (np.concatenate([x[sub], xs]), np.concatenate([y[sub], ys])),
    }
    print(f"PneumoniaMNIST: train {len(y)} ({', '.join(f'{c} {(y == k).sum()}' for k, c in enumerate(CLASSES))}), "
          f"test {len(y_test)}; synthetic {len(ys)} ({', '.join(f'{c} {len(synth[c])}' for c in CLASSES)}), "
          f"guidance {args.guidance}, DPM-Solver++ 2M {args.steps} steps")  # fmt: skip
    print(f"time: train-ae {t_ae / 60:.1f} min, train-ldm {t_ldm / 60:.1f} min, sampling "
          + ", ".join(f"{c} {t_sample[c]:.0f} s" for c in CLASSES))  # fmt: skip
    print_report(work / "report" / "report.json", t_eval)
    print(f"\nclassifier: small CNN, {args.clf_steps} steps of 64, tested on the real test split; "
          f"mean ± sd over seeds {', '.join(map(str, range(args.seeds)))}\n")  # fmt: skip
    print("| training set | images | accuracy | AUROC |")
    print("|---|---:|---:|---:|")
    for name, (xi, yi) in sets.items():
        scores = np.array([train_and_test(xi, yi, x_test, y_test, s, args.clf_steps) for s in range(args.seeds)])
        mean, sd = scores.mean(0), scores.std(0)
        print(f"| {name} | {len(yi)} | {mean[0]:.3f} ± {sd[0]:.3f} | {mean[1]:.3f} ± {sd[1]:.3f} |", flush=True)
    if not args.quick:
        path = RESULTS_DIR / f"two_d-pneumoniamnist-samples-{commit()[:7]}.png"
        montage(x, y, synth, path)
        print(f"\nrows: real normal, synthetic normal, real pneumonia, synthetic pneumonia: {path.name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = REPO.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist.npz"
    ap.add_argument("--data", type=Path, default=default, help="pneumoniamnist.npz")
    ap.add_argument("--work", type=Path, required=True, help="folder for the PNGs, models and samples (new or reused)")
    ap.add_argument("--quick", action="store_true", help="10 %% of the data, minutes of training: a smoke test")
    ap.add_argument("--ae-epochs", type=int, default=30)
    ap.add_argument("--ae-minutes", type=float, default=4.0)
    ap.add_argument("--ldm-minutes", type=float, default=12.0)
    ap.add_argument(
        "--per-class", type=int, default=None, help="synthetic images per class [as many as the real train split has]"
    )
    ap.add_argument("--steps", type=int, default=10, help="sampling steps (DPM-Solver++ 2M)")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--clf-steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=3, help="classifier runs per training set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"PneumoniaMNIST not found at {args.data} (pass --data FILE); nothing to do", file=sys.stderr)
        return
    if args.quick:
        args.ae_epochs, args.ae_minutes, args.ldm_minutes, args.clf_steps, args.seeds = 2, 0.5, 0.5, 50, 1
        args.steps, args.per_class = 5, 60
    if args.work.resolve().is_relative_to(REPO):
        raise SystemExit(f"--work {args.work} is inside the repository; choose a folder outside it")
    args.work.mkdir(parents=True, exist_ok=True)
    for name in ("AE", "LDM", *(f"synth_{c}" for c in CLASSES)):  # a fresh run every time
        shutil.rmtree(args.work / name, ignore_errors=True)
    run(args, args.work, np.load(args.data))


if __name__ == "__main__":
    with recorded("two_d", enabled="--quick" not in sys.argv and "--help" not in sys.argv):
        main()
