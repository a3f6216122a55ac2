"""The terminal rows and the HTML of fixed reports stay as they are.

data/reference_reports.json holds reports of `run_evaluation` on the tiny phantom sets (a full
run, a classification run, a run with skipped criteria and one with a warning), the rows
`summary_rows` gave for them and the sha256 of `render_html`'s page with every figure replaced
by the same stand-in bytes. After an intended change of the rows or the page, rewrite the
expected values from the new output and check the page by eye.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ldmtool.evaluate.html import render_html, summary_rows

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_reports.json").read_text(encoding="utf-8"))
FIGURE = b"\x89PNG stand-in"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_summary_rows_unchanged(name):
    ref = REFERENCE[name]
    assert [list(r) for r in summary_rows(ref["report"])] == ref["rows"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_html_unchanged(name, tmp_path):
    ref = REFERENCE[name]
    (tmp_path / "figures").mkdir()
    for rel in list(ref["report"]["figures"].values()) + [
        p["figure"] for p in ref["report"].get("privacy", {}).get("suspicious_pairs", [])
    ]:
        (tmp_path / rel).write_bytes(FIGURE)
    page = render_html(ref["report"], tmp_path)
    assert hashlib.sha256(page.encode()).hexdigest() == ref["html_sha256"]
