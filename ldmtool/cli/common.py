"""What every subcommand shares: global state, consoles, error printing, flag parsing."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ldmtool.errors import LdmError

console = Console()
console_err = Console(stderr=True)


@dataclass
class State:
    device: str = "auto"
    seed: int = 0
    verbose: bool = False
    quiet: bool = False

    @property
    def console(self) -> Console:
        return Console(quiet=True) if self.quiet else console

    def torch_device(self):
        from ldmtool.runtime import resolve_device

        return resolve_device(self.device)


def error(message: str) -> None:
    """One red line on stderr."""
    console_err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def ints(text: str | None, n: int | None, flag: str) -> tuple[int, ...] | None:
    """Parse '64,64,32' into a tuple of ints (n entries when n is given)."""
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise LdmError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise LdmError(f"{flag} expects {n} integers, got {text!r}")
    return vals


def floats(text: str | None, n: int | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise LdmError(f"{flag} expects comma-separated numbers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise LdmError(f"{flag} expects {n} numbers, got {text!r}")
    return vals


def require_exists(path: Path, what: str) -> Path:
    if not Path(path).exists():
        raise LdmError(f"{what} {path} does not exist")
    return Path(path)


def results_table(title: str, rows: dict[str, object]):
    """A two-column rich table of final results."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    return table


def section(config: dict, name: str, cls, flags: dict):
    """Build dataclass `cls` from YAML section `name`, overridden by the flags that were given.

    `flags` may hold anything (a command passes its `locals()`): only entries named like a field
    of `cls` and not None count, so a command's parameters map to settings by name.
    """
    import dataclasses

    from ldmtool.config import from_dict, merge

    data = config.get(name) or {}
    if not isinstance(data, dict):
        raise LdmError(f"config section {name!r} must be a mapping")
    fields = {f.name for f in dataclasses.fields(cls)}
    return from_dict(cls, merge(data, {k: v for k, v in flags.items() if k in fields}), section=name)


def default(cls, name: str) -> str:
    """The default of dataclass field `name` of `cls`, as --help shows it (flags default to None
    so that a YAML value is overridden only by a flag that was given)."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name == name:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if value is None or value == ():
                return "off"
            if isinstance(value, (tuple, list)):
                return ",".join(map(str, value))
            return f"{value:g}" if isinstance(value, float) else str(value)
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def opt(cls, name: str, *param_decls: str, panel: str | None = None, **kw) -> Any:
    """The typer option of setting `name` of dataclass `cls`: help text and shown default come from
    the field (`ldmtool.config.setting`), so they are written once. `kw` goes to `typer.Option`.

    Declare it with a None default (`steps: Annotated[Optional[int], opt(SampleConfig, "steps")] = None`)
    so that a YAML value is overridden only by a flag that was given.
    """
    from ldmtool.config import help_of

    return typer.Option(
        *param_decls, help=help_of(cls, name), show_default=default(cls, name), rich_help_panel=panel, **kw
    )


LABELS_HELP = (
    "Merge/rename label values into classes: brain=1-255 | anterior=1,posterior=2 | 'csf=4,11,46;gm=100-130' "
    "| a .json/.yaml file {name: [values or 'lo-hi' ranges]}. Classes get ids 1, 2, … in the order named; "
    "unlisted values become background (0). Stored in the checkpoint; later commands use the merged classes."
)


def resume_flag(panel: str | None = None):
    """--resume, shared by the trainers."""
    return typer.Option(
        "--resume",
        help="Go on from the training state in --out (an error if there is none). "
        "Without it a state there is picked up automatically.",
        rich_help_panel=panel,
    )


def restart_flag(panel: str | None = None):
    """--restart, shared by the trainers."""
    return typer.Option("--restart", help="Ignore and replace a training state in --out.", rich_help_panel=panel)


def resume_mode(resume: bool, restart: bool) -> str:
    """--resume: a training state must be there; --restart: ignore (and replace) it; neither: go
    on automatically when the output folder holds one (what a requeued batch job needs)."""
    if resume and restart:
        raise LdmError("--resume and --restart exclude each other")
    return "must" if resume else ("never" if restart else "auto")


@contextlib.contextmanager
def training_session(state: State, out: Path, mode: str):
    """Join the torchrun process group (if launched by torchrun), catch SIGTERM/SIGUSR1 for a
    clean pre-emption, silence every rank but 0, and leave the group at the end.

    The output folder is checked for writability first (nothing is created). A training state
    there is replaced (--restart, mode "never") only once the new run's data are loaded and its
    model built (`run_training`), so a run refused for bad data leaves the old one intact.

    Yields (DistInfo, StopFlag)."""
    from ldmtool.io import check_writable_dir
    from ldmtool.train.distributed import StopFlag, init_distributed, shutdown

    info = init_distributed(state.torch_device())
    clean = False
    try:
        if not info.is_main:
            state.quiet = True
        if info.is_main:
            check_writable_dir(out)
        if info.is_main and Path(out).is_dir():
            for tmp in Path(out).glob(".*.tmp-*"):  # left by a killed run (one run owns an output folder)
                tmp.unlink(missing_ok=True)
        with StopFlag() as stop:
            yield info, stop
        clean = True
    finally:
        shutdown(info, clean)


def announce_scale(state: State, info, batch_size: int, lr: float, unit: str) -> None:
    """One line on how the work is spread: processes, backend, batch per process and in total, LR."""
    if info.enabled:
        import torch.distributed as dist

        state.console.print(
            f"distributed: {info.world} processes ({dist.get_backend()}), {batch_size} {unit} per process → "
            f"effective batch {batch_size * info.world}, learning rate {lr:g}"
        )
    else:
        state.console.print(f"batch {batch_size} {unit}, learning rate {lr:g}, device {info.device}")


def scale_rows(result) -> dict[str, object]:
    """Final-table rows shared by the trainers."""
    rows: dict[str, object] = {
        "processes": result.world_size,
        "effective batch size": result.effective_batch_size,
        "learning rate": f"{result.lr:g}",
    }
    if result.in_sync is not None:
        rows["weights identical on all ranks"] = "yes" if result.in_sync else "NO"
    if result.resumed_from is not None:
        rows["resumed from step"] = result.resumed_from
    return rows
