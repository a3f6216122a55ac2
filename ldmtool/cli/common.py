"""What every subcommand shares: global state, consoles, error printing, flag parsing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        from ldmtool.train.common import resolve_device

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
    """Build dataclass `cls` from YAML section `name`, overridden by flags that were given."""
    from ldmtool.config import from_dict, merge

    data = config.get(name) or {}
    if not isinstance(data, dict):
        raise LdmError(f"config section {name!r} must be a mapping")
    return from_dict(cls, merge(data, flags))
