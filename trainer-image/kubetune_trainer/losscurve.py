"""The loss-curve PNG published next to the adapter, drawn with matplotlib.

Headless: a bare `Figure` rendered by the Agg canvas, never pyplot (no GUI backend, no global state).
matplotlib is imported on first use, at publish time, so it adds nothing to the trainer's start.
Its config and font cache go to $MPLCONFIGDIR; when that is unset we point it at a fresh temporary
directory, because the trainer's root filesystem is read-only and HOME may be too.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (6.4, 3.6)  # inches
DPI = 200  # twice matplotlib's default 100: 1280 x 720 pixels
TRAIN_COLOR, EVAL_COLOR, BASELINE_COLOR = "tab:blue", "tab:orange", "tab:gray"

Points = list[tuple[int, float]]


def _matplotlib() -> None:
    """Import matplotlib with a writable config/cache directory (no warning, no write to HOME)."""
    if "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="kubetune-matplotlib-")
    import matplotlib  # noqa: F401


def loss_curve_figure(train: Points, evals: Points | None = None, *, baseline: float | None = None,
                      title: str | None = None) -> Figure:
    """The figure: train loss (line), eval loss (points), the baseline eval loss (dashed horizontal
    line), step against loss. Points are (step, loss); non-finite values are left out."""
    _matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train = [(s, v) for s, v in train if math.isfinite(v)]
    evals = [(s, v) for s, v in (evals or []) if math.isfinite(v)]
    baseline = baseline if baseline is not None and math.isfinite(baseline) else None

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), color=TRAIN_COLOR, linewidth=1.5, label="train loss",
                marker="o" if len(train) == 1 else None, markersize=3)
    if evals:
        ax.plot(*zip(*evals), linestyle="none", marker="o", markersize=5, color=EVAL_COLOR, label="eval loss")
    if baseline is not None:
        ax.axhline(baseline, color=BASELINE_COLOR, linestyle="--", linewidth=1.2,
                   label=f"baseline eval loss ({baseline:.4g})")
    values = [v for _, v in train + evals] + ([baseline] if baseline is not None else [])
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")  # 7 -> 0.001 is a flat line on a linear axis
    if not train and not evals:
        ax.text(0.5, 0.5, "no loss values were logged", transform=ax.transAxes, ha="center", va="center",
                color=BASELINE_COLOR)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title} — loss" if title else "loss")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")  # loss falls to the right, the baseline sits at the top
    return fig


def loss_curve_png(train: Points, evals: Points | None = None, *, baseline: float | None = None,
                   title: str | None = None) -> bytes:
    """PNG bytes of `loss_curve_figure` at DPI (1280 x 720)."""
    buffer = io.BytesIO()
    loss_curve_figure(train, evals, baseline=baseline, title=title).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
