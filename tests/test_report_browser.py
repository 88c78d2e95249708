"""The HTML report rendered in headless Chromium shows every table and figure."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from harness.cli import app

from conftest import TINY

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH; .ci/run installs Debian's chromium")
def test_html_report_renders_tables_and_figures(runner, tmp_path):
    results = tmp_path / "results"
    run = runner.invoke(
        app, ["run", "--loss", "sgsl,softmax", "--dataset", "digits", "--seeds", "2", "--results-dir", str(results), "--quiet", *TINY]
    )
    assert run.exit_code == 0, run.output
    out = tmp_path / "report"
    assert runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(out)]).exit_code == 0
    page = (out / "report.html").as_uri()
    profile = tmp_path / "profile"

    dom = subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    source = (out / "report.html").read_text()
    assert dom.count("<table") == source.count("<table") >= 4
    assert len(re.findall(r"<img[^>]+src=\"data:image/png;base64,", dom)) == source.count("<img") >= 3

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", "--window-size=1400,4000", f"--screenshot={screenshot}", page],
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] >= 4000
    # A rendered page has text, table borders and plots: far from a blank canvas.
    assert pixels.std() > 20
    assert (pixels < 128).mean() > 0.01
