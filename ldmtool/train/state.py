"""Resumable training state: everything a killed run needs to go on exactly where it stopped.

A training state is one safetensors file (`train_state.safetensors` in the output folder) holding
the raw model weights, the EMA, the optimiser's moment tensors and the torch RNG state as tensors,
and, as JSON metadata, the optimiser's param groups, the LR schedule, the grad scaler, the step
count, the loss so far, the history and a fingerprint of the settings. Nothing is pickled. A small
`state.json` beside it tells people (and batch scripts) how far the run is and whether it is done.

The data order and the diffusion noise of step s are drawn from generators seeded by (seed, epoch)
and (seed, rank, step) (see `step_generator`), so restoring the step restores those streams too,
whatever the number of processes.

Both files are written under a temporary name and renamed: a kill while writing leaves the
previous state intact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_path, atomic_write_text

STATE_NAME = "train_state.safetensors"
SUMMARY_NAME = "state.json"
META_KEY = "ldmtool_train_state"
FORMAT = 2  # 2: the metadata of the one training loop (ldmtool.train.loop.LoopState)


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys, e.g. (seed, rank, step): a fresh, reproducible
    stream for every step and process that needs no state of its own."""
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of the settings a run can only be resumed with (model, data, objective...)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainingState:
    """What `load_state` returns: tensors by part and the JSON metadata."""

    tensors: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def _pack_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unpack_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """A scheduler/scaler state dict without callables (LambdaLR keeps None for plain functions)."""
    return {k: v for k, v in d.items() if not callable(v)}


def save_state(
    out_dir: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    meta: dict[str, Any],
    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> Path:
    """Write the full training state of `out_dir` atomically (call on rank 0 only).
    `extra_optimizers`: optimisers a trainer steps itself (e.g. a discriminator's), by name."""
    out_dir = Path(out_dir)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{name}/{k}"] = v
    opt_tensors, opt_meta = _pack_optimizer(optimizer)
    tensors.update({f"optimizer/{k}": v for k, v in opt_tensors.items()})
    extra_meta = {}
    for name, extra in (extra_optimizers or {}).items():
        extra_tensors, extra_meta[name] = _pack_optimizer(extra)
        tensors.update({f"optimizer_{name}/{k}": v for k, v in extra_tensors.items()})
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    full = {
        "format": FORMAT,
        **meta,
        "optimizer": opt_meta,
        "extra_optimizers": extra_meta,
        "scheduler": _jsonable(scheduler.state_dict()),
        "scaler": _jsonable(scaler.state_dict()),
    }
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    path = out_dir / STATE_NAME
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={META_KEY: json.dumps(full, default=float)})
    summary = {
        k: meta[k]
        for k in ("step", "total_steps", "complete", "elapsed_seconds", "world_size", "effective_batch_size")
        if k in meta
    }
    atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return path


def load_state(out_dir: Path) -> TrainingState | None:
    """The training state saved in `out_dir`, or None when there is none."""
    path = Path(out_dir) / STATE_NAME
    if not path.is_file():
        return None
    try:
        flat = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise LdmError(
            f"{path} is not a readable training state ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "delete it or use --restart"
        ) from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        part, name = key.split("/", 1)
        parts.setdefault(part, {})[name] = v
    return TrainingState(parts, meta)


def restore(
    state: TrainingState,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> None:
    """Load weights, optimiser(s), LR schedule, grad scaler and RNG from `state` into live objects."""
    for name, module in modules.items():
        module.load_state_dict(state.tensors[name])
    opt_sd = _unpack_optimizer(state.tensors.get("optimizer", {}), state.meta["optimizer"])
    optimizer.load_state_dict(opt_sd)  # moves moment tensors to the parameters' device
    saved = state.meta.get("extra_optimizers", {})
    for name, extra in (extra_optimizers or {}).items():
        if name not in saved:
            raise LdmError(f"the training state holds no {name} optimiser; use --restart")
        extra.load_state_dict(_unpack_optimizer(state.tensors.get(f"optimizer_{name}", {}), saved[name]))
    sched_sd = dict(state.meta["scheduler"])
    sched_sd.pop("lr_lambdas", None)
    scheduler.load_state_dict({**scheduler.state_dict(), **sched_sd})
    if state.meta.get("scaler"):
        scaler.load_state_dict(state.meta["scaler"])
    rng = state.tensors.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


# Settings that may change between sessions of one run (the LR schedule follows a new length).
CHANGEABLE = ("steps", "epochs", "max_minutes", "checkpoint_every", "checkpoint_minutes", "precision")


def previous_run(
    out_dir: Path, resume: str, settings: dict[str, Any], train: dict[str, Any]
) -> tuple[TrainingState | None, str, float]:
    """The state to go on from (None to start afresh), the settings fingerprint of this run, and the
    training seconds of earlier sessions. `resume`: "never" | "auto" | "must" (see the trainers)."""
    settings_hash = fingerprint({**settings, "train": {k: v for k, v in train.items() if k not in CHANGEABLE}})
    previous = load_state(out_dir) if resume != "never" else None
    if resume == "must" and previous is None:
        raise LdmError(f"--resume: {out_dir} holds no training state to resume ({STATE_NAME})")
    if previous is not None:
        check_resumable(previous, settings_hash, out_dir)
    elapsed = float(previous.meta.get("elapsed_seconds", 0.0)) if previous else 0.0
    return previous, settings_hash, elapsed


def check_resumable(state: TrainingState, settings_hash: str, out_dir: Path) -> None:
    """Refuse to continue a run that was started with different settings."""
    if state.meta.get("format") != FORMAT:
        raise LdmError(f"{out_dir / STATE_NAME} was written by another ldmtool version; use --restart or another --out")
    if state.meta.get("settings") != settings_hash:
        raise LdmError(
            f"{out_dir} holds a training run with different settings (model, data, optimiser or number of processes); "
            "use --restart to overwrite it, or another --out"
        )
