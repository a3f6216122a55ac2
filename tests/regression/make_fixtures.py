"""Write the tiny checkpoints and the expected output hashes that `test_regression.py` checks.

Run once, on code whose outputs are the reference:
    python tests/regression/make_fixtures.py
It trains tiny models (examples/tiny.yaml) on six 32x32x16 phantoms, keeps their checkpoints in
tests/regression/models/, then runs `sample`, `impute` and `segment` on them with fixed seeds and
records the SHA-256 of every output array in tests/regression/expected.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from regression_cases import MODEL_NAMES, MODELS, hash_models, hash_outputs, run_cases, train_models  # noqa: E402


def keep_models(root: Path) -> None:
    for name in MODEL_NAMES:
        (MODELS / name).mkdir(parents=True, exist_ok=True)
        for f in ("model.safetensors", "config.json"):
            shutil.copy2(root / name / f, MODELS / name / f)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_models(root)
        keep_models(root)
        expected = hash_models(root)
        expected.update(hash_outputs(run_cases(root / "run")))
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"{len(expected)} output hashes written")


if __name__ == "__main__":
    main()
