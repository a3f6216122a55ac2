"""Seconds per volume of LDSeg (1 and 2 DDIM steps) vs the UNet baseline at several volume sizes.

    python benchmarks/segmentation_speed.py                  # CPU, small sizes, about 2 minutes
    python benchmarks/segmentation_speed.py --device cuda    # GPU, up to 64 slices of 512 × 512

Both segmenters are built with the default SegModelConfig (LDSeg 1.2 M parameters, the UNet scaled
to about as many) and random weights: the cost of a forward pass does not depend on the weights, so
no training is needed. Each row runs `Segmenter.predict` (the code behind `ldmtool segment`) on one
volume of random intensities, after one warm-up pass, and times the mean of a few repeats, LDSeg and
UNet side by side in one process. "slices per batch" is what one network call sees: a row whose
batch holds several volumes' slices is what `segment` does with a folder of small volumes of the
same slice size (the time is then per volume, the batch's time divided by the volumes in it).
Numbers are comparable only within one run on one machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldmtool.config import SegModelConfig  # noqa: E402
from ldmtool.models.ldseg import build_segmenter  # noqa: E402
from ldmtool.pipelines.segmenter import Segmenter  # noqa: E402
from ldmtool.runtime import resolve_device  # noqa: E402

# (slices per volume, H, W, volumes per batch, slices per batch)
CPU_CASES = ((32, 64, 64, 1, 32), (32, 64, 64, 8, 256), (16, 256, 256, 1, 16))
GPU_CASES = (
    (32, 64, 64, 1, 32),
    (32, 64, 64, 8, 256),
    (128, 256, 256, 1, 32),
    (128, 256, 256, 1, 128),
    (64, 512, 512, 1, 16),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=3, help="label classes incl. background")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    cases = GPU_CASES if dev.type == "cuda" else CPU_CASES
    torch.manual_seed(0)
    models = {}
    for arch in ("ldseg", "unet"):
        cfg = SegModelConfig(arch=arch, dims=2)
        models[arch] = Segmenter(build_segmenter(cfg, args.classes).to(dev).eval(), cfg, device=dev)

    def run(arch: str, steps: int, x: torch.Tensor, batch: int) -> None:
        models[arch].predict(x, steps=steps, batch=batch, generator=torch.Generator().manual_seed(0))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    where = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    params = {a: sum(p.numel() for p in m.parameters()) / 1e6 for a, (m, _) in models.items()}
    print(
        f"# Segmenter inference speed — {where}, torch {torch.__version__}; LDSeg {params['ldseg']:.2f} M, "
        f"UNet {params['unet']:.2f} M parameters (random weights)\n"
    )
    print(
        "| volume (slices × H × W) | volumes per batch | slices per batch | LDSeg 1 step s/volume | "
        "LDSeg 2 steps s/volume | UNet s/volume | LDSeg 1 step / UNet | LDSeg 2 steps / UNet |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for d, h, w, nvol, batch in cases:
        x = torch.rand(d * nvol, h, w)
        t = {}
        for arch, steps in (("ldseg", 1), ("ldseg", 2), ("unet", 1)):
            run(arch, steps, x, batch)  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                run(arch, steps, x, batch)
            t[steps if arch == "ldseg" else 0] = (time.perf_counter() - t0) / args.repeats / nvol
        print(
            f"| {d} × {h} × {w} | {nvol} | {batch} | {t[1]:.4f} | {t[2]:.4f} | {t[0]:.4f} | "
            f"{t[1] / t[0]:.1f}× | {t[2] / t[0]:.1f}× |",
            flush=True,
        )


if __name__ == "__main__":
    from _results import recorded  # benchmarks/_results.py: the stamped results file

    with recorded("segmentation_speed"):
        main()
