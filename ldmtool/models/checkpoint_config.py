"""Typed checkpoint configs: the JSON dict stored in a checkpoint, checked once when it is read.

Each trainer writes a plain dict (see ldmtool/train/); `from_dict` turns it into a dataclass whose
fields are the values inference reads, after checking that they are present, finite and plausible,
so a damaged or hand-edited checkpoint fails with one line naming the field instead of deep inside
sampling. Keys inference does not read (metrics, training settings, case lists) are kept verbatim
in `extra`; `to_dict` gives back the dict that was read, key for key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from ldmtool.config import (
    AutoencoderConfig,
    DenoiserConfig,
    SegModelConfig,
    from_dict,
    to_dict,
)
from ldmtool.data.preprocess import PreprocessConfig
from ldmtool.errors import LdmError

PLAUSIBLE_INTENSITY = 1e9  # |intensity| bound: far above any CT/MR/PET unit, far below float32 overflow


class _Fields:
    """Reads a checkpoint dict field by field; every failure is one LdmError naming the field."""

    def __init__(self, data: Any, source: str, kind: str):
        if not isinstance(data, dict):
            raise LdmError(f"{source}: the {kind} config is not a mapping; the checkpoint is damaged")
        self.data, self.source, self.used = data, source, set()

    def fail(self, name: str, what: str) -> LdmError:
        return LdmError(f"{self.source}: field '{name}' {what}; the checkpoint is damaged or was edited by hand")

    def get(self, name: str, required: bool = True, default: Any = None) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self.fail(name, "is missing")
            return default
        return self.data[name]

    def numbers(self, name: str, value: Any, length: int | None = None) -> tuple[float, ...]:
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not ok or (length is not None and len(value) != length):
            size = f"{length} " if length is not None else ""
            raise self.fail(name, f"must be a list of {size}numbers; got {_short(value)}")
        if not all(math.isfinite(v) for v in value):
            raise self.fail(name, f"holds a value that is not finite ({_short(value)})")
        return tuple(float(v) for v in value)

    def shape(self, name: str, length: int | None = None) -> tuple[int, ...]:
        value = self.get(name)
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        )
        if not ok or not value or (length is not None and len(value) != length):
            raise self.fail(name, f"must be {length or 'some'} positive whole numbers; got {_short(value)}")
        return tuple(value)

    def count(self, name: str) -> int:
        value = self.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(name, f"must be a whole number ≥ 0; got {_short(value)}")
        return value

    def labels(self) -> dict[str, int]:
        value = self.get("label_names", required=False, default={}) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in value.items()
        ):
            raise self.fail("label_names", f"must map names to class numbers ≥ 0; got {_short(value)}")
        return dict(value)

    def affine(self) -> tuple[tuple[float, ...], ...]:
        value = self.get("reference_affine")
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise self.fail("reference_affine", f"must be a 4 × 4 matrix; got {_short(value)}")
        return tuple(self.numbers("reference_affine", row, 4) for row in value)

    def typed(self, name: str, cls: type) -> Any:
        value = self.get(name)
        try:
            return from_dict(cls, value)
        except (LdmError, ValueError, TypeError) as exc:
            raise self.fail(name, f"is not a valid {cls.__name__} ({exc})") from None

    def preprocess(self) -> PreprocessConfig:
        raw = self.get("preprocess", required=False, default=None)
        try:
            return PreprocessConfig.from_dict(raw or {})
        except LdmError as exc:
            raise self.fail("preprocess", f"is not a valid preprocessing config ({exc})") from None

    def kind(self, expected: str) -> str:
        value = self.get("kind")
        if value != expected:
            raise self.fail("kind", f"is {value!r}, expected {expected!r}")
        return value

    def extra(self, *verbatim: str) -> dict[str, Any]:
        """Keys not read into typed fields, plus `verbatim` ones (optional keys, kept as stored)."""
        return {k: copy.deepcopy(v) for k, v in self.data.items() if k not in self.used or k in verbatim}


def _intensity_range(f: _Fields, name: str, value: Any) -> tuple[float, float]:
    """A checked [low, high] intensity range."""
    out = f.numbers(name, value, 2)
    if not out[0] < out[1] or max(abs(v) for v in out) > PLAUSIBLE_INTENSITY:
        raise f.fail(
            name, f"must be [low, high] with low < high and |value| ≤ {PLAUSIBLE_INTENSITY:g}; got {_short(list(out))}"
        )
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _DictView:
    """Read access by the dict's keys (`cfg["volume_shape"]`, `cfg.get(...)`, `cfg.raw`), for code
    that still reads checkpoint configs as dicts."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def raw(self) -> dict[str, Any]:
        """The config as the dict it was read from."""
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()


