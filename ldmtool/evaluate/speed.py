"""Sampling speed as recorded by `ldmtool sample` in its provenance sidecars (never estimated)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np


def read_speed(synthetic_dir: Path) -> dict:
    """Samples/s and devices from `DIR/provenance/*.json` (field `seconds` = seconds per sample).

    Returns {"available": False, "reason": ...} when the folder has no provenance."""
    prov_dir = Path(synthetic_dir) / "provenance"
    files = sorted(prov_dir.glob("*.json")) if prov_dir.is_dir() else []
    seconds, devices, samplers, skipped = [], Counter(), Counter(), 0
    for f in files:
        try:
            prov = json.loads(f.read_text())
            s = float(prov["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            skipped += 1
            continue
        seconds.append(s)
        devices[str(prov.get("device", "unknown"))] += 1
        samplers[f"{prov.get('sampler', '?')} {prov.get('steps', '?')} steps"] += 1
    if not seconds:
        reason = f"no readable provenance JSON in {prov_dir}" if prov_dir.is_dir() else f"{prov_dir} does not exist"
        return {"available": False, "reason": reason}
    sec = np.asarray(seconds)
    return {
        "available": True,
        "n_samples": len(sec),
        "seconds_per_sample_mean": float(sec.mean()),
        "seconds_per_sample_median": float(np.median(sec)),
        "samples_per_second": float(1.0 / sec.mean()) if sec.mean() > 0 else float("inf"),
        "devices": dict(devices),
        "samplers": dict(samplers),
        "unreadable_files": skipped,
        "source": str(prov_dir),
    }
