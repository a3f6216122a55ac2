"""Checkpoints: safetensors weights with the config that built them, written atomically.

A checkpoint is one `.safetensors` file whose metadata holds the full JSON config under the key
`ldmtool` (as k-diffusion does), so `sample --ae A --ldm L` needs no other flags. A `config.json`
copy sits beside it (`write_config_json`) for people to read. Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ldmtool.errors import LdmError
from ldmtool.io.atomic import atomic_path, atomic_write_text

META_KEY = "ldmtool"
DEFAULT_NAME = "model.safetensors"


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write tensors + config to `path` atomically (temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {META_KEY: json.dumps(config, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)
    return path


def write_config_json(out_dir: Path, config: dict[str, Any]) -> None:
    """A human-readable copy of the config of the checkpoint to use, beside it."""
    atomic_write_text(Path(out_dir) / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a training output folder (its best checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for name in (DEFAULT_NAME, "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise LdmError(f"{path} holds no checkpoint ({DEFAULT_NAME}); train one first")
    if not path.is_file():
        raise LdmError(f"checkpoint {path} does not exist")
    return path


def read_config(path: Path) -> dict[str, Any]:
    """The config stored in a checkpoint, without reading its tensors (a one-line error where the
    file is not an ldmtool checkpoint)."""
    path = resolve_checkpoint(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LdmError(f"{path} is not a readable safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    return _config_of(meta, path)


def _config_of(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """The checked config of a checkpoint's safetensors metadata."""
    if META_KEY not in meta:
        raise LdmError(f"{path} is a safetensors file but not an ldmtool checkpoint (no config inside)")
    try:
        config = json.loads(meta[META_KEY])
    except ValueError as exc:
        raise LdmError(f"{path}: its config metadata is not valid JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise LdmError(
            f"{path}: its config metadata is a JSON {type(config).__name__}, not a mapping; the checkpoint is damaged"
        )
    return config


def load_checkpoint(path: Path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read (tensors, config) from a checkpoint; `kind` checks config['kind']."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LdmError(f"{path} is not a readable safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    if kind is not None and config.get("kind") != kind:
        found = config.get("kind", "unknown")
        raise LdmError(f"{path} is {_article(found)} {found} checkpoint, expected {_article(kind)} {kind} checkpoint")
    return tensors, config


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def file_sha256(path: Path, limit: int | None = None) -> str:
    """Hex SHA-256 of a file (for provenance)."""
    h = hashlib.sha256()
    with open(resolve_checkpoint(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:limit] if limit else h.hexdigest()
