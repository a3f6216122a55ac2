"""Label maps as users have them: names inferred from the values found, and merged/renamed classes.

A label mapping says which source label values make each class: ``brain=1-255`` (one class from a
range), ``anterior=1,posterior=2`` (renaming), ``csf=4,11,46;gm=100-130,140`` (merging lists and
ranges). Classes get ids 1, 2, … in the order they are named; every value not listed becomes
background (0). A mapping file (.json/.yaml/.yml) holds the same as an object
``{name: [value or "lo-hi" or [lo, hi], ...]}``. The mapping is stored with the preprocessing
settings, so every command that reads labels for a checkpoint applies it identically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ldmtool.errors import LdmError
from ldmtool.io._util import summarise

__all__ = ["LabelMap", "infer_label_names", "inferred_warning", "parse_labels"]

_NAME_RE = re.compile(r"^[A-Za-z_][\w\-. ]*$")
_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
MAX_VALUE = 2**31 - 1


def _range(item: Any, name: str) -> tuple[int, int]:
    """One value, "lo-hi" or [lo, hi] → (lo, hi)."""
    if isinstance(item, bool):
        item = None
    if isinstance(item, (int, np.integer)):
        lo = hi = int(item)
    elif isinstance(item, str) and _RANGE_RE.match(item):
        m = _RANGE_RE.match(item)
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
    elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item):
        lo, hi = int(item[0]), int(item[1])
    else:
        raise LdmError(f"label {name!r}: {item!r} is not a value or a range such as 4 or 1-255")
    if not 0 <= lo <= hi <= MAX_VALUE:
        raise LdmError(f"label {name!r}: range {lo}-{hi} must run upwards over values ≥ 0")
    return lo, hi


class LabelMap:
    """Named classes, each a set of source label value ranges; unlisted values are background."""

    def __init__(self, classes: Mapping[str, Iterable[Any]]):
        if not isinstance(classes, Mapping) or not classes:
            raise LdmError("a label mapping needs at least one class, e.g. brain=1-255")
        self.classes: dict[str, list[tuple[int, int]]] = {}
        for name, items in classes.items():
            name = str(name).strip()
            if not _NAME_RE.match(name) or name == "background":
                raise LdmError(f"{name!r} is not a usable class name (letters, digits, _ - . ; not 'background')")
            if name in self.classes:
                raise LdmError(f"class {name!r} is named twice in the label mapping")
            items = [items] if isinstance(items, (int, str)) else list(items)
            if not items:
                raise LdmError(f"class {name!r} lists no label values")
            ranges = [_range(item, name) for item in items]
            if any(lo == 0 for lo, _ in ranges):
                raise LdmError(f"class {name!r} lists value 0; 0 is the background, leave it out")
            self.classes[name] = ranges
        flat = sorted((lo, hi, name) for name, rs in self.classes.items() for lo, hi in rs)
        for (_, hi1, n1), (lo2, _, n2) in zip(flat, flat[1:]):
            if lo2 <= hi1:
                raise LdmError(f"label value {lo2} is listed for both {n1!r} and {n2!r}")
        if len(self.classes) > 255:
            raise LdmError(f"the label mapping names {len(self.classes)} classes; at most 255 are supported")

    @property
    def label_names(self) -> dict[str, int]:
        """{"background": 0, first class: 1, …}."""
        return {"background": 0, **{name: i for i, name in enumerate(self.classes, start=1)}}

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Source label values → class ids (uint8); values not listed → 0."""
        values = np.asarray(values)
        out = np.zeros(values.shape, dtype=np.uint8)
        for cls, ranges in enumerate(self.classes.values(), start=1):
            for lo, hi in ranges:
                out[(values >= lo) & (values <= hi)] = cls
        return out

    def to_dict(self) -> dict[str, list[list[int]]]:
        """JSON form {name: [[lo, hi], ...]} (what the checkpoint stores)."""
        return {name: [[lo, hi] for lo, hi in ranges] for name, ranges in self.classes.items()}

    def describe_class(self, name: str) -> str:
        """'1-255' or '4,11' — one class's values in the --labels syntax."""
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.classes[name])

    def describe(self) -> str:
        """'brain=1-255; csf=4,11' — the mapping in the --labels syntax."""
        return "; ".join(f"{n}={self.describe_class(n)}" for n in self.classes)


def _parse_spec(text: str) -> dict[str, list[str]]:
    """'a=1,2;b=3-5' or 'a=1,b=2' → {name: [items]}: a token with '=' starts a class, others add values."""
    classes: dict[str, list[str]] = {}
    current = None
    for token in re.split(r"[;,]", text):
        token = token.strip()
        if not token:
            continue
        if "=" in token:
            current, _, first = (part.strip() for part in token.partition("="))
            if current in classes:
                raise LdmError(f"class {current!r} is named twice in --labels {text!r}")
            classes[current] = [first] if first else []
        elif current is None:
            raise LdmError(f"--labels {text!r} must start with a class name, e.g. brain=1-255")
        else:
            classes[current].append(token)
    return classes


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LdmError(f"label mapping {path} cannot be read ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # yaml.YAMLError
        raise LdmError(f"label mapping {path} is not valid YAML ({str(exc).splitlines()[0]})") from None


def parse_labels(spec: str | Mapping | None) -> LabelMap | None:
    """A --labels value (spec text or a .json/.yaml/.yml file) or a stored mapping → LabelMap."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return LabelMap(spec)
    text = str(spec).strip()
    if text.lower().endswith((".json", ".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise LdmError(f"label mapping file {path} does not exist")
        data = _read_file(path)
        if not isinstance(data, dict):
            raise LdmError(f"label mapping {path} must hold an object {{name: [values or 'lo-hi' ranges]}}")
        return LabelMap(data)
    return LabelMap(_parse_spec(text))


def infer_label_names(values: Iterable[int]) -> dict[str, int]:
    """Names for the label values found in the label maps: background 0, label_<v> for the others."""
    found = sorted({int(v) for v in values} - {0})
    return {"background": 0, **{f"label_{v}": v for v in found}}


def inferred_warning(root: Path, names: Mapping[str, int]) -> str:
    """The one-line warning for labels taken from the label maps (no dataset.json labels)."""
    values = [v for v in names.values() if v]
    return (
        f"{root} has no dataset.json labels: {len(values)} label value(s) found in the label maps "
        f"({summarise(values, 8)}), named label_<value>; name or merge them with --labels "
        "(e.g. --labels brain=1-255) or a dataset.json 'labels' entry"
    )
