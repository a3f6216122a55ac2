"""`sample`, `impute` and `segment` give the same outputs for fixed seeds and checkpoints, and the
trainers give the same weights for fixed seeds.

The checkpoints in tests/regression/models/ and expected.json were recorded with
`python tests/regression/make_fixtures.py`. On the machine kind they were recorded on (torch
version, CPU kernels, processor: `machine()`), every output array must be bit-identical. Elsewhere
float rounding differs (PyTorch promises no bit-identity across CPUs), so there each array's
fingerprint (mean, spread, block means) must match within a tolerance far below what a change of
behaviour moves it by: outputs within 1e-4 of their fingerprint's spread (other CPU kernels and
thread counts move them ~1e-6), trained weights within 0.1 (training amplifies rounding: the
UNet's weights moved 0.065 of their spread on one thread without SIMD kernels).
"""

from __future__ import annotations

import json

import numpy as np
from regression_cases import (
    HERE,
    fingerprint_models,
    fingerprint_outputs,
    hash_models,
    hash_outputs,
    machine,
    run_cases,
    train_models,
)

EXPECTED = json.loads((HERE / "expected.json").read_text())


def _check(tmp, kind: str, hash_fn, print_fn, tolerance: float) -> None:
    want = {k: v for k, v in EXPECTED["sha256"].items() if k.startswith("train/") == (kind == "train")}
    if EXPECTED["machine"] == machine():
        got = hash_fn(tmp)
        assert sorted(got) == sorted(want), "a different set of outputs"
        changed = [k for k in want if got[k] != want[k]]
        assert not changed, f"{kind} changed (bit-identity on {machine()}): {changed}"
        return
    got = print_fn(tmp)
    assert sorted(got) == sorted(want), "a different set of outputs"
    far = {}
    for k in want:
        ref, new = np.array(EXPECTED["fingerprints"][k]), np.array(got[k])
        dev = np.abs(new - ref).max() / max(float(ref.std()), 1e-12) if ref.shape == new.shape else np.inf
        if dev > tolerance:
            far[k] = float(dev)
    assert not far, f"{kind} changed beyond rounding ({machine()} vs recorded {EXPECTED['machine']}): {far}"


def test_outputs_unchanged(tmp_path):
    _check(run_cases(tmp_path), "outputs", hash_outputs, fingerprint_outputs, 1e-4)


def test_training_unchanged(tmp_path):
    _check(train_models(tmp_path), "train", hash_models, fingerprint_models, 0.1)
