"""The evaluation report in a real browser: Debian's `chromium`, headless (.ci/run installs it). The page written by
write_report_files (with the real loss curve PNG of losscurve.py) is loaded from disk; the DOM Chromium built
(--dump-dom) holds the side-by-side table with the answers as text, and the hostile prompt did not run. A screenshot is
kept as the test's artifact: under tmp_path, and copied to build/test-artifacts/ (git-ignored) for CI to keep."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kubetune_trainer.losscurve import loss_curve_png
from kubetune_trainer.report import blind_pairs, render_blind_report, write_report_files
from tests.fixtures import eval_report as data
from tests.fixtures.eval_report import HOSTILE, Tables

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install chromium (.ci/run does)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless run with its own profile (nothing read from or written to HOME), no GPU, no sandbox (root in CI
    containers), a bounded time."""
    profile = tmp_path / "chromium-profile"
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=60, check=True)


def test_report_renders_in_chromium_with_the_side_by_side_table(tmp_path: Path):
    train = [(s, 7.0 / s) for s in range(1, 41)]
    png = loss_curve_png(train, [(10, 1.2), (40, 0.3)], baseline=7.2, title="team-a/job")
    eval_dir = tmp_path / "publish" / "eval"
    write_report_files(eval_dir, data.summary(), data.samples(), png, 5, title="team-a/job",
                       details={"adapter": "s3://out/team-a/job"}, regression_samples=data.regression_samples())
    url = (eval_dir / "report.html").as_uri()

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = shutil.copy(shot, ARTIFACTS / "eval-report.png")
    print(f"screenshot of the report: {shot} (copy: {kept})")
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50, "the page drew text, tables and the loss curve"

    dom = chromium(tmp_path, "--dump-dom", url).stdout
    assert "<title>team-a/job</title>" in dom  # the prompt's <script> set no title: it was text, not code
    tables = Tables(dom).tables
    side = tables["side-by-side"]
    assert side[0][1] == ["#", "prompt", "reference", "base model", "fine-tuned model", "scores"]
    first = dict(zip(side[0][1], side[1][1]))
    assert first["base model"] == "hmm, ticket 0 looks odd to me"
    assert first["fine-tuned model"] == " ".join(f"bug {HOSTILE}".split())
    assert first["prompt"] == " ".join(f"Ticket 0: classify this message.\n{HOSTILE}".split())
    assert dict(zip(side[0][1], side[5][1]))["fine-tuned model"] == "billing"
    assert tables["regression-metrics"][1] == ("regressed", ["rouge_l", "0.41", "0.22", "-0.19"])
    assert dom.count('src="data:image/png;base64,') == 1

    blind = tmp_path / "blind.html"
    blind.write_text(render_blind_report(blind_pairs(data.samples(), 5)[0], title="rate these"))
    blind_dom = chromium(tmp_path, "--dump-dom", blind.as_uri()).stdout
    rows = Tables(blind_dom).tables["blind-pairs"]
    assert rows[0][1] == ["#", "prompt", "reference", "answer A", "answer B"]
    assert {rows[2][1][3], rows[2][1][4]} == {"hmm, ticket 1 looks odd to me", "billing"}
