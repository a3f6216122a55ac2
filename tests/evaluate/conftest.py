"""Evaluation fixtures: phantom volume sets in memory and on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

SHAPE = (32, 32, 16)


def phantoms(n: int, seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    from ldmtool.data.phantoms import make_phantom

    rng = np.random.default_rng(seed)
    pairs = [make_phantom(rng, shape) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="session")
def make_phantoms():
    """make_phantoms(n, seed) → (images (n, 32, 32, 16), labels)."""
    return phantoms


@pytest.fixture(scope="session")
def sets_dir(tmp_path_factory) -> Path:
    """train (6), test (4) phantom sets, a synthetic set of copies of train with provenance, a noise set."""
    from ldmtool.data.phantoms import write_demo_dataset

    root = tmp_path_factory.mktemp("evalsets")
    write_demo_dataset(root / "train", n_cases=6, shape=SHAPE, seed=0)
    write_demo_dataset(root / "test", n_cases=4, shape=SHAPE, seed=1)
    copies = root / "copies"
    shutil.copytree(root / "train", copies)
    (copies / "provenance").mkdir()
    for img in sorted((copies / "imagesTr").glob("*_0000.nii.gz")):
        case = img.name[: -len("_0000.nii.gz")]
        (copies / "provenance" / f"{case}.json").write_text(
            json.dumps({"sample": case, "seconds": 0.5, "device": "cpu (test)", "sampler": "ddim", "steps": 10})
        )
    return root
