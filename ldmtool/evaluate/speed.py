"""Sampling speed as recorded by `ldmtool sample` in its provenance sidecars (never estimated)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np


def read_speed(synthetic_dir: Path | list[Path]) -> dict:
    """Samples/s and devices from `DIR/provenance/*.json` (field `seconds` = seconds per sample),
    of one folder or of several together.

    Returns {"available": False, "reason": ...} when no folder has provenance."""
    dirs = list(synthetic_dir) if isinstance(synthetic_dir, (list, tuple)) else [synthetic_dir]
    prov_dirs = [Path(d) / "provenance" for d in dirs]
    files = [f for d in prov_dirs if d.is_dir() for f in sorted(d.glob("*.json"))]
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
        where = ", ".join(str(d) for d in prov_dirs)
        reason = (
            f"no readable provenance JSON in {where}"
            if any(d.is_dir() for d in prov_dirs)
            else f"{where} does not exist"
        )
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
        "source": ", ".join(str(d) for d in prov_dirs),
    }
