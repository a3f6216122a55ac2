"""The one training loop: every trainer's resume, time budget, pre-emption, checkpoints and "best".

Shaped after nnU-Net's `run_training` (on_train_start / train_step / validation_step / on_epoch_end):
a `Trainer` supplies its model, its batches, one optimisation step's loss, its held-out validation
and the score that picks its best checkpoint; `run_training` does the rest, the same way for all:

- **resume**: `train_state.safetensors` (see `ldmtool.train.state`) holds weights, EMA, optimiser,
  LR schedule, grad scaler, RNG, step, history and best; "auto" goes on from it, "must" requires
  it, "never" starts afresh. Batches are a function of (seed, epoch) and a step's noise of
  (seed, rank, step), so a resumed run goes on to the weights of an uninterrupted one.
- **time budget** (`max_minutes`): the run stops after the step that exceeds it, evaluates, and
  counts as complete (the LR schedule already decays with the budget).
- **pre-emption**: a `StopFlag` (SIGTERM, SIGUSR1) ends the run after the current step; the
  state is saved and `Preempted` (exit code 75) raised, so a requeued job resumes.
- **evaluation**: at every epoch end (or every `eval_every` steps), at the last step and when the
  budget ends the run; each appends a row to history.json and writes model.safetensors when its
  score is the best so far (ties go to the later, longer-trained weights).
- **checkpoint cadence**: the training state is written every `checkpoint_every` steps, every
  `checkpoint_minutes`, after an evaluation when the last state is over a minute old, and at the end.
- **DDP**: the model is wrapped in DistributedDataParallel, the loss, stop and time flags are agreed
  every step, every rank validates, rank 0 alone writes; `finish` checks the replicas agree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ldmtool.config import LoopConfig, to_dict
from ldmtool.io.atomic import atomic_write_text
from ldmtool.models.checkpoint import save_checkpoint, write_config_json
from ldmtool.runtime import progress
from ldmtool.train.common import (
    count_parameters,
    grad_scaler,
    optimizer_step,
    warmup_cosine,
)
from ldmtool.train.distributed import DistInfo, StopFlag, finish, step_sync, wrap_ddp
from ldmtool.train.state import STATE_NAME, previous_run, restore, save_state

BEST_NAME = "model.safetensors"
LAST_NAME = "last.safetensors"
HISTORY_NAME = "history.json"


class Trainer:
    """What one kind of model brings to `run_training`; subclasses set the attributes and hooks.

    Attributes set by a subclass's constructor: `cfg` (its typed train config), `info` (process
    group and device), `seed`, `model`, `ema` (an AveragedModel or None), `steps_per_epoch`,
    `config` (what the checkpoints record) and `settings` (what a resumed run must share).
    """

    kind: str = ""  # checkpoint kind, e.g. "autoencoder"
    label: str = "train"  # progress bar title
    unit: str = "items"  # what one batch holds, for the rate shown
    best_key: str | None = None  # history value that picks model.safetensors; None: the latest evaluation
    best_mode: Literal["min", "max"] = "min"  # whether a lower or a higher score is better
    keep_last: bool = False  # also write last.safetensors (the latest weights) at every evaluation
    clip_grad: float | None = 1.0  # gradient-norm clipping (None: off)

    cfg: LoopConfig
    info: DistInfo
    seed: int
    model: torch.nn.Module
    ema: torch.optim.swa_utils.AveragedModel | None = None
    steps_per_epoch: int
    config: dict[str, Any]
    settings: dict[str, Any]

    def epoch_batches(self, epoch: int) -> Sequence[Any]:
        """The `steps_per_epoch` batches of `epoch`, a function of (seed, rank, epoch) only."""
        raise NotImplementedError

    def train_step(self, net: torch.nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        """Forward one batch: (loss to minimise, its named parts, items in the batch). `net` is the
        model as wrapped for DDP; `step` (steps done so far) seeds the step's noise."""
        raise NotImplementedError

    def after_step(self, step: int) -> dict[str, float]:
        """Called after the optimiser step of batch `step` (e.g. a discriminator's own update);
        returns loss parts to add to the epoch's sums."""
        return {}

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers the trainer steps itself; their state is saved and resumed with the run's."""
        return {}

    def validation_step(self) -> dict[str, float]:
        """Held-out metrics (run on every rank; {} when nothing is held out)."""
        return {}

    def train_metrics(self, loop: LoopState) -> dict[str, float]:
        """The training entries of a history row (default: the running mean loss)."""
        return {"train_loss": loop.running_loss}

    def score(self, row: dict[str, Any]) -> float | None:
        """The value of `row` that `best_mode` compares (None with `best_key` None: latest wins)."""
        return None if self.best_key is None else row.get(self.best_key)

    def eval_every(self, total: int) -> int | None:
        """Steps between evaluations; None evaluates at every epoch end."""
        return None

    def report(self, row: dict[str, Any]) -> str:
        """One line printed after an evaluation ("" prints nothing)."""
        return ""

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors of a checkpoint (default: the model's; the EMA's where sampling uses it)."""
        return self.model.state_dict()

    def state_modules(self) -> dict[str, torch.nn.Module]:
        """Modules whose weights the resumable state holds."""
        return {"model": self.model} if self.ema is None else {"model": self.model, "ema": self.ema}

    def summary(self) -> dict[str, Any]:
        """Trainer-specific facts for the result (e.g. the latent shape)."""
        return {}


@dataclass
class LoopState:
    """Where a run is: what the training state stores beside the tensors."""

    total: int
    step: int = 0
    seen: int = 0  # items trained on, all processes and sessions together
    running_loss: float = 0.0  # exponential moving average of the (rank-averaged) batch loss
    epoch_sums: dict[str, float] = field(default_factory=dict)  # loss parts summed over this epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the history row of model.safetensors
    best_score: float | None = None

    def meta(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self.total,
            "seen": self.seen,
            "running_loss": self.running_loss,
            "epoch_sums": self.epoch_sums,
            "history": self.history,
            "best": self.best,
            "best_score": self.best_score,
        }

    def load(self, meta: dict[str, Any]) -> None:
        self.step, self.seen, self.running_loss = int(meta["step"]), int(meta["seen"]), float(meta["running_loss"])
        self.epoch_sums, self.history = dict(meta["epoch_sums"]), list(meta["history"])
        self.best, self.best_score = meta["best"], meta["best_score"]


@dataclass
class TrainResult:
    """What a training run returns."""

    path: Path  # model.safetensors: the best checkpoint
    best: dict[str, Any]  # its history row ({} when no evaluation has happened)
    best_score: float | None
    history: list[dict[str, Any]]
    parameters: int
    seconds: float = 0.0  # training time of this session
    items_per_second: float = 0.0
    world_size: int = 1
    effective_batch_size: int = 0
    lr: float = 0.0
    resumed_from: int | None = None  # the step a resumed run went on from
    in_sync: bool | None = None  # every rank ended with the same weights (None: one process)
    already_complete: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


def is_better(score: float | None, best: float | None, mode: str) -> bool:
    """Whether `score` beats `best` (ties go to the newer one; None scores: the newer one wins)."""
    if score is None or best is None:
        return True
    return score <= best if mode == "min" else score >= best


def run_training(
    trainer: Trainer, out_dir: Path, *, resume: str = "never", stop: StopFlag | None = None, console=None
) -> TrainResult:
    """Train `trainer` into `out_dir` (model.safetensors, history.json, config.json, the state).

    `resume`: "never" | "auto" | "must" (see the module docstring). Raises `Preempted` after a
    stop signal, once the state is saved."""
    cfg, info = trainer.cfg, trainer.info
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume == "never" and info.is_main:  # data loaded and model built: now the old state may go
        (out_dir / STATE_NAME).unlink(missing_ok=True)
    total = cfg.steps or trainer.steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(trainer.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    previous, settings_hash, elapsed_before = previous_run(out_dir, resume, trainer.settings, to_dict(cfg))
    sched = warmup_cosine(opt, cfg.warmup_steps, total, cfg.max_minutes, elapsed_before)
    scaler = grad_scaler(info.device, cfg.precision)
    loop = LoopState(total)
    if previous is not None:
        restore(
            previous,
            modules=trainer.state_modules(),
            optimizer=opt,
            scheduler=sched,
            scaler=scaler,
            extra_optimizers=trainer.extra_optimizers(),
        )
        loop.load(previous.meta)
    result = TrainResult(
        out_dir / BEST_NAME,
        loop.best or {},
        loop.best_score,
        loop.history,
        count_parameters(trainer.model),
        world_size=info.world,
        effective_batch_size=cfg.batch_size * info.world,
        lr=cfg.lr,
        resumed_from=None if previous is None else loop.step,
        summary=trainer.summary(),
    )
    budget = None if cfg.max_minutes is None else 60 * cfg.max_minutes
    if loop.step >= total or (budget is not None and elapsed_before >= budget):
        result.already_complete = True
        return result
    session = _Session(trainer, loop, out_dir, opt, sched, scaler, stop, settings_hash, elapsed_before, budget)
    session.run(console)
    result.in_sync = finish(info, trainer.state_modules(), stop, session.halt == "signal", loop.step, total, out_dir)
    result.seconds = time.perf_counter() - session.t0
    result.items_per_second = session.seen_here / max(result.seconds, 1e-9)
    result.best, result.best_score = loop.best or {}, loop.best_score
    if info.is_main and loop.best is not None:  # config.json beside the weights describes the best checkpoint
        write_config_json(out_dir, _checkpoint_config(trainer, loop.best))
    return result


def _checkpoint_config(trainer: Trainer, row: dict[str, Any]) -> dict[str, Any]:
    return {**trainer.config, "step": row["step"], "metrics": row}


class _Session:
    """One session of a run: the epochs and steps between start (or resume) and stop."""

    def __init__(
        self,
        trainer: Trainer,
        loop: LoopState,
        out_dir: Path,
        opt,
        sched,
        scaler,
        stop: StopFlag | None,
        settings_hash: str,
        elapsed_before: float,
        budget: float | None,
    ) -> None:
        self.trainer, self.loop, self.out_dir = trainer, loop, out_dir
        self.opt, self.sched, self.scaler, self.stop = opt, sched, scaler, stop
        self.settings_hash, self.elapsed_before, self.budget = settings_hash, elapsed_before, budget
        self.net = wrap_ddp(trainer.model, trainer.info)
        self.halt = ""  # "signal" | "time" once the run must stop
        self.seen_here = 0
        self.t0 = self.last_save = time.perf_counter()

    def elapsed(self) -> float:
        """Training seconds of this run, earlier sessions included."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def run(self, console) -> None:
        t, loop = self.trainer, self.loop
        per_epoch = t.steps_per_epoch
        epoch, position = divmod(loop.step, per_epoch)
        every = t.eval_every(loop.total)
        with progress(console) as bar:
            task = bar.add_task(t.label, total=loop.total, completed=loop.step, rate="", info="")
            while loop.step < loop.total and not self.halt:
                if position == 0:
                    loop.epoch_sums = {}
                batches = t.epoch_batches(epoch)
                for b in range(position, per_epoch):
                    self.step(batches[b])
                    rate = self.seen_here / max(time.perf_counter() - self.t0, 1e-9)
                    bar.update(
                        task,
                        advance=1,
                        rate=f"{rate:.1f} {t.unit}/s",
                        info=f"epoch {epoch + 1} loss {loop.running_loss:.4f}",
                    )
                    final = loop.step >= loop.total
                    regular = b == per_epoch - 1 if every is None else loop.step % every == 0
                    evaluated = regular or final or self.halt == "time"
                    if evaluated:
                        self.evaluate(epoch, bar.console)
                    if t.info.is_main and self.state_due(final, evaluated):
                        self.save_state(complete=final or self.halt == "time")
                    if final or self.halt:
                        break
                epoch, position = epoch + 1, 0
            if self.halt == "time":
                bar.console.print(f"stopping: --max-minutes {t.cfg.max_minutes:g} reached at step {loop.step}")

    def step(self, batch: Any) -> None:
        """One optimisation step, the EMA update, and the agreement of all ranks on loss and stop."""
        t, loop, info = self.trainer, self.loop, self.trainer.info
        loss, parts, n = t.train_step(self.net, batch, loop.step)
        optimizer_step(loss, t.model, self.opt, self.scaler, self.sched, clip=t.clip_grad)
        if t.ema is not None:
            t.ema.update_parameters(t.model)
        parts = {**parts, **t.after_step(loop.step)}
        loop.step += 1
        loop.seen += n * info.world
        self.seen_here += n * info.world
        for k, v in parts.items():
            loop.epoch_sums[k] = loop.epoch_sums.get(k, 0.0) + v
        out_of_time = self.budget is not None and self.elapsed() > self.budget
        signalled = bool(self.stop and self.stop.requested)
        lv, (out_of_time, signalled) = step_sync(float(loss.detach()), [out_of_time, signalled], info)
        loop.running_loss = 0.98 * loop.running_loss + 0.02 * lv if loop.step > 1 else lv
        self.halt = "signal" if signalled else ("time" if out_of_time else "")

    def evaluate(self, epoch: int, console) -> None:
        """Validate (every rank), append the history row, keep the best; rank 0 writes the files."""
        t, loop = self.trainer, self.loop
        row = {"epoch": epoch + 1, "step": loop.step, **t.train_metrics(loop), **t.validation_step()}
        row["seconds"] = self.elapsed()
        loop.history.append(row)
        score = t.score(row)
        is_best = loop.best is None or is_better(score, loop.best_score, t.best_mode)
        if is_best:
            loop.best, loop.best_score = row, score
        if not t.info.is_main:
            return
        line = t.report(row)
        if line:
            console.print(line)
        if t.keep_last or is_best:
            weights, config = t.weights(), _checkpoint_config(t, row)
            if t.keep_last:
                save_checkpoint(self.out_dir / LAST_NAME, weights, config)
            if is_best:
                save_checkpoint(self.out_dir / BEST_NAME, weights, config)
        atomic_write_text(self.out_dir / HISTORY_NAME, json.dumps(loop.history, indent=2))

    def state_due(self, final: bool, evaluated: bool) -> bool:
        """Whether to write the training state after this step (see the module docstring)."""
        every = self.trainer.cfg.checkpoint_every
        since = time.perf_counter() - self.last_save
        return (
            final
            or bool(self.halt)
            or bool(every and self.loop.step % every == 0)
            or since > 60 * self.trainer.cfg.checkpoint_minutes
            or (evaluated and since > 60)
        )

    def save_state(self, complete: bool) -> None:
        t = self.trainer
        save_state(
            self.out_dir,
            modules=t.state_modules(),
            optimizer=self.opt,
            scheduler=self.sched,
            scaler=self.scaler,
            extra_optimizers=t.extra_optimizers(),
            meta={
                "kind": t.kind,
                "settings": self.settings_hash,
                **self.loop.meta(),
                "elapsed_seconds": self.elapsed(),
                "complete": complete,
                "world_size": t.info.world,
                "effective_batch_size": t.cfg.batch_size * t.info.world,
            },
        )
        self.last_save = time.perf_counter()
