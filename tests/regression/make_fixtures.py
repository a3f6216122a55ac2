"""Write the tiny checkpoints and the expected outputs that `test_regression.py` checks.

Run on code whose outputs are the reference:
    python tests/regression/make_fixtures.py               # record hashes and fingerprints
    python tests/regression/make_fixtures.py --new-models  # also replace the kept checkpoints
It trains tiny models (examples/tiny.yaml) on six 32x32x16 phantoms (with --new-models their
checkpoints replace those in tests/regression/models/), then runs `sample`, `impute` and `segment`
on the kept checkpoints with fixed seeds, and records in tests/regression/expected.json the machine
it ran on, the SHA-256 of every output array and trained checkpoint, and their rounding-tolerant
fingerprints (what another machine kind is compared by).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# the tests run on one thread (tests/conftest.py); thread count changes float reductions
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from regression_cases import (  # noqa: E402
    MODEL_NAMES,
    MODELS,
    fingerprint_models,
    fingerprint_outputs,
    hash_models,
    hash_outputs,
    machine,
    run_cases,
    train_models,
)


def keep_models(root: Path) -> None:
    for name in MODEL_NAMES:
        (MODELS / name).mkdir(parents=True, exist_ok=True)
        for f in ("model.safetensors", "config.json"):
            shutil.copy2(root / name / f, MODELS / name / f)


def main(new_models: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_models(root)
        if new_models:
            keep_models(root)
        run = run_cases(root / "run")
        hashes = {**hash_models(root), **hash_outputs(run)}
        prints = {**fingerprint_models(root), **fingerprint_outputs(run)}
    expected = {"machine": machine(), "sha256": hashes, "fingerprints": prints}
    lines = ",\n".join(
        f"  {json.dumps(k)}: {json.dumps([float(f'{v:.9g}') for v in prints[k]])}" for k in sorted(prints)
    )
    head = json.dumps({"machine": expected["machine"], "sha256": hashes}, indent=1, sort_keys=True)
    text = head[:-2] + ',\n "fingerprints": {\n' + lines + "\n }\n}\n"  # one line per fingerprint
    json.loads(text)  # well-formed
    (HERE / "expected.json").write_text(text)
    print(f"{len(hashes)} hashes and fingerprints written ({expected['machine']})")


if __name__ == "__main__":
    main("--new-models" in sys.argv[1:])
