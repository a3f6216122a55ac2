"""LDSeg vs the UNet baseline: accuracy, DDIM steps, robustness to image noise, speed.

    pip install -e '.[bench]'               # nilearn: the MNI152 template and its masks (offline)
    python benchmarks/segmentation.py                     # both data sets at 3000 steps, about 2.5 h on 2 CPU cores
    python benchmarks/segmentation.py --steps 300 --only phantoms   # a quick look

Two labelled data sets that need no download:
  phantoms   ldmtool's demo phantoms (head + lesion labels), --n-train / --n-test volumes of --shape,
             train and test from different seeds.
  mni152     nilearn's MNI152 T1 template (2 mm) with labels brain (other) / grey matter / white
             matter from its brain mask and GM/WM probability maps (class = the larger of GM/WM
             where it is ≥ 0.5 inside the brain); axial slices in alternating blocks of 8: even
             blocks train, odd blocks test.
Both models train with `ldmtool.train.segmentation.train_segmenter` (the code behind `train-seg`):
same loss terms (CE + 2·Dice [+ MSE of the noise for LDSeg]), optimiser, schedule, batch and number
of steps; the UNet is a MONAI UNet scaled to about LDSeg's parameter count. Images are scaled to
[0, 1] (percentiles 0.5/99.5), so noise σ is in those units.

Tables (markdown): Dice/IoU/HD95 per class; LDSeg Dice vs DDIM steps {1, 2, 5, 10, 50}; Dice vs
Gaussian image noise σ ∈ {0, 0.05, 0.1, 0.2}; seconds per volume (2 DDIM steps vs one UNet pass),
measured side by side in this run. Numbers are comparable only within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldmtool.config import SegLossConfig, SegModelConfig, SegTrainConfig  # noqa: E402
from ldmtool.data.prepared import PreparedData  # noqa: E402
from ldmtool.data.preprocess import PreprocessConfig, _intensity_range, _normalise  # noqa: E402
from ldmtool.metrics import segmentation_metrics  # noqa: E402
from ldmtool.pipelines.segmenter import DEFAULT_STEPS, Segmenter, sampling_start
from ldmtool.runtime import resolve_device  # noqa: E402
from ldmtool.train.segmentation import train_segmenter  # noqa: E402

STEPS_SWEEP = (1, 2, 5, 10, 50)
SIGMAS = (0.0, 0.05, 0.1, 0.2)


def _norm(vol: np.ndarray) -> np.ndarray:
    pre = PreprocessConfig()
    return _normalise(vol.astype(np.float32), _intensity_range(vol.astype(np.float32), pre), pre)


def phantoms(n_train: int, n_test: int, shape: tuple[int, int, int]):
    from ldmtool.data.phantoms import make_phantom

    def make(n, seed):
        rng = np.random.default_rng(seed)
        pairs = [make_phantom(rng, shape) for _ in range(n)]
        imgs = np.stack([_norm(p[0]).transpose(2, 0, 1) for p in pairs])  # (N, K, I, J): slices first
        labs = np.stack([p[1].transpose(2, 0, 1) for p in pairs])
        return imgs, labs

    names = {"background": 0, "head": 1, "lesion": 2}
    return make(n_train, 0), make(n_test, 1), names, (3.0, 3.0)


def mni152():
    try:
        from nilearn import datasets
    except ImportError:
        raise SystemExit("the mni152 case needs nilearn: pip install -e '.[bench]'") from None
    t1 = np.asarray(datasets.load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata()) > 0.5
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), dtype=np.float32)
    label = np.zeros(t1.shape, dtype=np.uint8)
    label[brain] = 1
    label[brain & (gm >= 0.5) & (gm >= wm)] = 2
    label[brain & (wm >= 0.5) & (wm > gm)] = 3
    ks = np.nonzero(brain.any(axis=(0, 1)))[0]
    ii, jj = np.nonzero(brain.any(axis=2))
    box = (slice(max(ii.min() - 4, 0), ii.max() + 5), slice(max(jj.min() - 4, 0), jj.max() + 5))
    img = _norm(t1)[box]
    lab = label[box]
    train_k = [k for k in ks if (k // 8) % 2 == 0]
    test_k = [k for k in ks if (k // 8) % 2 == 1]
    pick = lambda a, k: a[:, :, k].transpose(2, 0, 1)[None]  # noqa: E731  (1, K, I, J)
    names = {"background": 0, "brain (other)": 1, "grey matter": 2, "white matter": 3}
    return (pick(img, train_k), pick(lab, train_k)), (pick(img, test_k), pick(lab, test_k)), names, (2.0, 2.0)


def train(arch, data, names, args, out: Path, console):
    (imgs, labs) = data
    prepared = PreparedData(
        images=torch.from_numpy(np.ascontiguousarray(imgs)),
        labels=torch.from_numpy(np.ascontiguousarray(labs)),
        case_ids=[f"c{i}" for i in range(len(imgs))],
        affines=[np.eye(4)] * len(imgs),
        label_names=names,
    )
    extra = {}
    if args.channels:
        extra["channels"] = tuple(int(c) for c in args.channels.split(","))
    if args.latent_channels:
        extra["latent_channels"] = args.latent_channels
    cfg = SegModelConfig(arch=arch, dims=2, **extra)
    tc = SegTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=50, val_fraction=0.0)
    t0 = time.perf_counter()
    result = train_segmenter(
        prepared,
        out,
        cfg,
        SegLossConfig(),
        tc,
        PreprocessConfig().to_dict(),
        args.device,
        seed=0,
        console=console,
        resume="auto" if args.keep else "never",
    )
    timing = out / "benchmark_train_seconds.json"  # with --keep, a finished model is reused with its training time
    if result.already_complete and timing.is_file():
        seconds = json.loads(timing.read_text())["seconds"]
    else:
        seconds = time.perf_counter() - t0
        timing.write_text(json.dumps({"seconds": seconds}))
    model = Segmenter.from_pretrained(result.path, args.device)
    return model, cfg, seconds, result.parameters


def predict(model: Segmenter, cfg, imgs, steps=2, sigma=0.0, seed=0, start=None, batch=32):
    device = model.device
    g = torch.Generator().manual_seed(seed)
    gn = torch.Generator().manual_seed(seed + 99)
    preds, seconds = [], 0.0
    for vol in imgs:
        x = torch.from_numpy(vol).float()
        if sigma:
            x = x + sigma * torch.randn(x.shape, generator=gn)
        t0 = time.perf_counter()
        probs, _ = model.predict(x, steps=steps, generator=g, batch=batch, start=start)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        preds.append(probs.argmax(0).numpy())
    return preds, seconds / len(imgs)


def scores(preds, labs, k, spacing):
    per = [segmentation_metrics(p, t, k, (1.0, *spacing)) for p, t in zip(preds, labs)]
    return {m: np.nanmean([s[m] for s in per], axis=0) for m in ("dice", "iou", "hd95")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("phantoms", "mni152"), default=None)
    ap.add_argument("--steps", type=int, default=3000, help="optimisation steps per model")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--shape", default="64,64,32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda (training and prediction)")
    ap.add_argument(
        "--channels", default=None, help="segmenter channels per level, e.g. 16,32 (default: SegModelConfig's)"
    )
    ap.add_argument(
        "--latent-channels", type=int, default=None, help="LDSeg latent channels (default: SegModelConfig's)"
    )
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the trained models in this folder and reuse them when run again with the same settings",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    from rich.console import Console

    console = Console(stderr=True)
    shape = tuple(int(v) for v in args.shape.split(","))
    cases = {"phantoms": lambda: phantoms(args.n_train, args.n_test, shape), "mni152": mni152}
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"# LDSeg vs UNet — {where}, "
        f"torch {torch.__version__}; {args.steps} steps × batch {args.batch_size} per model, lr {args.lr:g}; "
        f"segmenter channels {args.channels or ','.join(map(str, SegModelConfig().channels))}, "
        f"LDSeg latent channels {args.latent_channels or SegModelConfig().latent_channels}",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = str(args.keep)
        for name, make in cases.items():
            if args.only and name != args.only:
                continue
            train_set, (timgs, tlabs), names, spacing = make()
            k = len(names)
            cls = [n for n, v in sorted(names.items(), key=lambda kv: kv[1]) if v > 0]
            console.print(
                f"[bold]{name}[/]: {train_set[0].shape[0]}×{train_set[0].shape[1]} training slices of "
                f"{train_set[0].shape[2]}×{train_set[0].shape[3]}, {timgs.shape[0]}×{timgs.shape[1]} test slices"
            )
            models = {}
            for arch in ("ldseg", "unet"):
                models[arch] = train(arch, train_set, names, args, Path(tmp) / f"{name}-{arch}", console)
            lines += [f"## {name}", ""]
            lines += [
                "| model | parameters | train s | "
                + " | ".join(f"Dice {c}" for c in cls)
                + " | "
                + " | ".join(f"IoU {c}" for c in cls)
                + " | "
                + " | ".join(f"HD95 {c} (mm)" for c in cls)
                + " |",
                "|---" * (3 + 3 * len(cls)) + "|",
            ]
            base = {}
            for arch, (model, cfg, secs, params) in models.items():
                for st in (DEFAULT_STEPS, 2) if arch == "ldseg" else (1,):
                    preds, _ = predict(model, cfg, timgs, steps=st)
                    s = scores(preds, tlabs, k, spacing)
                    base[arch if arch == "unet" else st] = s
                    name = f"{arch} ({st} DDIM step{'s' if st > 1 else ''})" if arch == "ldseg" else arch
                    lines.append(f"| {name} | {params / 1e6:.2f} M | {secs:.0f} | ")
                    lines[-1] += (
                        " | ".join(f"{v:.3f}" for v in s["dice"])
                        + " | "
                        + " | ".join(f"{v:.3f}" for v in s["iou"])
                        + " | "
                        + " | ".join(f"{v:.1f}" for v in s["hd95"])
                        + " |"
                    )
            lines += [
                "",
                "| DDIM steps | " + " | ".join(f"Dice {c}" for c in cls) + " | mean Dice | s/volume |",
                "|---" * (3 + len(cls)) + "|",
            ]
            model, cfg = models["ldseg"][:2]
            by_steps = {}
            for st in STEPS_SWEEP:
                preds, sec = predict(model, cfg, timgs, steps=st)
                d = scores(preds, tlabs, k, spacing)["dice"]
                by_steps[st] = float(np.mean(d))
                lines.append(f"| {st} | " + " | ".join(f"{v:.3f}" for v in d) + f" | {np.mean(d):.3f} | {sec:.3f} |")
            # where sampling starts: t = T − 1 (pure noise, ẑ_0 meaningless) vs the default (√ᾱ ≥ 0.05)
            free = [i for i in range(len(tlabs)) if not (tlabs[i] == k - 1).any()]
            lines += [
                "",
                "| first DDIM timestep (2 steps) | "
                + " | ".join(f"Dice {c}" for c in cls)
                + f" | mean Dice | voxels labelled {cls[-1]} in the {len(free)} test volumes without it |",
                "|---" * (3 + len(cls)) + "|",
            ]
            for start in (cfg.num_train_timesteps - 1, sampling_start(cfg)):
                preds, _ = predict(model, cfg, timgs, steps=2, start=start)
                d = scores(preds, tlabs, k, spacing)["dice"]
                fp = sum(int((preds[i] == k - 1).sum()) for i in free)
                lines.append(
                    f"| {start}{' (default)' if start == sampling_start(cfg) else ''} | "
                    + " | ".join(f"{v:.3f}" for v in d)
                    + f" | {np.mean(d):.3f} | {fp} |"
                )
            lines += [
                "",
                f"| σ (image noise) | LDSeg mean Dice ({DEFAULT_STEPS} DDIM step{'s' if DEFAULT_STEPS > 1 else ''}) | UNet mean Dice |",
                "|---|---|---|",
            ]
            by_sigma = {}
            for sg in SIGMAS:
                row = []
                for arch in ("ldseg", "unet"):
                    m, c = models[arch][:2]
                    preds, _ = predict(m, c, timgs, steps=DEFAULT_STEPS, sigma=sg)
                    row.append(float(np.mean(scores(preds, tlabs, k, spacing)["dice"])))
                by_sigma[sg] = row
                lines.append(f"| {sg:g} | {row[0]:.3f} | {row[1]:.3f} |")
            # speed, side by side, after a warm-up pass of each
            for arch in ("ldseg", "unet"):
                predict(*models[arch][:2], timgs[:1], steps=2)
            _, t_ld = predict(*models["ldseg"][:2], timgs, steps=2)
            _, t_ld1 = predict(*models["ldseg"][:2], timgs, steps=1)
            _, t_un = predict(*models["unet"][:2], timgs, steps=2)
            if len(timgs) > 1:  # all test volumes through the network at once, as `segment` does with a folder
                together = np.concatenate(list(timgs))[None]
                _, b_ld = predict(*models["ldseg"][:2], together, steps=2, batch=together.shape[1])
                _, b_un = predict(*models["unet"][:2], together, batch=together.shape[1])
                b_ld, b_un = b_ld / len(timgs), b_un / len(timgs)
            un = float(np.mean(base["unet"]["dice"]))
            lines += ["", "| target | value | met |", "|---|---|---|"]
            for st in sorted({DEFAULT_STEPS, 2}):
                ld = float(np.mean(base[st]["dice"]))
                lines.append(
                    f"| clean mean Dice: LDSeg ({st} DDIM step{'s' if st > 1 else ''}"
                    f"{', the default' if st == DEFAULT_STEPS else ''}) ≥ UNet − 0.02 | {ld:.3f} vs {un:.3f} | "
                    f"{'yes' if ld >= un - 0.02 else 'no'} |"
                )
            lines += [
                f"| σ=0.2 mean Dice: LDSeg > UNet | {by_sigma[0.2][0]:.3f} vs {by_sigma[0.2][1]:.3f} | "
                f"{'yes' if by_sigma[0.2][0] > by_sigma[0.2][1] else 'no'} |",
                f"| 2-step Dice within 0.01 of 50-step | {by_steps[2]:.3f} vs {by_steps[50]:.3f} | "
                f"{'yes' if abs(by_steps[2] - by_steps[50]) <= 0.01 or by_steps[2] > by_steps[50] else 'no'} |",
                f"| s/volume: LDSeg (2 steps) ≤ 3× UNet | {t_ld:.3f} vs {t_un:.3f} ({t_ld / t_un:.1f}×) | "
                f"{'yes' if t_ld <= 3 * t_un else 'no'} |",
                f"| (s/volume: LDSeg with 1 DDIM step) | {t_ld1:.3f} vs {t_un:.3f} ({t_ld1 / t_un:.1f}×) | |",
            ]
            if len(timgs) > 1:
                lines.append(
                    f"| (s/volume: LDSeg, 2 steps, the {len(timgs)} test volumes in one batch) | {b_ld:.3f} vs "
                    f"{b_un:.3f} ({b_ld / b_un:.1f}×) | |"
                )
            lines.append("")
            print("\n".join(lines), flush=True)
            lines = []


if __name__ == "__main__":
    from _results import recorded  # benchmarks/_results.py: the stamped results file

    with recorded("segmentation"):
        main()
