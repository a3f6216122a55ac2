"""Per-volume evaluation features cached on disk, keyed by the volume files' content.

A case's entry is one .npz file named by the SHA-256 of its image (and label) file bytes and of
the settings that shape the features (target shape and voxel size, extractor, views, slices,
image size, feature code version), so a second `evaluate` over the same folders reads the
features instead of recomputing them, and any change of file or setting misses. Entries are
written atomically (temporary file, then rename): an interrupted run leaves no half entry.

Default folder: $LDMTOOL_CACHE_DIR, else $XDG_CACHE_HOME/ldmtool/evaluate, else
~/.cache/ldmtool/evaluate (a user cache, shared by every report folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

FEATURE_VERSION = 1  # bump when per-volume features change meaning


def default_cache_dir() -> Path:
    """$LDMTOOL_CACHE_DIR, else $XDG_CACHE_HOME/ldmtool/evaluate, else ~/.cache/ldmtool/evaluate."""
    if os.environ.get("LDMTOOL_CACHE_DIR"):
        return Path(os.environ["LDMTOOL_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ldmtool" / "evaluate"


def files_digest(paths: list[Path]) -> str:
    """SHA-256 of the files' bytes (a folder, e.g. a DICOM series: its files in name order)."""
    h = hashlib.sha256()
    for p in paths:
        files = sorted(q for q in Path(p).rglob("*") if q.is_file()) if Path(p).is_dir() else [Path(p)]
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


class FeatureCache:
    """Get/put per-volume feature arrays; `folder=None` turns caching off.

    Args:
        folder: where entries live.
        settings: everything besides the files that the features depend on (JSON-serialisable).
    """

    def __init__(self, folder: Path | None, settings: dict) -> None:
        self.folder = None if folder is None else Path(folder)
        blob = json.dumps({"version": FEATURE_VERSION, **settings}, sort_keys=True, default=str)
        self.settings_key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.hits = self.misses = 0

    def key(self, files: list[Path]) -> str | None:
        return None if self.folder is None else f"{files_digest(files)[:40]}-{self.settings_key}"

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str | None) -> dict[str, np.ndarray] | None:
        """The cached arrays of `key`, or None (a damaged entry counts as missing)."""
        if key is None:
            return None
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str | None, arrays: dict[str, np.ndarray]) -> None:
        """Store arrays under `key` atomically; a cache that cannot be written is skipped."""
        if key is None:
            return
        from ldmtool.errors import LdmError
        from ldmtool.io.atomic import atomic_path

        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        except (OSError, LdmError):
            self.folder = None  # read-only or full: go on without a cache

    def summary(self) -> dict:
        return {"folder": None if self.folder is None else str(self.folder), "hits": self.hits, "misses": self.misses}
