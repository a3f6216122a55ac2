"""Output folders of `sample`, `segment`, `impute` and `inpaint`: never written into while they hold someone else's data.

A command writes into `--out` when the folder is new, empty, or its own earlier output (it holds
the command's marker file, or only files with the names the command writes); a re-run there resumes (`sample`) or adds/replaces its own outputs.
Any other non-empty folder is refused with one line naming what is there, unless `overwrite`:
then the command writes beside what is there, replacing only files with the names it writes,
deleting nothing. A folder this run created is removed again if the run fails before writing
anything into it. Every run of `segment`/`impute`/`inpaint` leaves its own record in `runs/`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_write_text, check_writable_dir

RUNS = "runs"

# command -> glob patterns (relative to --out) of the files that mark the folder as its output
MARKERS = {
    "sample": ("provenance/synth_*.json",),
    "segment": ("segment.json", f"{RUNS}/segment-*.json"),
    "impute": ("*_impute.json", f"{RUNS}/impute-*.json"),
    "inpaint": ("*_inpaint.json", f"{RUNS}/inpaint-*.json"),
}
# files a run writes before its marker (shards of one `sample` job start side by side; a run
# can be killed between its outputs and its record): a folder holding only these is not foreign
OWN_FILES = {
    "sample": ("imagesTr/synth_*", "labelsTr/synth_*", "provenance/synth_*", "dicom/synth_*", "montage.png"),
    "segment": ("*_seg.nii.gz", "*_seg.dcm", "*_prob.nii.gz", "*_uncertainty.nii.gz"),
    "impute": ("*_imputed.nii.gz", "*_missing.nii.gz", "*_std.nii.gz"),
    "inpaint": ("*_inpainted.nii.gz", "*_inpainted_label.nii.gz", "*_region.nii.gz"),
}


def _is_temp(path: Path) -> bool:
    """A hidden temporary of an atomic write (`.NAME.tmp-PID-HEX...`), left by a killed run."""
    return path.name.startswith(".") and ".tmp-" in path.name


def _holds_files(path: Path, root: Path, own: tuple[str, ...] = ()) -> bool:
    """True unless `path` is a folder tree holding nothing but folders, temporaries and files
    matching `own` (patterns relative to `root`)."""
    if not path.is_dir() or path.is_symlink():
        rel = path.relative_to(root).as_posix()
        return not _is_temp(path) and not any(fnmatch.fnmatch(rel, pattern) for pattern in own)
    return any(_holds_files(p, root, own) for p in path.iterdir())


def _describe(out: Path, entries: list[Path]) -> str:
    names = {p.name for p in entries}
    if {"imagesTr", "dataset.json"} <= names:
        return "an nnU-Net data set (imagesTr/, dataset.json)"
    shown = [p.name + ("/" if p.is_dir() else "") for p in sorted(entries)[:3]]
    more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
    return ", ".join(shown) + more


def is_own_output(out: Path, command: str) -> bool:
    """True when `out` holds a marker of an earlier run of `command`."""
    return any(next(Path(out).glob(pattern), None) is not None for pattern in MARKERS[command])


def check_output_dir(out: Path, command: str, overwrite: bool = False) -> None:
    """LdmError unless `command` may write into `out` (see the module docstring); also checks
    that it can be written at all (`check_writable_dir`: permission, read-only disk, a file there).

    Call before any work: nothing is created."""
    out = Path(out)
    check_writable_dir(out)
    if not out.is_dir() or is_own_output(out, command):
        return
    entries = [p for p in out.iterdir() if _holds_files(p, out, OWN_FILES[command])]
    if command == "sample" and (out / "dataset.json").is_file() and not _synthetic_dataset(out / "dataset.json"):
        raise LdmError(
            f"{out} holds {_describe(out, entries)}: sample never writes into another data set "
            "(its dataset.json would be replaced); choose a new --out"
        )
    if entries and not overwrite:
        raise LdmError(
            f"{out} is not empty and is not an earlier `ldmtool {command}` output (it holds {_describe(out, entries)}); "
            "choose a new --out, or add --overwrite to write beside these files"
        )


def _synthetic_dataset(path: Path) -> bool:
    """A dataset.json written by `sample` (marked synthetic)."""
    try:
        return json.loads(path.read_text()).get("synthetic") is True
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def output_dir(out: Path) -> Iterator[Path]:
    """Yield `out`; if the block fails and `out` did not exist before, remove the empty folders
    this run created there (files are never removed)."""
    out = Path(out)
    existed = out.exists()
    try:
        yield out
    except BaseException:
        if not existed and out.is_dir():
            for folder, _, _ in sorted(os.walk(out), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    Path(folder).rmdir()  # only empty folders go
        raise


def clear_temps(out: Path, pattern: str) -> None:
    """Remove temporaries a killed run of this command left in `out` for outputs named `pattern`."""
    from ldmtool.io.atomic import _remove

    if Path(out).is_dir():
        for p in Path(out).iterdir():
            if _is_temp(p) and fnmatch.fnmatch(p.name, f".{pattern}.tmp-*"):
                _remove(p)


def write_run_record(out: Path, command: str, text: str, latest: str) -> Path:
    """Write this run's record as `runs/COMMAND-YYYYmmdd-HHMMSS-mmm.json` (milliseconds: the names
    sort by time; an earlier run's is never replaced) and as `latest` (the newest run's record);
    returns the path in runs/."""
    now = time.time()
    runs = Path(out) / RUNS
    while True:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}"
        path = runs / f"{command}-{stamp}.json"
        if not path.exists():
            break
        now += 0.001
    atomic_write_text(path, text)
    atomic_write_text(Path(out) / latest, text)
    return path
