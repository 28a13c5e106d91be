"""Accuracy against a cost (trainable parameters, measured memory, time to fit): one labelled
point per configuration, and where a cost is paid, the Pareto frontier."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, LogLocator, NullLocator

from analysis import results
from analysis.configs import number
from analysis.figures.common import (
    GUIDE,
    err,
    has,
    marker_style,
    pad_log,
    pareto_front,
    span,
    variant_styles,
)
from analysis.figures.labels import label_points
from analysis.results import ACCURACY as ACC
from analysis.results import MACRO_F1, MEASURED, TOTAL, TRAINABLE
from analysis.style import CountFormatter, bytes_axis, method_text_color, new_figure, paper_style
from experiments.contract import record as R

SIZE = (7.2, 5.2)  # room for a label beside each of ~17 points
Bar = Callable[[pd.Series], Any]
# The metrics a scatter's y axis can show (`y=`): a task's selection metric (analysis.tasks).
Y_NAMES = {ACC: "accuracy", MACRO_F1: "macro-F1"}


def _y_name(y: str) -> str:
    return Y_NAMES.get(y, y)


def modal_seeds(rows: list[pd.Series]) -> int:
    """The most common number of seeds among the rows (the larger one on a tie)."""
    counts = pd.Series([int(r["n"]) for r in rows]).value_counts()
    return int(max(counts[counts == counts.max()].index))


def _text(row: pd.Series, usual: int) -> str:
    """A point's label: the configuration, and its seed count where it is not the usual one."""
    n = int(row["n"])
    return str(row["label"]) if n == usual else f"{row['label']} (n={n})"


def _draw(ax: Axes, agg: pd.DataFrame, x_col: str, xerr: Bar,
          frontier: bool, y: str = ACC) -> tuple[list[pd.Series], list[float], list]:
    """The points (mean, error bars), the frontier; returns rows, x values, legend handles."""
    rows = [row for _, row in agg.iterrows()
            if not math.isnan(number(row.get(x_col))) and not math.isnan(number(row[y]))]
    xs = [float(row[x_col]) for row in rows]
    styles = variant_styles(agg)
    handles: list = []
    usual = modal_seeds(rows) if rows else 0
    same = [(x, 100 * float(r[y])) for r, x in zip(rows, xs, strict=True)
            if int(r["n"]) == usual]
    if frontier and len(same) > 1:
        # Only configurations with the same number of seeds: a 1-seed point's luck would
        # otherwise stand beside 3-seed means, and the frontier would run through it.
        fx, fy = zip(*pareto_front(same), strict=True)
        handles += ax.step(fx, fy, where="post", color=GUIDE, linestyle="--", linewidth=1.1,
                           zorder=2, label=f"Pareto frontier of the {usual}-seed configurations")
    for row, x in zip(rows, xs, strict=True):
        color, marker, _ = styles[row[R.CONFIG_HASH]]
        # Bars lighter than their marker: with 17 configurations the bars cross each other,
        # and the point is what a reader looks for.
        _, caps, bars = ax.errorbar(x, 100 * row[y], xerr=xerr(row), yerr=err(row, y, 100),
                                    fmt=marker, color=color, zorder=3, **marker_style())
        for artist in (*caps, *bars):
            artist.set_alpha(0.55)
    return rows, xs, handles


def _finish(fig: Figure, ax: Axes, rows: list[pd.Series], xs: list[float], note: str,
            handles: list, y: str = ACC) -> None:
    """The note and frontier key below the plot, then a label beside every point."""
    ax.set_ylabel(f"test {_y_name(y)} (%)")
    usual = modal_seeds(rows) if rows else 0
    note = f"{note}; n={usual} seeds unless marked" if usual else note
    if not handles:  # an empty proxy keeps the note where a legend title goes
        handles = [Line2D([], [], linestyle="none", label=" ")]
    lines = note.count("\n") + 2
    fig.set_figheight(fig.get_figheight() + 0.21 * lines)
    fig.legend(handles=handles, loc="outside lower center", title=note, frameon=False,
               title_fontsize=9)
    ys = [100 * float(r[y]) for r in rows]
    lo, hi = min(ys), max(ys)
    pad = max(1.0, 0.12 * (hi - lo))
    bottom, top = ax.get_ylim()
    ax.set_ylim(min(bottom, lo - pad), max(top, hi + pad))
    label_points(ax, xs, ys, [_text(r, usual) for r in rows],
                 [method_text_color(r[R.METHOD]) for r in rows])


