"""The loss-curve PNG (matplotlib, headless): what the figure holds, the decoded image, and that the
trainer neither imports matplotlib at start nor writes outside a writable directory."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from kubetune_trainer.losscurve import BASELINE_COLOR, EVAL_COLOR, TRAIN_COLOR, loss_curve_figure, loss_curve_png

REPO = Path(__file__).resolve().parents[2]
TRAIN = [(1, 7.0), (10, 2.0), (15, float("nan")), (20, 0.1)]
EVALS = [(0, 7.2), (10, 2.5), (20, float("inf"))]


def _lines(fig) -> dict[str, object]:
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


def test_figure_draws_train_line_eval_points_and_dashed_baseline():
    fig = loss_curve_figure(TRAIN, EVALS, baseline=7.2, title="team-a/job1")
    ax = fig.axes[0]
    lines = _lines(fig)
    assert set(lines) == {"train loss", "eval loss", "baseline eval loss (7.2)"}
    train, evals, baseline = lines["train loss"], lines["eval loss"], lines["baseline eval loss (7.2)"]
    assert (list(train.get_xdata()), list(train.get_ydata())) == ([1, 10, 20], [7.0, 2.0, 0.1])  # NaN left out
    assert train.get_linestyle() == "-" and train.get_color() == TRAIN_COLOR
    assert (list(evals.get_xdata()), list(evals.get_ydata())) == ([0, 10], [7.2, 2.5])  # inf left out
    assert evals.get_linestyle() == "None" and evals.get_marker() == "o" and evals.get_color() == EVAL_COLOR
    assert baseline.get_linestyle() == "--" and baseline.get_color() == BASELINE_COLOR
    assert list(baseline.get_ydata()) == [7.2, 7.2] and list(baseline.get_xdata()) == [0, 1]  # axes-wide
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("step", "loss", "team-a/job1 — loss")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "train loss", "eval loss", "baseline eval loss (7.2)"]
    assert ax.get_yscale() == "linear" and fig.dpi == 200


def test_figure_uses_a_log_axis_when_the_loss_falls_by_orders_of_magnitude():
    fig = loss_curve_figure([(1, 7.0), (40, 0.0005)], [], baseline=None)
    assert fig.axes[0].get_yscale() == "log"
    assert set(_lines(fig)) == {"train loss"}  # no evaluation, no baseline: nothing pretends there was one


def test_png_decodes_at_twice_the_default_dpi_and_shows_every_series():
    image = Image.open(io.BytesIO(loss_curve_png(TRAIN, EVALS, baseline=7.2, title="team-a/job1")))
    assert image.format == "PNG" and image.size == (1280, 720)  # 6.4 x 3.6 in at 200 dpi
    assert image.info["dpi"] == pytest.approx((200, 200), abs=0.01)
    colors = {color for _, color in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert len(colors) > 50  # text, lines, antialiasing: not a blank canvas
    assert {(31, 119, 180), (255, 127, 14), (127, 127, 127)} <= colors  # train, eval, baseline (tab: colours)


def test_png_without_points_is_still_an_image():
    fig = loss_curve_figure([], [])
    assert [t.get_text() for t in fig.axes[0].texts] == ["no loss values were logged"]
    assert fig.axes[0].get_legend() is None
    assert Image.open(io.BytesIO(loss_curve_png([], []))).size == (1280, 720)


def test_headless_lazy_and_no_write_outside_a_writable_dir(tmp_path: Path):
    """The trainer's start does not import matplotlib; publishing draws with HOME unwritable (the pod's
    read-only root), no display, MPLCONFIGDIR unset and warnings as errors, and says nothing: on its
    own, matplotlib would log 'Matplotlib created a temporary cache directory ...' and drop the cache."""
    script = (
        "import os, sys, warnings\n"
        "import kubetune_trainer.main, kubetune_trainer.publish, kubetune_trainer.metrics\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at start'\n"
        "from kubetune_trainer.losscurve import loss_curve_png\n"
        "data = loss_curve_png([(1, 2.0), (2, 1.0)], [(2, 1.5)], baseline=2.5)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot picks a GUI backend'\n"
        "print(len(data), os.environ['MPLCONFIGDIR'], sep='\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "DISPLAY", "MPLBACKEND", "XDG_CONFIG_HOME",
                                                             "XDG_CACHE_HOME")}
    env.update(HOME="/proc/kubetune-no-home", TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-W", "error", "-c", script], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
    size, config_dir = result.stdout.split()
    assert int(size) > 10_000
    assert Path(config_dir).parent == tmp_path and any(Path(config_dir).iterdir())  # the font cache went there
