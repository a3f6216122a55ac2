"""Atomic file and folder writes: output appears complete under its final name, or not at all.

Everything ldmtool writes goes through these helpers. Data is written to a hidden temporary
name in the destination folder (same file system, so the final rename is atomic) and moved
onto the final name only when writing succeeded; on failure the temporary is removed.

Operating-system failures that the user can fix (permission denied, read-only or full disk,
name too long, a file where a folder is needed or the reverse) become one-line LdmErrors that
name the path and what to do. Commands call :func:`check_writable_dir` on their output folder
before doing any work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ldmtool.errors import LdmError

_NAME_MAX = 255  # bytes in one path component on common file systems
_FIX = "choose an output folder you can write to"
_ADVICE = {
    errno.EACCES: ("permission denied", _FIX),
    errno.EPERM: ("operation not permitted", _FIX),
    errno.EROFS: ("read-only file system", _FIX),
    errno.ENOSPC: ("no space left on the device", "free space there or choose an output folder on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or choose an output folder on another disk"),
    errno.EFBIG: ("file too large for this file system", "choose an output folder on another disk"),
    errno.ENAMETOOLONG: ("name too long", "use a shorter output name"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another output path"),
    errno.EISDIR: ("it is a folder", "choose a file name that is not a folder"),
    errno.EEXIST: ("it already exists", "choose a new output name or remove it"),
    errno.ENOTEMPTY: ("it already exists and is not empty", "choose a new output folder"),
    errno.EIO: ("input/output error", "check the disk"),
}


def user_error(exc: OSError, path: str | os.PathLike) -> LdmError | None:
    """The one-line LdmError for an OS error the user can fix while writing ``path`` (else None)."""
    if exc.errno not in _ADVICE:
        return None
    what, todo = _ADVICE[exc.errno]
    culprit = exc.filename if exc.filename is not None else path
    where = f"{path}" if str(culprit) == str(path) or ".tmp-" in os.fspath(culprit) else f"{path} ({culprit})"
    return LdmError(f"cannot write {where}: {what}; {todo}")


def _reraise(exc: OSError, path: Path):
    """Raise the user error for ``exc`` (or ``exc`` itself if it is not one)."""
    err = user_error(exc, path)
    if err is None:
        raise exc
    raise err from None


def _check_target(final: Path, *, folder: bool) -> None:
    """LdmError before any work if ``final`` cannot become a file (or folder) at all."""
    if len(os.fsencode(final.name)) > _NAME_MAX:
        raise LdmError(
            f"cannot write {final}: the name is {len(os.fsencode(final.name))} bytes long, "
            f"more than the {_NAME_MAX} a file system allows; use a shorter output name"
        )
    if not folder and final.is_dir():
        raise LdmError(f"cannot write {final}: it is a folder; choose a file name that is not a folder")
    if folder and final.exists() and not final.is_dir():
        raise LdmError(f"cannot write {final}: it is a file, not a folder; choose a new output folder")
    for parent in final.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LdmError(f"cannot write {final}: {parent} is a file, not a folder; choose another output path")
            break


def _make_parent(final: Path) -> None:
    """Create the parent folder of ``final`` (user errors as LdmError)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _reraise(exc, final.parent)


def check_writable_dir(path: str | os.PathLike, need_bytes: int = 0) -> Path:
    """LdmError unless ``path`` is, or can be created as, a folder this process can write to.

    Call before doing work whose results go there. Missing folders are created to test and
    removed again, and a probe file is written and deleted: nothing is left behind. With
    ``need_bytes``, also refuse when the disk has less free space. Returns ``path``.
    """
    p = Path(path)
    _check_target(p, folder=True)
    missing = [d for d in [p, *p.parents] if not d.exists()]
    created: list[Path] = []
    probe = temp_name_for(p / "write-test")
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ldmtool")
        finally:
            os.close(fd)
        free = shutil.disk_usage(p).free
    except OSError as exc:
        _reraise(exc, p)
    finally:
        _remove(probe)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
    if need_bytes and free < need_bytes:
        raise LdmError(
            f"cannot write {p}: {free / 2**20:.0f} MiB free on its disk, {need_bytes / 2**20:.0f} MiB "
            "needed; free space there or choose an output folder on another disk"
        )
    return p


# Compression suffixes that form one logical extension with the suffix before them
# (".nii.gz", ".tar.gz"): libraries such as nibabel pick the format from the whole ending.
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst"}


def _split_suffix(name: str) -> tuple[str, str]:
    """Split ``name`` into (stem, suffix), keeping double endings like ``.nii.gz`` together."""
    path = Path(name)
    suffixes = path.suffixes
    if not suffixes:
        return name, ""
    suffix = suffixes[-1]
    if suffix.lower() in _COMPRESSION_SUFFIXES and len(suffixes) >= 2:
        suffix = suffixes[-2] + suffix
    if suffix == name:  # a dotfile such as ".env"
        return name, ""
    return name[: -len(suffix)], suffix


def temp_name_for(final_path: str | os.PathLike) -> Path:
    """A fresh hidden temporary path next to ``final_path`` that keeps its real suffix.

    ``out/case.nii.gz`` -> ``out/.case.tmp-<pid>-<random>.nii.gz``.
    """
    final = Path(final_path)
    stem, suffix = _split_suffix(final.name)
    tag = f".tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    stem = stem.lstrip(".")
    while len(os.fsencode(f".{stem}{tag}")) > _NAME_MAX and stem:  # long names: shorten the stem only
        stem = stem[:-1]
    return final.with_name(f".{stem}{tag}")


def _remove(path: Path) -> None:
    """Remove a file or folder tree if it exists, ignoring errors (best-effort cleanup)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError:
        pass


def _fsync_file(path: Path) -> None:
    """Flush a written file to disk (best effort; ignored where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; moved onto ``final_path`` on success.

    The parent folder is created if needed. If the block raises, the temporary file is
    removed and ``final_path`` is left untouched; OS errors the user can fix (see
    :func:`user_error`) become LdmError.
    """
    final = Path(final_path)
    _check_target(final, folder=False)
    _make_parent(final)
    tmp = temp_name_for(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        _remove(tmp)
        _reraise(exc, final)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write(path: str | os.PathLike, writer_fn: Callable[[Path], object]) -> Path:
    """Call ``writer_fn(tmp_path)`` and atomically move the result onto ``path``; returns ``path``."""
    with atomic_path(path) as tmp:
        writer_fn(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``; returns ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path``; returns ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding a fresh temporary folder; renamed onto ``final_dir`` on success.

    ``final_dir`` must not exist or be an empty folder (it is replaced). If the block raises,
    the temporary folder and its contents are removed; OS errors the user can fix become
    LdmError.
    """
    final = Path(final_dir)
    _check_target(final, folder=True)
    _make_parent(final)
    tmp = temp_name_for(final)
    try:
        tmp.mkdir()
    except OSError as exc:
        _reraise(exc, final)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            final.rmdir()  # fails (OSError) if it is not empty: never overwrite data
        os.replace(tmp, final)
    except OSError as exc:
        _remove(tmp)
        _reraise(exc, final)
    except BaseException:
        _remove(tmp)
        raise
