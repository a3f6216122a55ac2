"""Shared test settings: one CPU thread for torch, the `--runslow` option, tiny data and models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tiny models run fastest on one thread; several threads on a busy machine are many times slower.
# Must be set before torch is first imported (test modules import it after this file is loaded).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if "torch" in sys.modules:  # already imported by a plugin: set it directly
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TINY_YAML = REPO_ROOT / "examples" / "tiny.yaml"
PHANTOM_SHAPE = (32, 32, 16)
PHANTOM_LABELS = {"background": 0, "head": 1, "lesion": 2}


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def tiny_ae_config(**overrides):
    from ldmtool.config import AutoencoderConfig

    kw = dict(channels=(8, 16), norm_num_groups=4, latent_channels=4, position_features=4)
    kw.update(overrides)
    return AutoencoderConfig(**kw)


def tiny_denoiser_config(**overrides):
    from ldmtool.config import DenoiserConfig

    kw = dict(channels=(8, 16), norm_num_groups=4, num_head_channels=8)
    kw.update(overrides)
    return DenoiserConfig(**kw)


def phantom_prepared(n: int = 4, shape=PHANTOM_SHAPE, spacing=(3.0, 3.0, 4.0), seed: int = 0):
    """An in-memory PreparedData of `n` head phantoms (labels: background / head / lesion)."""
    import numpy as np
    import torch

    from ldmtool.data.phantoms import make_phantom
    from ldmtool.data.prepared import PreparedData, volume_to_slices

    images, labels = [], []
    for i in range(n):
        image, label = make_phantom(np.random.default_rng([seed, i]), shape)
        images.append(volume_to_slices(image.astype(np.float32)))
        labels.append(volume_to_slices(label))
    affine = np.diag([*spacing, 1.0])
    return PreparedData(
        images=torch.from_numpy(np.stack(images)),
        labels=torch.from_numpy(np.stack(labels)),
        case_ids=[f"case_{i:03d}" for i in range(n)],
        affines=[affine.copy() for _ in range(n)],
        label_names=dict(PHANTOM_LABELS),
        intensity_ranges=[(0.0, 1.0)] * n,
    )


@pytest.fixture(autouse=True, scope="session")
def _feature_cache_in_tmp(tmp_path_factory):
    """Keep the per-volume feature cache of `evaluate` (every test, CLI runs included) out of the user's cache folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LDMTOOL_CACHE_DIR", str(tmp_path_factory.mktemp("feature_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def ae_config():
    """Factory for a tiny AutoencoderConfig: ae_config(**overrides)."""
    return tiny_ae_config


@pytest.fixture(scope="session")
def denoiser_config():
    """Factory for a tiny DenoiserConfig: denoiser_config(**overrides)."""
    return tiny_denoiser_config


@pytest.fixture(scope="session")
def make_prepared():
    """Factory for an in-memory phantom PreparedData: make_prepared(n=4, shape=..., seed=0)."""
    return phantom_prepared


@pytest.fixture(scope="session")
def phantom_data():
    """Four 32x32x16 phantoms with labels (do not modify: shared by the whole session)."""
    return phantom_prepared()


@pytest.fixture(scope="session")
def tiny_yaml() -> Path:
    return TINY_YAML


@pytest.fixture(scope="session")
def dicom_test_files() -> Path:
    """pydicom's bundled test_files folder (no download)."""
    import pydicom.data

    return Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
