"""Results files of the benchmarks: what a run printed, stamped with where it came from.

Every script in benchmarks/ runs its `main()` inside `recorded(NAME)`: what the run prints to
stdout (its tables and summary lines) is shown as usual and, when the run finishes without an
error, also written to benchmarks/results/NAME-DATE-COMMIT.md under a header that records the
commit (`git rev-parse HEAD`, "+dirty" when the tree has uncommitted changes), the date, the
machine (platform, CPU count, torch version, GPU name when present) and the exact command line.
A new run never overwrites the file of an earlier one. LDMTOOL_RESULTS_DIR moves the folder.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BOX = re.compile("[\u2500-\u257f]")
_CURSOR = re.compile(r"\x1b\[[0-9]*[ABKJ]|\x1b\[\?25[lh]")  # cursor moves / erases: a live display frame


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> str:
    """HEAD's hash, with "+dirty" when tracked or untracked files differ from it.

    New files under benchmarks/results/ (what benchmarks write, e.g. a run's own figures) do not
    count: they are outputs, not code. Outside git (a copy of the tree without its .git, e.g. on a
    remote GPU machine) it is LDMTOOL_COMMIT, the commit the copy was taken from, when set, else
    "unknown"."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return os.environ.get("LDMTOOL_COMMIT", "unknown")
    changes = [
        line
        for line in (_git("status", "--porcelain", "--untracked-files=all") or "").splitlines()
        if not (line.startswith("?? ") and line[3:].startswith("benchmarks/results/"))
    ]
    return head + ("+dirty" if changes else "")


def machine() -> str:
    """Platform, CPU count, torch version and GPU name (when CUDA is present)."""
    parts = [
        f"{platform.platform()} ({platform.processor() or platform.machine()})",
        f"{os.cpu_count()} CPUs",
        f"Python {platform.python_version()}",
    ]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        parts.append("torch not installed")
    return ", ".join(parts)


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: `python benchmarks/NAME.py ARGS` (relative to the repository root)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        argv[0] = str(script.relative_to(REPO))
    except ValueError:
        pass
    return "python " + shlex.join(argv)


def header(name: str, argv: list[str] | None = None, now: _dt.datetime | None = None) -> str:
    """The markdown stamp at the top of a results file."""
    now = now or _dt.datetime.now().astimezone()
    return (
        f"# benchmarks/{name}.py results\n\n"
        f"- commit: {commit()}\n"
        f"- date: {now.isoformat(timespec='seconds')}\n"
        f"- machine: {machine()}\n"
        f"- command: `{command_line(argv)}`\n\n"
    )


def results_path(name: str, now: _dt.datetime | None = None, directory: Path | None = None) -> Path:
    """benchmarks/results/NAME-YYYYMMDD-HHMMSS-COMMIT.md (a fresh name per run)."""
    now = now or _dt.datetime.now().astimezone()
    directory = Path(directory or os.environ.get("LDMTOOL_RESULTS_DIR") or RESULTS_DIR)
    short = commit()[:9].replace("+", "")
    return directory / f"{name}-{now:%Y%m%d-%H%M%S}-{short}.md"


def write_results(name: str, body: str, argv: list[str] | None = None, directory: Path | None = None) -> Path:
    """Write `body` (the run's tables, markdown or plain text) under the stamp; returns the path."""
    now = _dt.datetime.now().astimezone()
    path = results_path(name, now, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "```\n" + body.rstrip("\n") + "\n```" if _BOX.search(body) else body  # rich tables: keep as drawn
    path.write_text(header(name, argv, now) + text.rstrip("\n") + "\n")
    return path


class _Tee(io.TextIOBase):
    """Writes go to the real stream and (without colours or live-display frames) to a buffer."""

    def __init__(self, stream):
        self.stream, self.buffer_text = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.stream.write(s)
        if not _CURSOR.search(s):
            self.buffer_text.write(_ANSI.sub("", s).replace("\r", ""))
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


@contextmanager
def recorded(name: str, enabled: bool = True, directory: Path | None = None) -> Iterator[None]:
    """Run the body with stdout also captured; on success write it as benchmarks/results/NAME-….md.

    Args:
        name: the benchmark's name (its script's stem).
        enabled: False runs the body unrecorded (e.g. an internal sub-process mode of a script).
        directory: where to write (default benchmarks/results, or $LDMTOOL_RESULTS_DIR).
    """
    if not enabled:
        yield
        return
    argv = list(sys.argv)
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = tee.stream
    body = tee.buffer_text.getvalue()
    if body.strip():
        path = write_results(name, body, argv, directory)
        print(f"results: {path}", file=sys.stderr)


def save_figure(src: Path, name: str) -> str:
    """Copy a run's figure next to the results files as NAME-COMMIT.png; its path relative to the
    repository (absolute when the results folder lies outside it)."""
    import shutil

    folder = Path(os.environ.get("LDMTOOL_RESULTS_DIR") or RESULTS_DIR)
    dst = folder / f"{name}-{commit()[:7]}.png"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return str(dst.relative_to(REPO)) if dst.is_relative_to(REPO) else str(dst)
