"""Where a sampling job runs and whether it fits: shards, devices, precision and memory.

Sharding: sample k belongs to shard k mod N, so any split of a job (one process, `--shard i/N`, a
SLURM array, torchrun ranks) writes exactly the same set of samples, each exactly once.

Memory: before any work, one batch's needs are estimated (output and latent arrays from their
shapes; network activations by a probe run of one denoiser call and one decoded slice) and
compared with what is available, so a job that will not fit fails at once with a clear message
instead of after hours with an out-of-memory kill.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from ldmtool.errors import LdmError

GIB = 1024**3


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    source: str = "single process"

    def owns(self, k: int) -> bool:
        return k % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def resolve_shard(spec: str | None = None, env: dict[str, str] | None = None) -> Shard:
    """The shard this process runs: `--shard i/N` (0 ≤ i < N) if given, else a SLURM array task
    (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), else a torchrun rank
    (RANK of WORLD_SIZE), else the whole job."""
    env = dict(os.environ) if env is None else env
    if spec is not None:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not m:
            raise LdmError(f"--shard must look like i/N (e.g. 0/4); got {spec!r}")
        i, n = int(m.group(1)), int(m.group(2))
        if n < 1 or not 0 <= i < n:
            raise LdmError(f"--shard {spec}: need 0 <= i < N")
        return Shard(i, n, "--shard")
    if env.get("SLURM_ARRAY_TASK_ID") and env.get("SLURM_ARRAY_TASK_COUNT"):
        try:
            task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        except ValueError:
            raise LdmError("SLURM_ARRAY_TASK_ID/COUNT/MIN are not integers") from None
        index = task - first
        if count < 1 or not 0 <= index < count:
            raise LdmError(
                f"SLURM array task {task} (min {first}, count {count}) is not one of {count} consecutive "
                "tasks; use --array=0-(N-1) or pass --shard i/N"
            )
        return Shard(index, count, "SLURM array")
    if env.get("WORLD_SIZE") and env.get("RANK"):
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        if world > 1:
            return Shard(rank, world, "torchrun")
    return Shard()


def shard_device(device: torch.device, env: dict[str, str] | None = None) -> torch.device:
    """Under torchrun each process takes its own GPU (LOCAL_RANK) unless one was named."""
    env = dict(os.environ) if env is None else env
    if device.type == "cuda" and device.index is None and env.get("LOCAL_RANK"):
        return torch.device("cuda", int(env["LOCAL_RANK"]) % max(torch.cuda.device_count(), 1))
    return device


def available_bytes(device: torch.device) -> int:
    """Free memory now: CUDA free memory on a GPU, MemAvailable (cgroup limit aware) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 2**60:
            avail = min(avail or int(raw), int(raw))
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(avail)


@torch.inference_mode()
def activation_bytes(fn, device: torch.device) -> int:
    """Peak activation memory of one call of `fn()`.

    CUDA: the allocator's peak above what was allocated before the call (exact). CPU: the sum of
    the outputs of every leaf module, an upper bound of what an inference call keeps alive
    (PyTorch has no CPU allocator statistics)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(o.numel() * o.element_size() for o in outs if isinstance(o, torch.Tensor))

    modules = getattr(fn, "modules", ())
    handles = [m.register_forward_hook(hook) for m in modules if not list(m.children())]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return total


class _Probe:
    """A callable with the modules whose outputs `activation_bytes` should count on the CPU."""

    def __init__(self, call, *modules: torch.nn.Module):
        self.call = call
        self.modules = [m for mod in modules for m in mod.modules()]

    def __call__(self):
        return self.call()


@dataclass
class MemoryPlan:
    arrays: int  # outputs and latents of one batch
    denoiser: int  # activations of one denoiser call at the batch size
    decoder: int  # activations of one decode batch
    available: int
    limit_source: str

    @property
    def needed(self) -> int:
        return self.arrays + max(self.denoiser, self.decoder)

    def summary(self) -> str:
        return (
            f"~{self.needed / GIB:.2f} GiB per batch (arrays {self.arrays / GIB:.2f}, denoiser "
            f"{self.denoiser / GIB:.2f}, decoder {self.decoder / GIB:.2f}) of "
            f"{self.available / GIB:.2f} GiB {self.limit_source}"
        )


def plan_memory(
    denoise_call,
    denoiser: torch.nn.Module,
    decode_call,
    decoder: torch.nn.Module,
    *,
    batch_size: int,
    decode_batch: int,
    latent_shape: tuple[int, ...],
    volume_shape: tuple[int, ...],
    device: torch.device,
    max_memory_gb: float | None,
) -> MemoryPlan:
    """Estimate one batch's memory and fail before any work if it exceeds what is available.

    `denoise_call()` runs the denoiser once at batch 1, `decode_call()` decodes one slice; their
    activation peaks are scaled to `batch_size` and `decode_batch`."""
    latent = batch_size * int(torch.tensor(latent_shape).prod()) * 4
    voxels = batch_size * int(torch.tensor(volume_shape).prod())
    # image (float32) + labels (uint8) on the host, plus the float copies made while writing
    arrays = 4 * latent + voxels * (4 + 1) + 2 * voxels * 4 // max(batch_size, 1)
    try:
        den = batch_size * activation_bytes(_Probe(denoise_call, denoiser), device)
        dec = decode_batch * activation_bytes(_Probe(decode_call, decoder), device)
    except torch.cuda.OutOfMemoryError:
        raise LdmError("one denoiser call does not fit in GPU memory even at batch size 1") from None
    if max_memory_gb is not None:
        if max_memory_gb <= 0:
            raise LdmError(f"--max-memory must be positive; got {max_memory_gb}")
        available, source = int(max_memory_gb * GIB), "(--max-memory)"
    else:
        available, source = available_bytes(device), f"free on {device.type}"
    plan = MemoryPlan(arrays, den, dec, available, source)
    if plan.needed > available:
        raise LdmError(
            f"this job will not fit: {plan.summary()}; lower --batch-size or --decode-batch"
            + ("" if max_memory_gb is not None else " (or raise the limit with --max-memory)")
        )
    return plan
