"""Helpers every figure shares: error bars, a configuration's colour and marker, the legend."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from analysis.configs import number
from analysis.style import LINESTYLES, MARKERS, method_color, method_text_color, new_figure
from experiments.contract import record as R

CI_NOTE = "mean ± 95% CI over seeds"
GUIDE = "0.4"  # frontier and reference marks: a grey no method colour uses


def span(row: pd.Series, column: str) -> list[list[float]] | None:
    """The range over seeds as an error bar: memory is measured, not sampled.

    On the canonical batch (`memory.measured_batch`) seeds of one configuration measure alike
    and the bar vanishes; older records measured each run's own second step, whose padded
    length depends on the seed. A t-interval from two such values (t = 12.7) would claim a
    spread no run showed and, on a log axis, reach across the plot.
    """
    mean, lo, hi = (number(row.get(c)) for c in (column, f"{column}.min", f"{column}.max"))
    if math.isnan(lo) or math.isnan(hi) or lo == hi:
        return None
    return [[mean - lo], [hi - mean]]


def err(row: pd.Series, column: str, scale: float = 1.0) -> float | None:
    """The CI half-width for an error bar, or None (n = 1 has no interval to draw)."""
    half = number(row.get(f"{column}.ci95"))
    return None if math.isnan(half) else half * scale


def shade(color: str, amount: float) -> str:
    """The colour mixed toward black (amount < 0) or white (amount > 0), |amount| <= 1."""
    rgb = np.asarray(to_rgb(color))
    target = np.ones(3) if amount > 0 else np.zeros(3)
    return to_hex(rgb + abs(amount) * (target - rgb))


SHADE_RANGE = 0.5  # a method's variants run from half-way to black to half-way to white


def variant_styles(agg: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """config_hash -> (colour, marker, linestyle): the method's hue; its variants (eight LoRA
    configurations) each a shade of it, darker for more trainable parameters, and a marker."""
    counts = agg[R.METHOD].value_counts()
    styles, seen = {}, {}
    for _, row in agg.iterrows():
        method = row[R.METHOD]
        i = seen.get(method, 0)
        seen[method] = i + 1
        total = int(counts[method])
        amount = 0.0 if total == 1 else SHADE_RANGE * (1 - 2 * i / (total - 1))
        styles[row[R.CONFIG_HASH]] = (shade(method_color(method), amount),
                                      MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)])
    return styles


def legend_label(row: pd.Series) -> str:
    return f"{row['label']}, n={int(row['n'])}"


def legend_below(fig: Figure, title: str | None = CI_NOTE, handles: list | None = None) -> None:
    # Below the axes, not beside them: the plot keeps its width when the figure is shown at a
    # dashboard's half-page size, and a legend never covers a point. Constrained layout makes
    # the room. Long configuration names get two columns, short ones three.
    labels = ([h.get_label() for h in handles] if handles is not None
              else [t for ax in fig.axes for t in ax.get_legend_handles_labels()[1]])
    ncols = min(3 if max((len(t) for t in labels), default=0) <= 24 else 2, max(len(labels), 1))
    # Grow the figure by the legend's height, so the axes keep theirs however many entries.
    rows = math.ceil(len(labels) / ncols) + (title.count("\n") + 1 if title else 0)
    fig.set_figheight(fig.get_figheight() + 0.21 * rows)
    fig.legend(handles=handles, loc="outside lower center", title=title, frameon=False,
               title_fontsize=9, ncols=ncols)


def has(agg: pd.DataFrame, column: str) -> bool:
    return column in agg and agg[column].notna().any()


def marker_style(**extra: object) -> dict:
    # A white rim keeps neighbouring markers apart where configurations crowd.
    return {"markersize": 6.5, "markeredgecolor": "white", "markeredgewidth": 0.8,
            "capsize": 3, "elinewidth": 1.1, **extra}



def pad_log(ax: object, values: pd.Series) -> None:
    """Half a decade of room either side, so end points and their bars are not clipped."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    v = v[v > 0]
    if len(v):
        ax.set_xlim(v.min() / 3, v.max() * 3)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, value) points no other point beats on both: lower cost and higher value."""
    front: list[tuple[float, float]] = []
    for cost, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or value > front[-1][1]:
            front.append((cost, value))
    return front



def barh_axes(n: int, ncols: int = 1, width: float = 6.4) -> tuple[Figure, list]:
    return new_figure(width, 1.6 + 0.36 * max(n, 2), ncols=ncols, sharey=ncols > 1)


def label_rows(ax: object, agg: pd.DataFrame) -> None:
    """Configuration names on the y axis, each in its method's colour, first on top."""
    ax.set_yticks(range(len(agg)), labels=list(agg["label"]))
    for tick, method in zip(ax.get_yticklabels(), agg[R.METHOD], strict=True):
        tick.set_color(method_text_color(method))
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)

