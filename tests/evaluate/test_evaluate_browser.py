"""The HTML report in a real headless browser: it loads without a server and its images decode."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from ldmtool.cli.main import main

# ---------------------------------------------------------------- helpers: a headless Chromium check

_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  var p = document.createElement('pre');
  p.id = 'ldmtool-probe';
  p.textContent = 'IMAGES ' + ok.length + '/' + imgs.length;
  document.body.appendChild(p);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_report_in_browser(html_path: Path, screenshot: Path | None = None, timeout: float = 120) -> tuple[int, int]:
    """Open `html_path` in headless Chromium and return (images decoded, images on the page).

    The report is copied beside itself with a small script that counts decoded images after the
    load event; Chromium's `--dump-dom` prints the DOM, which carries the count."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium found (Debian: apt-get install chromium)")
    html_path = Path(html_path).resolve()
    probe = html_path.with_name(html_path.stem + ".probe.html")
    probe.write_text(html_path.read_text().replace("</body>", _PROBE + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--allow-file-access-from-files",
        "--virtual-time-budget=10000",
    ]
    try:
        proc = subprocess.run(
            [chromium, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=timeout
        )
        if screenshot is not None:
            subprocess.run(
                [
                    chromium,
                    *flags,
                    f"--screenshot={Path(screenshot).resolve()}",
                    "--window-size=1200,2400",
                    html_path.as_uri(),
                ],
                capture_output=True,
                timeout=timeout,
            )
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r"IMAGES (\d+)/(\d+)", proc.stdout)
    if m is None:
        raise RuntimeError(f"chromium did not render the page (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return int(m.group(1)), int(m.group(2))


pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")


def test_report_images_render_in_chromium(sets_dir, tmp_path):
    out = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "evaluate",
                "--real",
                str(sets_dir / "test"),
                "--synthetic",
                str(sets_dir / "copies"),
                "--train",
                str(sets_dir / "train"),
                "--out",
                str(out),
                "--only",
                "fidelity,privacy,speed",
                "--views",
                "axial",
                "--slices-per-view",
                "1",
                "--image-size",
                "32",
                "--pairs",
                "2",
            ]
        )
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
