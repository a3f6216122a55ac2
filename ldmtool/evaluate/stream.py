"""One streaming pass over a volume set: per case its view features, coarse privacy descriptor and
radiomic attributes.

Volumes are read, embedded and released one at a time (memory: one volume), and each case's
arrays come from the on-disk `FeatureCache` when its files and the settings are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ldmtool.evaluate.cache import FeatureCache
from ldmtool.evaluate.volumes import VolumeSet
from ldmtool.runtime import release_memory


@dataclass
class EmbedSpec:
    """What to compute per volume: view features (extractor None: none) and/or the coarse descriptor."""

    extractor: object | None
    views: tuple[str, ...]
    slices_per_view: int
    descriptor_factor: int | None
    radiomics: bool = False
    label_names: dict[str, int] | None = None  # the label layout of the radiomic region attributes
    n_labels: int = 0


def embed_set(
    vs: VolumeSet, spec: EmbedSpec, cache: FeatureCache, device: torch.device, on_volume=None
) -> dict[str, np.ndarray]:
    """Per-case arrays of one set, stacked: "view:<name>" (N, S, F), "descriptor" (N, i, j, k),
    "radiomics" (N, R) as `spec` asks."""
    from ldmtool.evaluate.features import embed_views
    from ldmtool.evaluate.nnsearch import volume_descriptor

    wanted = _wanted(spec)
    rows: list[dict[str, np.ndarray]] = []
    for i in range(len(vs)):
        key = cache.key(vs.files[i]) if vs.files[i] else None
        got = cache.get(key) or {}
        if not wanted <= set(got):
            img, lab = vs.read(i)
            if spec.extractor is not None:
                feats = embed_views(img[None], spec.extractor, spec.views, spec.slices_per_view, device)
                got.update({f"view:{v}": f[0] for v, f in feats.items()})
            if spec.descriptor_factor is not None:
                got["descriptor"] = volume_descriptor(img, spec.descriptor_factor)
            if spec.radiomics:
                from ldmtool.evaluate.radiomics import radiomic_features

                got["radiomics"] = radiomic_features(img, lab, spec.label_names, spec.n_labels)[1]
            cache.put(key, got)
            del img, lab
            release_memory()  # the volume's temporaries go back to the system (see release_memory)
        rows.append({k: got[k] for k in wanted})
        if on_volume is not None:
            on_volume()
    return {k: np.stack([r[k] for r in rows]) for k in sorted(wanted)}


def _wanted(spec: EmbedSpec) -> set[str]:
    keys = {f"view:{v}" for v in spec.views} if spec.extractor is not None else set()
    if spec.descriptor_factor is not None:
        keys.add("descriptor")
    if spec.radiomics:
        keys.add("radiomics")
    return keys


def view_features(arrays: dict[str, np.ndarray], views: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The {view: (N, S, F)} part of `embed_set`'s result (the form `features.py` works with)."""
    return {v: arrays[f"view:{v}"] for v in views}
