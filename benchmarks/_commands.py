"""Running `ldmtool` commands inside a benchmark process, their output kept in a log file."""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path

COMMANDS = (
    "demo-data", "train-ae", "train-ldm", "train-seg", "sample", "impute", "inpaint", "segment",
    "evaluate", "stats", "train-series", "impute-series", "sample-series",
)  # fmt: skip


def run_logged(log: Path, *args) -> None:
    """Run one `ldmtool` command in this process, its output appended to `log`; its seconds on
    stderr; SystemExit with the log's last lines if it fails."""
    from ldmtool.cli.main import main as ldmtool_main

    args = [str(a) for a in args]
    t0 = time.perf_counter()
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        print("$ ldmtool " + " ".join(args), flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            code = ldmtool_main(["--quiet", *args])
    if code != 0:
        tail = "\n".join(Path(log).read_text().splitlines()[-5:])
        raise SystemExit(f"ldmtool {' '.join(args)} failed (exit {code}); last lines of {log}:\n{tail}")
    name = next((a for a in args if a in COMMANDS), args[0])
    print(f"  ldmtool {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
