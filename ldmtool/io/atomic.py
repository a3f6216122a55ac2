"""Atomic file and folder writes: output appears complete under its final name, or not at all.

Everything ldmtool writes goes through these helpers. Data is written to a hidden temporary
name in the destination folder (same file system, so the final rename is atomic) and moved
onto the final name only when writing succeeded; on failure the temporary is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

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
    token = secrets.token_hex(4)
    return final.with_name(f".{stem.lstrip('.')}.tmp-{os.getpid()}-{token}{suffix}")


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
    removed and ``final_path`` is left untouched.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name_for(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, final)
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
    the temporary folder and its contents are removed.
    """
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name_for(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            final.rmdir()  # fails (OSError) if it is not empty: never overwrite data
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
