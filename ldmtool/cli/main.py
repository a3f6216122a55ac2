"""The `ldmtool` command line: a thin skin over the package's functions.

Heavy libraries (torch, MONAI) are imported inside command bodies so `--help` is instant.
"""

from __future__ import annotations

import inspect
import sys
from typing import Annotated

import typer

from ldmtool import __version__
from ldmtool.cli import common

app = typer.Typer(
    name="ldmtool",
    help="Synthetic medical data augmentation with slice-by-slice latent diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ldmtool {__version__}")
        raise typer.Exit()


@app.callback()
def callback(
    ctx: typer.Context,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")] = "auto",
    seed: Annotated[int, typer.Option(help="Base random seed.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and details.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and final results.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = common.State(device=device, seed=seed, verbose=verbose, quiet=quiet)


def _flowing(doc: str) -> str:
    """A command's docstring as help text: each paragraph on one line. In rich markup mode Typer
    keeps the docstring's line breaks after the first paragraph and then wraps every line to the
    terminal, leaving ragged half-lines; joined, rich wraps whole paragraphs."""
    return "\n\n".join(" ".join(line.strip() for line in par.splitlines()) for par in doc.split("\n\n"))


def _register() -> None:
    from ldmtool.cli import (
        demo,
        distill,
        evaluate,
        impute,
        inpaint,
        sample,
        segment,
        series,
        stats,
        train_ae,
        train_ldm,
    )

    for name, fn in (
        ("demo-data", demo.demo_data),
        ("train-ae", train_ae.train_ae),
        ("train-ldm", train_ldm.train_ldm),
        ("distill", distill.distill),
        ("sample", sample.sample),
        ("stats", stats.stats),
        ("impute", impute.impute),
        ("inpaint", inpaint.inpaint),
        ("train-seg", segment.train_seg),
        ("segment", segment.segment),
        ("evaluate", evaluate.evaluate),
        ("train-series", series.train_series),
        ("impute-series", series.impute_series),
        ("sample-series", series.sample_series),
    ):
        app.command(name, help=_flowing(inspect.getdoc(fn) or ""))(fn)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning errors into one red line and an exit code.

    Typer/Click handle usage errors themselves (exit 2) in standalone mode and exit through
    SystemExit; everything else that escapes a command is caught here.
    """
    import os

    from ldmtool.errors import LdmError, Preempted

    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args
    try:
        app(args=args, prog_name="ldmtool")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Preempted as exc:  # state saved: exit code 75 asks the batch system to run it again
        if os.environ.get("RANK", "0") == "0":
            common.console_err.print(f"[bold yellow]{exc}[/]", highlight=False, soft_wrap=True)
        return exc.exit_code
    except LdmError as exc:
        if verbose:
            common.console_err.print_exception()
        common.error(str(exc))
        return 1
    except KeyboardInterrupt:
        common.error("interrupted")
        return 130
    except MemoryError:
        common.error("out of memory: use a smaller --batch-size / --decode-batch or a smaller model")
        return 1
    except Exception as exc:  # an internal error: one line unless --verbose
        if verbose:
            common.console_err.print_exception()
        else:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            common.error(f"internal error: {type(exc).__name__}: {msg} (run with --verbose for the traceback)")
        return 1


_finished: int | None = None  # the exit code once a command has returned (entry() only)


def entry() -> None:
    """The `ldmtool` script (and `python -m ldmtool`): run the command, then exit without the
    interpreter's module teardown.

    Tearing down the thousands of modules torch and MONAI load costs a short command most of a
    second after its work is done (`benchmarks/sampling.py --parts e` measures the process). So
    once `main` has returned (every file written, renamed and closed), the exit handler
    registered here, before any command has imported anything, runs last of all exit handlers
    (they run in reverse order: temporary folders and the like are cleaned first) and leaves
    with `os._exit`. An exception escaping `main` leaves the normal way."""
    import atexit

    global _finished
    atexit.register(_exit_after_handlers)
    code = main()
    if torch_distributed_worker():
        _leave_now(code)
    _finished = code
    sys.exit(code)


def _exit_after_handlers() -> None:
    if _finished is not None:
        _leave_now(_finished)


def torch_distributed_worker() -> bool:
    """Whether this process is one of several started by torchrun."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _leave_now(code: int) -> None:
    """End the process without interpreter finalisation: logging shut down, Python's and C's
    output streams flushed, then `os._exit`.

    For a torchrun worker this is also a matter of correctness: everything is written and the
    process group left by now (`training_session`). What remains are the collective backend's C++
    threads (gloo's transport loop, the store client), and tearing those down in the
    interpreter's exit path can abort a worker that has already finished ("terminate called
    without an active exception"), which torchrun then reports as a failed run."""
    import ctypes
    import logging
    import os

    logging.shutdown()  # its exit handler was registered before entry()'s and would not run
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:  # what C/C++ code printed through stdio (no C library to load on some platforms)
        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass
    os._exit(code)