@dataclass(frozen=True)
class AutoencoderCheckpoint(_DictView):
    """Config of an autoencoder checkpoint (written by train/autoencoder.py)."""

    model: AutoencoderConfig
    num_classes: int
    label_names: dict[str, int]
    volume_shape: tuple[int, ...]
    reference_affine: tuple[tuple[float, ...], ...]
    preprocess: PreprocessConfig
    intensity_range: tuple[float, float] | None
    missing_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other keys, and optional ones as stored
    kind: str = "autoencoder"

    @property
    def image_channels(self) -> int:
        """Image channels (contrasts) the autoencoder encodes together (1 for checkpoints without the field)."""
        return int(self.extra.get("image_channels") or 1)

    @property
    def channel_names(self) -> list[str]:
        """The channels' names in order (dataset.json `channel_names` of the training data)."""
        names = self.extra.get("channel_names")
        return (
            list(names)
            if names
            else (["image"] if self.image_channels == 1 else [f"channel_{c:04d}" for c in range(self.image_channels)])
        )

    @property
    def intensity_ranges(self) -> list[tuple[float, float]] | None:
        """Per channel, the source intensities the normalised range maps back to (None: none recorded)."""
        ranges = self.extra.get("channel_intensity_ranges")
        if ranges:
            return [tuple(float(v) for v in r) for r in ranges]
        return None if self.intensity_range is None else [self.intensity_range]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "autoencoder checkpoint") -> AutoencoderCheckpoint:
        f = _Fields(data, source, "autoencoder")
        f.kind("autoencoder")
        irange = f.get("intensity_range", required=False)
        if irange is not None:
            irange = _intensity_range(f, "intensity_range", irange)
        n_channels = f.get("image_channels", required=False, default=1)
        if isinstance(n_channels, bool) or not isinstance(n_channels, int) or not 1 <= n_channels <= 64:
            raise f.fail("image_channels", f"must be a whole number in 1..64; got {_short(n_channels)}")
        names = f.get("channel_names", required=False, default=None)
        if names is not None and (
            not isinstance(names, list) or len(names) != n_channels or not all(isinstance(v, str) for v in names)
        ):
            raise f.fail("channel_names", f"must be a list of {n_channels} names; got {_short(names)}")
        ranges = f.get("channel_intensity_ranges", required=False, default=None)
        if ranges is not None:
            if not isinstance(ranges, list) or len(ranges) != n_channels:
                raise f.fail(
                    "channel_intensity_ranges", f"must be {n_channels} [low, high] pairs; got {_short(ranges)}"
                )
            for r in ranges:
                _intensity_range(f, "channel_intensity_ranges", r)
        rate = f.get("missing_rate", required=False, default=0.0)
        if rate is None:
            rate = 0.0
        if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise f.fail("missing_rate", f"must be in [0, 1); got {_short(rate)}")
        return cls(
            model=f.typed("model", AutoencoderConfig),
            num_classes=f.count("num_classes"),
            label_names=f.labels(),
            volume_shape=f.shape("volume_shape", 3),
            reference_affine=f.affine(),
            preprocess=f.preprocess(),
            intensity_range=irange,
            missing_rate=float(rate),
            extra=f.extra(
                "label_names",
                "preprocess",
                "intensity_range",
                "missing_rate",
                "image_channels",
                "channel_names",
                "channel_intensity_ranges",
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **copy.deepcopy(self.extra),
            "kind": self.kind,
            "model": to_dict(self.model),
            "num_classes": self.num_classes,
            "volume_shape": list(self.volume_shape),
            "reference_affine": [list(r) for r in self.reference_affine],
        }


@dataclass(frozen=True)
class LatentDiffusionCheckpoint(_DictView):
    """Config of a latent-diffusion checkpoint (written by train/latent.py)."""

    model: DenoiserConfig
    latent_shape: tuple[int, ...]
    latent_mean: tuple[float, ...]
    latent_std: tuple[float, ...]
    conditioning: dict[str, Any]
    autoencoder_sha256: str | None
    volume_shape: tuple[int, ...]
    reference_affine: tuple[tuple[float, ...], ...]
    label_names: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other keys, and optional ones as stored
    kind: str = "latent-diffusion"

    @property
    def attributes(self) -> list[str]:
        """Names of the attributes the model was conditioned on (empty: unconditional)."""
        return list(self.conditioning.get("attributes") or [])

    @property
    def label_channels(self) -> int:
        """Classes of the label map the model was conditioned on (0: not a mask-to-image model)."""
        return int(self.conditioning.get("label_channels") or 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "latent diffusion checkpoint") -> LatentDiffusionCheckpoint:
        f = _Fields(data, source, "latent diffusion")
        f.kind("latent-diffusion")
        shape = f.shape("latent_shape", 4)
        mean = f.numbers("latent_mean", f.get("latent_mean"), shape[0])
        std = f.numbers("latent_std", f.get("latent_std"), shape[0])
        if not all(s > 0 for s in std):
            raise f.fail("latent_std", f"must be positive; got {_short(list(std))}")
        cond = f.get("conditioning", required=False, default={}) or {}
        if not isinstance(cond, dict):
            raise f.fail("conditioning", f"must be a mapping; got {_short(cond)}")
        names = cond.get("attributes") or []
        if names:
            f.numbers("conditioning.mean", cond.get("mean"), len(names))
            if not all(s > 0 for s in f.numbers("conditioning.std", cond.get("std"), len(names))):
                raise f.fail("conditioning.std", f"must be positive; got {_short(cond.get('std'))}")
        channels = cond.get("label_channels", 0)
        if isinstance(channels, bool) or not isinstance(channels, int) or not 0 <= channels <= 256:
            raise f.fail("conditioning.label_channels", f"must be a whole number in 0..256; got {_short(channels)}")
        sha = f.get("autoencoder_sha256", required=False)
        if sha is not None and not isinstance(sha, str):
            raise f.fail("autoencoder_sha256", f"must be a hex string; got {_short(sha)}")
        return cls(
            model=f.typed("model", DenoiserConfig),
            latent_shape=shape,
            latent_mean=mean,
            latent_std=std,
            conditioning=copy.deepcopy(cond),
            autoencoder_sha256=sha,
            volume_shape=f.shape("volume_shape", 3),
            reference_affine=f.affine(),
            label_names=f.labels(),
            extra=f.extra("conditioning", "autoencoder_sha256", "label_names", "latent_mean", "latent_std"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **copy.deepcopy(self.extra),
            "kind": self.kind,
            "model": to_dict(self.model),
            "latent_shape": list(self.latent_shape),
            "volume_shape": list(self.volume_shape),
            "reference_affine": [list(r) for r in self.reference_affine],
        }


@dataclass(frozen=True)
class SegmenterCheckpoint(_DictView):
    """Config of a segmenter checkpoint (written by train/segmentation.py)."""

    model: SegModelConfig
    num_classes: int
    label_names: dict[str, int]
    preprocess: PreprocessConfig
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other keys, and optional ones as stored
    kind: str = "segmenter"

    @property
    def channel_names(self) -> list[str]:
        """The image channels it reads together, in order (["image"] for checkpoints without the field)."""
        n = int(self.extra.get("image_channels") or 1)
        return list(
            self.extra.get("channel_names") or (["image"] if n == 1 else [f"channel_{c:04d}" for c in range(n)])
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "segmenter checkpoint") -> SegmenterCheckpoint:
        f = _Fields(data, source, "segmenter")
        f.kind("segmenter")
        f.get("label_names")  # required: the names of the output classes
        n_channels = data.get("image_channels", 1)
        names = data.get("channel_names")
        if isinstance(n_channels, bool) or not isinstance(n_channels, int) or not 1 <= n_channels <= 64:
            raise f.fail("image_channels", f"must be a whole number in 1..64; got {_short(n_channels)}")
        if names is not None and (not isinstance(names, list) or len(names) != n_channels):
            raise f.fail("channel_names", f"must be a list of {n_channels} names; got {_short(names)}")
        return cls(
            model=f.typed("model", SegModelConfig),
            num_classes=f.count("num_classes"),
            label_names=f.labels(),
            preprocess=f.preprocess(),
            extra=f.extra("label_names", "preprocess"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **copy.deepcopy(self.extra),
            "kind": self.kind,
            "model": to_dict(self.model),
            "num_classes": self.num_classes,
        }
