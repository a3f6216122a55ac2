"""Distributed data parallel training with PyTorch's own engine (torchrun + DDP), and pre-emption.

`torchrun --nproc_per_node=N -m ldmtool train-ldm ...` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `init_distributed` then joins the process group (nccl on CUDA, gloo on
CPU), gives each process its own GPU, and the trainers wrap their model in DistributedDataParallel,
take each rank's share of the data with DistributedSampler, and write logs and checkpoints on rank 0 only.

Pre-emption: SLURM sends SIGTERM (or the signal named by `--signal`) before it kills a job.
`StopFlag` records it; the trainers finish the current step, agree across ranks to stop, write a
full training state and exit with `Preempted.exit_code` (75), which the sbatch examples turn into a requeue.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ldmtool.errors import Preempted


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group if there is one; otherwise a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local, device=device)


def shutdown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group.

    Garbage is collected first, so that no DDP wrapper kept alive by a reference cycle still holds
    the group (and its C++ worker threads) after `destroy_process_group`. After a clean run the
    ranks also meet at a barrier, so that no rank leaves while another still talks to it; after an
    error they do not (the other ranks may never get there; torchrun stops them). Torchrun workers
    then exit without interpreter finalisation (`ldmtool.cli.main.entry`)."""
    if not (info.enabled and dist.is_initialized()):
        return
    import gc

    gc.collect()
    if clean:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around `model` (gradients all-reduced in backward) when distributed."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _reduce_device(info: DistInfo) -> torch.device:
    return info.device if info.device.type == "cuda" else torch.device("cpu")


def step_sync(loss: float, flags: list[bool], info: DistInfo) -> tuple[float, list[bool]]:
    """One small all-reduce per step: the mean loss over ranks, and each flag true on any rank.

    All ranks must stop at the same step (a rank that leaves early would hang the others in the
    next gradient all-reduce), so stop requests and time limits are agreed here.
    """
    if not info.enabled:
        return loss, list(flags)
    t = torch.tensor([loss, *[1.0 if f else 0.0 for f in flags]], dtype=torch.float64, device=_reduce_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    vals = t.cpu().tolist()
    return vals[0] / info.world, [v > 0 for v in vals[1:]]


def gather_tensors(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of an equally shaped tensor, in rank order."""
    if not info.enabled:
        return [t]
    src = t.to(_reduce_device(info))
    out = [torch.empty_like(src) for _ in range(info.world)]
    dist.all_gather(out, src)
    return [o.cpu() for o in out]


def replicas_in_sync(modules: torch.nn.Module | dict[str, torch.nn.Module], info: DistInfo) -> bool | None:
    """After DDP training every rank must hold the same weights: compare per-rank checksums of
    every module (the model, its EMA, a discriminator trained beside it).

    None when not distributed (nothing to compare)."""
    if not info.enabled:
        return None
    modules = modules if isinstance(modules, dict) else {"model": modules}
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for m in modules.values() for p in m.parameters()])
        check = torch.stack(
            [sums.sum(), (sums * torch.arange(1, len(sums) + 1, dtype=torch.float64, device=sums.device)).sum()]
        )
    copies = gather_tensors(check, info)
    return all(torch.allclose(c, copies[0], rtol=1e-9, atol=0) for c in copies)


def finish(
    info: DistInfo,
    modules: dict[str, torch.nn.Module],
    stop: StopFlag | None,
    signalled: bool,
    step: int,
    total: int,
    out_dir,
) -> bool | None:
    """End of a training run on every rank: wait until rank 0 has written everything (torchrun
    stops all workers as soon as one exits non-zero), raise `Preempted` after a stop signal, and
    check that the replicas of every module ended with the same weights (returns that check, None
    for one process)."""
    from ldmtool.errors import LdmError

    barrier(info)
    if signalled:
        raise Preempted(
            f"stopped by {(stop.signal_name if stop else '') or 'a signal'} at step {step}/{total}; the training state is saved "
            f"in {out_dir}: run the same command again to resume"
        )
    in_sync = replicas_in_sync(modules, info)
    if in_sync is False:
        raise LdmError(f"the {info.world} processes ended with different weights (DDP replicas diverged)")
    return in_sync


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class StopFlag:
    """Set by SIGTERM (and SIGUSR1) while installed; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopFlag:
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
