"""Class maps from scores: `Tensor.argmax(dim)` against `Tensor.max(dim).indices`
(`ldmtool.runtime.class_index`), side by side on the shapes where ldmtool takes them.

    python benchmarks/class_index.py            # CPU, a few seconds
    python benchmarks/class_index.py --device cuda

Rows: one chunk of test slices of the downstream segmenter in `evaluate` (32 slices of 160 × 192,
3 classes), a volume's class probabilities in `segment` (3 × 160 × 192 × 160), a batch of decoded
label slices in `sample` (16 × 4 × 128 × 128). Each cell is the mean of a few repeats after a
warm-up; both give the same indices (checked on every row).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldmtool.runtime import class_index, resolve_device  # noqa: E402

CASES = (
    ("evaluate: downstream test chunk", (32, 3, 160, 192), 1),
    ("segment: class probabilities of a volume", (3, 160, 192, 160), 0),
    ("sample: decoded label slices", (16, 4, 128, 128), 1),
)


def _seconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    gen = torch.Generator().manual_seed(0)
    print(f"device {device}, torch threads {torch.get_num_threads()}\n")
    print("| where | scores shape | dim | argmax ms | max().indices ms | ratio | same indices |")
    print("|---|---|---|---|---|---|---|")
    for name, shape, dim in CASES:
        scores = torch.randn(shape, generator=gen).to(device)
        a_s = _seconds(lambda s=scores, d=dim: s.argmax(d), device, a.repeats)
        m_s = _seconds(lambda s=scores, d=dim: class_index(s, d), device, a.repeats)
        same = bool(torch.equal(scores.argmax(dim), class_index(scores, dim)))
        print(f"| {name} | {tuple(shape)} | {dim} | {a_s * 1e3:.1f} | {m_s * 1e3:.1f} | {a_s / m_s:.1f} | {same} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import recorded  # benchmarks/_results.py: the stamped results file

    with recorded("class_index"):
        main()
