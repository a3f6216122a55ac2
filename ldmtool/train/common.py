"""Pieces every training loop shares: device, precision, seeding, EMA, LR warm-up, progress."""

from __future__ import annotations

import contextlib
import math
import random
import time

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ldmtool.errors import LdmError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; 'cuda' without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LdmError("--device cuda asked for, but no CUDA GPU is available (use --device auto or cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise LdmError(f"--device must be auto, cpu or cuda[:N]; got {name!r}")
    return torch.device(name)


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed-precision context: bf16 on CUDA by default, none on CPU (fp32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 on CUDA (bf16/fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """Exponential moving average of the weights (PyTorch's AveragedModel).

    The decay warms up as min(decay, (1 + n) / (10 + n)) so that short runs are not dominated by
    the random initial weights.
    """

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * averaged + (1 - d) * current

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=avg_fn, use_buffers=True)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, max_minutes: float | None = None, elapsed_before: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to 10% of the base LR.

    Progress is the larger of steps done / `total` and, with a time budget, minutes elapsed /
    `max_minutes`, so a run cut short by its budget still ends on a decayed learning rate.
    `elapsed_before` is the training time of earlier sessions of a resumed run.
    """
    start = time.perf_counter() - elapsed_before

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, total - warmup)
        if max_minutes:
            frac = max(frac, (time.perf_counter() - start) / (60 * max_minutes))
        frac = min(1.0, frac)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LoggingProgress(Progress):
    """A rich Progress that, when output is not a terminal (batch jobs, log files), prints a plain
    status line every `log_seconds` and when a task finishes, instead of nothing."""

    def __init__(self, *columns, log_seconds: float = 30.0, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self.log_seconds = log_seconds
        self._last_log = time.monotonic()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._maybe_log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def _maybe_log(self, task_id) -> None:
        if self.console.is_terminal or self.console.quiet:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        if now - self._last_log < self.log_seconds and not task.finished:
            return
        self._last_log = now
        total = f"/{task.total:.0f}" if task.total else ""
        eta = f", ETA {task.time_remaining:.0f} s" if task.time_remaining else ""
        self.console.print(
            f"{task.description}: {task.completed:.0f}{total} {task.fields.get('rate', '')} "
            f"{task.fields.get('info', '')} ({task.elapsed or 0:.0f} s{eta})",
            highlight=False,
        )


def progress(console: Console | None = None, transient: bool = False) -> Progress:
    """A rich progress bar with rate, elapsed time and ETA (plain periodic lines in log files)."""
    return LoggingProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
    )


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   sched: torch.optim.lr_scheduler.LRScheduler, clip: float | None = 1.0) -> None:
    """One update: backward through the grad scaler, optional gradient-norm clipping, optimiser
    and LR-schedule step."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(opt)
    scaler.update()
    sched.step()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
