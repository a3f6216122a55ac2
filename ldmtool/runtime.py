"""What every layer may use: the device, the numeric precision, progress bars.

Nothing here knows about models or data; inference, training and evaluation all take their
device, autocast context and progress bar from this module.
"""

from __future__ import annotations

import contextlib
import time

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


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto → bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise LdmError(f"--precision must be auto, fp32, bf16 or fp16; got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type != "cuda" and precision == "fp16":
        raise LdmError("--precision fp16 needs a CUDA device (use fp32 or bf16 on CPU)")
    return precision


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


_LIBC: object | None = None


def release_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc's `malloc_trim(0)`; nothing
    elsewhere). Stages that stream thousands of volumes call it per volume: glibc serves each
    volume's temporaries (tens of MB) from its heap once their size has raised its mmap threshold,
    and the small arrays kept per volume between them leave holes the heap cannot give back, so
    the resident size grows with the number of volumes read although the live data do not. Dask's
    workers trim the same way."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def class_index(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the highest score along `dim` (the first among ties, as `argmax`): class maps
    from logits or probabilities. `Tensor.max(dim).indices` gives the same indices as
    `Tensor.argmax(dim)` but the CPU kernel of argmax reduces a non-innermost axis (the class
    axis of (B, K, ...) or (K, ...)) many times slower (`benchmarks/class_index.py` times both)."""
    return scores.max(dim).indices
