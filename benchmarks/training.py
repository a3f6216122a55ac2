"""Training throughput: slices/s (train-ae) and latent volumes/s (train-ldm) at 1 and 2 processes.

    python benchmarks/training.py                       # demo-size models on fresh phantoms
    python benchmarks/training.py --ae-epochs 2 --ldm-steps 60 --gpu

Every run is a real `ldmtool train-ae` / `train-ldm` on the same data and model (examples/demo.yaml,
no validation, fixed work: --ae-epochs epochs, --ldm-steps steps of batch --ldm-batch per process):

  1 process, 1 thread        the unit of scaling
  1 process, T threads       the whole CPU to one process (T = --threads, default all cores)
  2 processes × 1 thread     torchrun --nproc_per_node=2, DDP over gloo
  1 GPU                      with --gpu when CUDA is present (bf16 autocast, as by default)

Throughput = (steps × effective batch) / training seconds, both read from the run's state.json (the
training loop's own clock: data set reading, encoding and start-up are not in it). Scaling
efficiency = throughput(2 processes) / (2 × throughput(1 process, 1 thread)). Each process does
`batch` samples per step, so 2 processes do twice the work per step: the effective batch doubles.

Prints one table; numbers are comparable only within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=150)


def _config(path: Path, base: Path, ae_epochs: int, ldm_steps: int, ldm_batch: int) -> Path:
    import yaml

    cfg = yaml.safe_load(base.read_text())
    cfg["ae_train"].update(epochs=ae_epochs, max_minutes=None, val_fraction=0.0, warmup_steps=10)
    cfg["ldm_train"].update(steps=ldm_steps, batch_size=ldm_batch, max_minutes=None, val_fraction=0.0, warmup_steps=10)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd: list, threads: int, procs: int, device: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    launch = (
        [sys.executable, "-m", "ldmtool"]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "ldmtool",
        ]
    )
    full = [*launch, "--quiet", "--device", device, *map(str, cmd)]
    r = subprocess.run(full, capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(full)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def _throughput(out: Path) -> tuple[float, int, float]:
    s = json.loads((out / "state.json").read_text())
    samples = s["step"] * s["effective_batch_size"]
    return samples / s["elapsed_seconds"], s["effective_batch_size"], s["elapsed_seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="nnU-Net folder (default: 24 fresh demo phantoms of 64×64×32)")
    ap.add_argument("--config", type=Path, default=REPO / "examples" / "demo.yaml")
    ap.add_argument("--ae-epochs", type=int, default=1)
    ap.add_argument("--ldm-steps", type=int, default=40)
    ap.add_argument("--ldm-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpu", action="store_true", help="also 1 GPU (when CUDA is present)")
    args = ap.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="ldmtool-bench-train-"))
    data = args.data
    if data is None:
        data = work / "data"
        _run(["demo-data", data, "--n", 24], 1, 1, "cpu")
    cfg = _config(work / "bench.yaml", args.config, args.ae_epochs, args.ldm_steps, args.ldm_batch)
    # the autoencoder every latent-diffusion run encodes with (trained once, not timed)
    ae = work / "ae_ref"
    _run(["train-ae", data, "--out", ae, "--config", cfg], args.threads, 1, "cpu")

    setups = [
        ("1 process, 1 thread", 1, 1, "cpu"),
        (f"1 process, {args.threads} threads", args.threads, 1, "cpu"),
        ("2 processes × 1 thread (gloo)", 1, 2, "cpu"),
    ]
    if args.gpu and torch.cuda.is_available():
        setups.append((f"1 GPU ({torch.cuda.get_device_name(0)})", args.threads, 1, "cuda"))
    rows = []
    for i, (name, threads, procs, device) in enumerate(setups):
        ae_out, ldm_out = work / f"ae{i}", work / f"ldm{i}"
        console.print(f"[dim]{name}: train-ae …[/]")
        _run(["train-ae", data, "--out", ae_out, "--config", cfg], threads, procs, device)
        console.print(f"[dim]{name}: train-ldm …[/]")
        _run(["train-ldm", data, "--ae", ae, "--out", ldm_out, "--config", cfg], threads, procs, device)
        rows.append((name, procs, *_throughput(ae_out), *_throughput(ldm_out)))

    base_ae, base_ldm = rows[0][2], rows[0][5]
    table = Table(
        title=f"training throughput ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__})"
    )
    for col in (
        "setup",
        "train-ae slices/s",
        "AE batch",
        "train-ldm latent vol/s",
        "LDM batch",
        "AE × 1-thread",
        "LDM × 1-thread",
        "efficiency AE / LDM",
    ):
        table.add_column(col, justify="right" if col != "setup" else "left")
    for name, procs, ae_t, ae_b, _, ldm_t, ldm_b, _ in rows:
        eff = f"{ae_t / (procs * base_ae):.2f} / {ldm_t / (procs * base_ldm):.2f}" if procs > 1 else "–"
        table.add_row(
            name,
            f"{ae_t:.1f}",
            str(ae_b),
            f"{ldm_t:.2f}",
            str(ldm_b),
            f"{ae_t / base_ae:.2f}",
            f"{ldm_t / base_ldm:.2f}",
            eff,
        )
    console.print(table)
    console.print(
        f"config {args.config.name}, {args.ae_epochs} AE epoch(s), {args.ldm_steps} LDM steps; outputs in {work}"
    )


if __name__ == "__main__":
    from _results import recorded  # benchmarks/_results.py: the stamped results file

    with recorded("training"):
        main()