def _log_axis(ax: Axes, xs: list[float], threshold: float = 4.0) -> bool:
    """A log x axis where the values spread by more than `threshold`x; limits with room."""
    lo, hi = min(xs), max(xs)
    log = lo > 0 and hi / lo > threshold
    if log:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.35, hi * 1.35)
    else:
        ax.set_xlim(0, hi * 1.2)
    return log


def unmeasured(agg: pd.DataFrame, y: str = ACC) -> list[str]:
    """Configurations with an accuracy (or `y`) but no measured step peak (older records)."""
    if not has(agg, y):
        return []
    has_acc = agg[y].notna()
    measured = agg[MEASURED].notna() if MEASURED in agg else pd.Series(False, index=agg.index)
    return list(agg.loc[has_acc & ~measured, "label"])


@paper_style
def accuracy_vs_params(agg: pd.DataFrame, y: str = ACC) -> Figure | None:
    """Test accuracy (or `y`, a Y_NAMES metric) against trainable parameters (log x), one
    labelled point per config."""
    if not (has(agg, y) and has(agg, TRAINABLE)):
        return None
    fig, (ax,) = new_figure(*SIZE)
    rows, xs, _ = _draw(ax, agg, TRAINABLE, lambda _: None, frontier=False, y=y)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(CountFormatter())
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_title(f"{_y_name(y).capitalize()} vs trainable parameters")
    totals = agg[TOTAL].dropna() if TOTAL in agg else pd.Series(dtype=float)
    # One backbone (adapters add a little to its total): a share of it reads well on top.
    if len(totals) and totals.min() > 0 and totals.max() / totals.min() < 1.1:
        total = float(totals.min())
        top = ax.secondary_xaxis("top", functions=(lambda x: 100 * np.asarray(x) / total,
                                                   lambda p: np.asarray(p) * total / 100))
        top.set_xlabel(f"% of the model's {total:,.0f} parameters")
        top.xaxis.set_major_formatter(lambda v, _: f"{v:g}%")
    pad_log(ax, agg[TRAINABLE])
    _finish(fig, ax, rows, xs, f"{_y_name(y)}: mean ± 95% CI over seeds", [], y)
    return fig


@paper_style
def accuracy_vs_memory(agg: pd.DataFrame, y: str = ACC) -> Figure | None:
    """Test accuracy (or `y`) against the measured step peak, with the Pareto frontier drawn.

    The x axis is `memory.measured_peak_bytes` only: a record without it (from before the
    measured step) is left out and named under the plot, never placed by its process-level
    figure (CPU resident-set growth is approximate and not a peak).
    """
    if not (has(agg, y) and has(agg, MEASURED)):
        return None
    fig, (ax,) = new_figure(*SIZE)
    rows, xs, handles = _draw(ax, agg, MEASURED, lambda r: span(r, MEASURED), True, y)
    log = _log_axis(ax, xs)
    bytes_axis(ax.xaxis, log=log, max_ticks=6)
    ax.set_xlabel("peak memory of a training step, measured" + (" (log scale)" if log else ""))
    ax.set_title(f"{_y_name(y).capitalize()} vs memory")
    note = f"{_y_name(y)}: mean ± 95% CI over seeds; memory: mean, bars the range over seeds"
    missing = unmeasured(agg, y)
    if missing:  # said under the plot, where it cannot cover a point
        note += "\n" + textwrap.fill("not placed (no measured peak in the record): "
                                     + ", ".join(missing), 90)
    _finish(fig, ax, rows, xs, note, handles, y)
    return fig


@paper_style
def accuracy_vs_time(agg: pd.DataFrame, y: str = ACC) -> Figure | None:
    """Test accuracy (or `y`) against time to fit (training loop + one-off preparation), with
    the Pareto frontier: what a second of training buys."""
    if not (has(agg, y) and has(agg, results.FIT_S)):
        return None
    fig, (ax,) = new_figure(*SIZE)
    rows, xs, handles = _draw(ax, agg, results.FIT_S, lambda r: err(r, results.FIT_S),
                              True, y)
    log = _log_axis(ax, xs)
    if log:  # seconds at round values, not 3 x 10^1
        lo, hi = ax.get_xlim()
        ticks = [t * 10**e for e in range(-1, 6) for t in (1, 2, 5) if lo <= t * 10**e <= hi]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.set_xlabel("time to fit (s)" + (", log scale" if log else ""))
    ax.set_title(f"{_y_name(y).capitalize()} vs training time")
    _finish(fig, ax, rows, xs, "mean ± 95% CI over seeds (both axes)", handles, y)
    return fig
