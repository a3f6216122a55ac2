"""`sample`, `impute` and `segment` give bit-identical outputs for fixed seeds and checkpoints,
and the trainers give bit-identical weights for fixed seeds.

The checkpoints in tests/regression/models/ and the hashes in expected.json were recorded once
(`python tests/regression/make_fixtures.py`); a change that alters any output array fails here.
"""

from __future__ import annotations

import json

from regression_cases import HERE, hash_models, hash_outputs, run_cases, train_models


def test_outputs_bit_identical(tmp_path):
    expected = {k: v for k, v in json.loads((HERE / "expected.json").read_text()).items() if not k.startswith("train/")}
    got = hash_outputs(run_cases(tmp_path))
    assert sorted(got) == sorted(expected), "a different set of output files"
    changed = [k for k in expected if got[k] != expected[k]]
    assert not changed, f"outputs changed: {changed}"


def test_training_bit_identical(tmp_path):
    """The tiny config trains to the same weights, bit for bit (CPU, fixed seeds)."""
    expected = {k: v for k, v in json.loads((HERE / "expected.json").read_text()).items() if k.startswith("train/")}
    got = hash_models(train_models(tmp_path))
    changed = [k for k in expected if got[k] != expected[k]]
    assert not changed, f"trained weights changed: {changed}"
