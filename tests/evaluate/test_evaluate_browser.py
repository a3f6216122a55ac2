"""The HTML report in a real headless browser: it loads without a server and its images decode."""

from __future__ import annotations

import json
import warnings

import pytest

from ldmtool.cli.main import main
from ldmtool.evaluate.browser import check_report_in_browser, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")


def test_report_images_render_in_chromium(sets_dir, tmp_path):
    out = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["evaluate", "--real", str(sets_dir / "test"), "--synthetic", str(sets_dir / "copies"),
                     "--train", str(sets_dir / "train"), "--out", str(out), "--only", "fidelity,privacy,speed",
                     "--views", "axial", "--slices-per-view", "1", "--image-size", "32", "--pairs", "2"])
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    expected = len(rep["figures"]) + len(rep["privacy"]["suspicious_pairs"])
    shot = tmp_path / "shot.png"
    ok, total = check_report_in_browser(out / "report.html", screenshot=shot)
    assert total == expected and ok == total, (ok, total)
    assert shot.stat().st_size > 10_000
    # a broken image is caught: the check can fail
    (out / "broken.html").write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    assert check_report_in_browser(out / "broken.html") == (0, 1)
