"""Pieces every training loop shares: grad scaler, EMA, LR warm-up, optimiser step."""

from __future__ import annotations

import math
import time

import torch


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 on CUDA (bf16/fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))


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
    optimizer: torch.optim.Optimizer,
    warmup: int,
    total: int,
    max_minutes: float | None = None,
    elapsed_before: float = 0.0,
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


def optimizer_step(
    loss: torch.Tensor,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sched: torch.optim.lr_scheduler.LRScheduler,
    clip: float | None = 1.0,
) -> None:
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
