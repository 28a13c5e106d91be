"""The comparison figures, as PNG and SVG in reports/, plus reports/summary.md.

Run it:
    python -m analysis.plots                  # $RUNS_DIR (./runs) -> $REPORTS_DIR (./reports)
    python -m analysis.plots runs/ --reports-dir /tmp/reports
    python -m analysis.plots --source wandb   # $WANDB_ENTITY / $WANDB_PROJECT
    make plots

Every figure shows the mean over seeds of one configuration (runs sharing a config_hash) with a
95% t-interval, and each method keeps one colour across figures (analysis.style).
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, LogLocator, MaxNLocator, NullLocator

from analysis import cli, results
from analysis.results import ACCURACY as ACC
from analysis.results import (
    MEASURED,
    PREDICTED,
    SAMPLES_PER_S,
    TOTAL,
    TRAIN_S,
    TRAINABLE,
    format_value,
    number,
)
from analysis.style import (
    LINESTYLES,
    MARKERS,
    CountFormatter,
    bytes_axis,
    method_color,
    method_text_color,
    new_figure,
    paper_style,
    save_figure,
)
from experiments.contract import record as R
from experiments.contract.record import col

CI_NOTE = "mean ± 95% CI over seeds"
GUIDE = "0.4"  # frontier and reference marks: a grey no method colour uses
# Memory categories in stacking order: (legend name, grey, the ledger's column for the same thing,
# the measured step's categories it gathers). Greys, because colour means the method; each
# segment's edge is the method's colour, which keeps neighbouring greys apart.
CATEGORIES = (
    ("weights", "#333333", results.WEIGHTS, (R.CAT_PARAMETERS,)),
    ("gradients", "#5c5c5c", results.GRADS, (R.CAT_GRADIENTS,)),
    ("optimizer state", "#858585", results.OPTIMIZER, (R.CAT_OPTIMIZER_STATE,)),
    ("optimizer temporaries", "#a3a3a3", None, (R.CAT_OPTIMIZER_TEMPORARIES,)),
    ("activations", "#c2c2c2", results.ACTIVATIONS, (R.CAT_ACTIVATIONS,)),
    ("temporaries", "#dedede", None, (R.CAT_TEMPORARIES,)),
    ("buffers, inputs, weight casts", "#f5f5f5", None,
     (R.CAT_BUFFERS, R.CAT_INPUTS, R.CAT_WEIGHT_CASTS)),
)
_EXTRA_GREYS = ("#4d4d4d", "#999999", "#cccccc", "#ebebeb")  # categories the record adds later


def _span(row: pd.Series, column: str) -> list[list[float]] | None:
    """The range over seeds as an error bar: memory is measured, not sampled.

    Seeds differ in memory only by their batches (a longer padded batch saves more
    activations); a t-interval from two such values (t = 12.7) would claim a spread no run
    showed and, on a log axis, reach across the plot.
    """
    mean, lo, hi = (number(row.get(c)) for c in (column, f"{column}.min", f"{column}.max"))
    if math.isnan(lo) or math.isnan(hi) or lo == hi:
        return None
    return [[mean - lo], [hi - mean]]


def _err(row: pd.Series, column: str, scale: float = 1.0) -> float | None:
    """The CI half-width for an error bar, or None (n = 1 has no interval to draw)."""
    half = number(row.get(f"{column}.ci95"))
    return None if math.isnan(half) else half * scale


def variant_styles(agg: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """config_hash -> (colour, marker, linestyle): colour by method, marker/line by variant."""
    styles, seen = {}, {}
    for _, row in agg.iterrows():
        i = seen.get(row[R.METHOD], 0)
        seen[row[R.METHOD]] = i + 1
        styles[row[R.CONFIG_HASH]] = (method_color(row[R.METHOD]), MARKERS[i % len(MARKERS)],
                                      LINESTYLES[i % len(LINESTYLES)])
    return styles


def _legend_label(row: pd.Series) -> str:
    return f"{row['label']}, n={int(row['n'])}"


def _legend_below(fig: Figure, title: str | None = CI_NOTE, handles: list | None = None) -> None:
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


def _has(agg: pd.DataFrame, column: str) -> bool:
    return column in agg and agg[column].notna().any()


def _markers(**extra: object) -> dict:
    # A white rim keeps neighbouring markers apart where configurations crowd.
    return {"markersize": 6.5, "markeredgecolor": "white", "markeredgewidth": 0.8,
            "capsize": 3, "elinewidth": 1.1, **extra}


@paper_style
def accuracy_vs_params(agg: pd.DataFrame) -> Figure | None:
    """Test accuracy against trainable parameters (log x), one marker per configuration."""
    if not (_has(agg, ACC) and _has(agg, TRAINABLE)):
        return None
    fig, (ax,) = new_figure()
    styles = variant_styles(agg)
    for _, row in agg.iterrows():
        color, marker, _ = styles[row[R.CONFIG_HASH]]
        ax.errorbar(row[TRAINABLE], 100 * row[ACC], yerr=_err(row, ACC, 100), fmt=marker,
                    color=color, label=_legend_label(row), **_markers())
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(CountFormatter())
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs trainable parameters")
    totals = agg[TOTAL].dropna() if TOTAL in agg else pd.Series(dtype=float)
    # One backbone (adapters add a little to its total): a share of it reads well on top.
    if len(totals) and totals.min() > 0 and totals.max() / totals.min() < 1.1:
        total = float(totals.min())
        top = ax.secondary_xaxis("top", functions=(lambda x: 100 * np.asarray(x) / total,
                                                   lambda p: np.asarray(p) * total / 100))
        top.set_xlabel(f"% of the model's {total:,.0f} parameters")
        top.xaxis.set_major_formatter(lambda v, _: f"{v:g}%")
    _pad_log(ax, agg[TRAINABLE])
    _legend_below(fig)
    return fig


def _pad_log(ax: object, values: pd.Series) -> None:
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


def unmeasured(agg: pd.DataFrame) -> list[str]:
    """Configurations with an accuracy but no measured step peak (records from before it)."""
    if not _has(agg, ACC):
        return []
    has_acc = agg[ACC].notna()
    measured = agg[MEASURED].notna() if MEASURED in agg else pd.Series(False, index=agg.index)
    return list(agg.loc[has_acc & ~measured, "label"])


@paper_style
def accuracy_vs_memory(agg: pd.DataFrame) -> Figure | None:
    """Test accuracy against the measured step peak, with the Pareto frontier drawn.

    The x axis is `memory.measured_peak_bytes` only: a record without it (from before the
    measured step) is left out and named under the plot, never placed by its process-level
    figure (CPU resident-set growth is approximate and not a peak).
    """
    if not (_has(agg, ACC) and _has(agg, MEASURED)):
        return None
    rows = [row for _, row in agg.iterrows()
            if not math.isnan(number(row[MEASURED])) and not math.isnan(number(row[ACC]))]
    xs = [float(row[MEASURED]) for row in rows]
    lo, hi = min(xs), max(xs)
    # A wide spread (head vs full) reads better on a log axis, which also gives the crowd of
    # adapters just above the frozen backbone's weights more room than a linear one would.
    log = lo > 0 and hi / lo > 4
    left = lo / 1.6 if log else 0.0
    fig, (ax,) = new_figure()
    styles = variant_styles(agg)
    front = pareto_front([(x, 100 * float(row[ACC])) for row, x in zip(rows, xs, strict=True)])
    fx, fy = zip(*front, strict=True)
    # Under the markers: the frontier is a guide, the configurations are the data.
    ax.step(fx, fy, where="post", color=GUIDE, linestyle="--", linewidth=1.1, zorder=2,
            label="Pareto frontier")
    for row, x in zip(rows, xs, strict=True):
        color, marker, _ = styles[row[R.CONFIG_HASH]]
        ax.errorbar(x, 100 * row[ACC], xerr=_span(row, MEASURED), yerr=_err(row, ACC, 100),
                    fmt=marker,
                    color=color, label=_legend_label(row), zorder=3, **_markers())
    if log:
        ax.set_xscale("log")
        ax.set_xlim(left, hi * 1.6)
    else:
        ax.set_xlim(left=0, right=hi * 1.15)
    bytes_axis(ax.xaxis, log=log, max_ticks=6)
    ax.set_xlabel("peak memory of a training step, measured" + (" (log scale)" if log else ""))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs memory")
    missing = unmeasured(agg)
    title = "accuracy: mean ± 95% CI over seeds; memory: mean, bars the range over seeds"
    if missing:  # said where it cannot cover a point: with the legend, which has its own room
        title += "\n" + textwrap.fill("not placed (no measured peak in the record): "
                                      + ", ".join(missing), 90)
    _legend_below(fig, title=title)
    return fig


def _barh_axes(n: int, ncols: int = 1, width: float = 6.4) -> tuple[Figure, list]:
    return new_figure(width, 1.6 + 0.36 * max(n, 2), ncols=ncols, sharey=ncols > 1)


def _label_rows(ax: object, agg: pd.DataFrame) -> None:
    """Configuration names on the y axis, each in its method's colour, first on top."""
    ax.set_yticks(range(len(agg)), labels=list(agg["label"]))
    for tick, method in zip(ax.get_yticklabels(), agg[R.METHOD], strict=True):
        tick.set_color(method_text_color(method))
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)


def _category(name: str) -> int | None:
    """The CATEGORIES index that gathers a `measured_at_peak` key, or None (a new category)."""
    for i, (_, _, _, gathered) in enumerate(CATEGORIES):
        if name in gathered:
            return i
    return None


def breakdown_parts(agg: pd.DataFrame) -> tuple[list[tuple[str, str, np.ndarray]], np.ndarray]:
    """The stacked segments [(name, colour, bytes per row)] and which rows are ledger counts.

    A row's segments are what was live at its measured peak (`measured_at_peak.<category>`)
    when the record has them, else the ledger's counts (weights, gradients, optimizer state,
    activations saved on the first step).
    """
    prefix = f"{results.MEASURED_AT_PEAK}."
    # One column per category (aggregate adds `.std`, `.ci95`, `.min`, `.max` beside each).
    measured_cols = [c for c in agg.columns if c.startswith(prefix)
                     and "." not in c.removeprefix(prefix)]
    values = {c: pd.to_numeric(agg[c], errors="coerce").to_numpy(float) for c in measured_cols}
    has_measured = (np.any([~np.isnan(v) for v in values.values()], axis=0) if values
                    else np.zeros(len(agg), bool))
    ledger = np.zeros(len(agg), bool)
    parts: list[tuple[str, str, np.ndarray]] = []
    for i, (name, color, ledger_col, _) in enumerate(CATEGORIES):
        width = np.zeros(len(agg))
        for c in measured_cols:
            if _category(c.removeprefix(prefix)) == i:
                width += np.nan_to_num(values[c])
        if ledger_col in agg:
            counted = pd.to_numeric(agg[ledger_col], errors="coerce").to_numpy(float)
            use = ~has_measured & ~np.isnan(counted)
            ledger |= use
            width = np.where(use, counted, width)
        parts.append((name, color, width))
    extra = [c for c in measured_cols if _category(c.removeprefix(prefix)) is None]
    for j, c in enumerate(extra):
        name = c.removeprefix(prefix).replace("_", " ")
        parts.append((name, _EXTRA_GREYS[j % len(_EXTRA_GREYS)], np.nan_to_num(values[c])))
    return [p for p in parts if p[2].any()], ledger


@paper_style
def memory_breakdown(agg: pd.DataFrame) -> Figure | None:
    """Stacked memory by category per configuration, the measured step peak and the formula."""
    parts, ledger = breakdown_parts(agg)
    if not parts and not _has(agg, MEASURED) and not _has(agg, PREDICTED):
        return None
    fig, (ax,) = _barh_axes(len(agg))
    y = np.arange(len(agg))
    left = np.zeros(len(agg))
    edges = [method_color(m) for m in agg[R.METHOD]]
    mixed = ledger.any() and not ledger.all()
    # Legend proxies in reading order, grey-edged: on the bars the edge colour is the method's.
    handles: list = []
    for name, color, width in parts:
        ax.barh(y, width, left=left, height=0.62, color=color, edgecolor=edges, linewidth=1.1,
                hatch=["///" if mixed and is_ledger else "" for is_ledger in ledger])
        handles.append(Patch(facecolor=color, edgecolor="0.3", label=name))
        left += width
    if mixed:  # some records predate the measured step: their bars are the ledger's counts
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="///",
                             label="ledger count (no measured step in record)"))
    if _has(agg, PREDICTED):
        handles += ax.plot(agg[PREDICTED], y, "D", color=GUIDE, markersize=6.5,
                           markerfacecolor="none", markeredgewidth=1.4, zorder=4,
                           label="predicted (formula)")
    if _has(agg, MEASURED):
        for i, (_, row) in enumerate(agg.iterrows()):
            span = _span(row, MEASURED)
            if span is not None:
                ax.errorbar(row[MEASURED], i, xerr=span, fmt="none", ecolor="black", capsize=3,
                            zorder=5)
        handles += ax.plot(agg[MEASURED], y, "x", color="black", markersize=7.5,
                           markeredgewidth=1.8, zorder=5,
                           label="measured step peak (mean; bar: range over seeds)")
    nothing = np.isnan(pd.to_numeric(agg.get(MEASURED, pd.Series(np.nan, agg.index)),
                                     errors="coerce").to_numpy(float)) & (left == 0)
    for i in np.flatnonzero(nothing):  # say why a row is empty rather than leave a blank
        ax.annotate("no memory measurement in record", xy=(0, i), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8, color="0.35")
    _label_rows(ax, agg)
    bytes_axis(ax.xaxis)
    ax.set_xlim(left=0)
    ax.set_xlabel("memory per device (binary units)")
    ax.set_title("Memory by category" + (" (ledger: tensors counted on the first step)"
                                         if ledger.all() and parts else ""))
    _legend_below(fig, title=None, handles=handles)
    return fig


@paper_style
def time_and_throughput(agg: pd.DataFrame) -> Figure | None:
    """Time to fit (training loop + preparation) and throughput per configuration."""
    if not (_has(agg, TRAIN_S) or _has(agg, SAMPLES_PER_S)):
        return None
    fig, (ax_t, ax_s) = _barh_axes(len(agg), ncols=2, width=7.6)
    colors = [method_color(m) for m in agg[R.METHOD]]
    y = np.arange(len(agg))
    train = agg.get(TRAIN_S, pd.Series(np.nan, agg.index)).astype(float).fillna(0)
    prep = agg.get(results.PREPARE_S, pd.Series(np.nan, agg.index)).astype(float).fillna(0)
    ax_t.barh(y, train, height=0.6, color=colors)
    if (prep > 0).any():  # the head caches backbone features once: a cost the loop does not show
        ax_t.barh(y, prep, left=train, height=0.6, color="white", edgecolor=colors, hatch="///")
    if f"{results.FIT_S}.ci95" in agg:
        ax_t.errorbar(train + prep, y, xerr=agg[f"{results.FIT_S}.ci95"].astype(float),
                      fmt="none", ecolor="black", capsize=3, elinewidth=1.1)
    ax_t.xaxis.set_major_locator(MaxNLocator(4))
    ax_t.set_xlabel("time to fit (s)")
    # Grey proxies: in the bars colour means the method, so the legend must not borrow one.
    handles = [Patch(facecolor="0.45", label="training loop")]
    if (prep > 0).any():
        handles.append(Patch(facecolor="white", edgecolor="0.45", hatch="///",
                             label="one-off preparation (the head's feature cache)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    ax_s.set_xlabel("training throughput (examples/s)")
    if _has(agg, SAMPLES_PER_S):
        rate = agg[SAMPLES_PER_S].astype(float)
        ax_s.barh(y, rate, height=0.6, color=colors, xerr=agg.get(f"{SAMPLES_PER_S}.ci95"),
                  capsize=3, error_kw={"elinewidth": 1.1})
        positive = rate[rate > 0]
        # The head's cached features run orders of magnitude faster: on a linear axis the
        # other bars would vanish.
        log_rate = len(positive) > 1 and positive.max() / positive.min() > 20
        if log_rate:
            ax_s.set_xscale("log")
            upper = (rate + agg.get(f"{SAMPLES_PER_S}.ci95", 0).fillna(0)).max()  # whiskers too
            ax_s.set_xlim(positive.min() / 3, max(upper, positive.max()) * 1.5)
        else:
            ax_s.xaxis.set_major_locator(MaxNLocator(4))
            ax_s.set_xlim(left=0)
        ax_s.xaxis.set_major_formatter(CountFormatter())
        ax_s.set_xlabel("throughput (examples/s" + (", log scale)" if log_rate else ")"))
    ax_t.set_xlim(left=0)  # a time is never negative, whatever a wide interval says
    for ax in (ax_t, ax_s):
        ax.grid(axis="y", visible=False)
    fig.get_layout_engine().set(wspace=0.06)  # keep the two panels' end tick labels apart
    _label_rows(ax_t, agg)
    fig.suptitle(f"Training time and throughput ({CI_NOTE})")
    return fig


def _epochs_per_step(row: pd.Series) -> float | None:
    """The run's epochs over its optimizer steps (None for a record without both)."""
    epochs, steps = number(row.get(R.EPOCHS)), number(row.get(R.STEPS))
    return epochs / steps if steps > 0 and epochs > 0 else None


@paper_style
def validation_curves(agg: pd.DataFrame) -> Figure | None:
    """Validation accuracy over training, one panel per method (mean over seeds, ±1 std band).

    One panel each, with epochs on x, because the methods' budgets differ by an order of
    magnitude (the head trains 30 epochs on cached features, the others 1 to 3): on one shared
    step axis the short runs would be squeezed against the left edge, and whether a method has
    levelled off is what the curves are read for."""
    if R.VAL_HISTORY not in agg:
        return None
    curves = [(row, results.mean_curve(row[R.VAL_HISTORY])) for _, row in agg.iterrows()]
    curves = [(row, c) for row, c in curves if len(c)]
    if not curves:
        return None
    methods = list(dict.fromkeys(row[R.METHOD] for row, _ in curves))
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig, panels = new_figure(2.6 * ncols + 0.6, 2.1 * nrows + 0.5, ncols, sharey=True,
                             nrows=nrows)
    axes = dict(zip(methods, panels, strict=False))
    for ax in panels[len(methods):]:
        ax.set_visible(False)
    styles = variant_styles(agg)
    scales = [_epochs_per_step(row) for row, _ in curves]
    in_epochs = all(scales)
    for (row, c), scale in zip(curves, scales, strict=True):
        ax = axes[row[R.METHOD]]
        x = c["step"] * (scale if in_epochs else 1)
        color, marker, ls = styles[row[R.CONFIG_HASH]]
        ax.plot(x, 100 * c["mean"], linestyle=ls, marker=marker, markersize=3.5, color=color,
                label=_legend_label(row))
        if c["n"].max() > 1:
            sd = 100 * c["std"].fillna(0)
            ax.fill_between(x, 100 * c["mean"] - sd, 100 * c["mean"] + sd, color=color,
                            alpha=0.15, linewidth=0)
    for method, ax in axes.items():
        ax.set_title(method, color=method_text_color(method))
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=in_epochs))
    for ax in panels[-ncols:]:  # the bottom row
        ax.set_xlabel("epoch" if in_epochs else "optimizer step")
    for ax in panels[::ncols]:  # the left column
        ax.set_ylabel("val. accuracy (%)")
    fig.suptitle("Validation accuracy during training")
    _legend_below(fig, title="mean ± 1 std over seeds")
    return fig


# The LoRA method's own option (methods/lora.py), nested under its name in the config.
RANK = col(R.CONFIG, "lora.rank")
ALPHA = col(R.CONFIG, "lora.alpha")
REFERENCES = ("head", "full")  # the methods the rank plot draws as reference lines


def rank_sweeps(agg: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """LoRA configurations grouped into rank sweeps, by name: the same config except the rank,
    with alpha either held or scaled with the rank (alpha/r held, e.g. alpha = 2r)."""
    if RANK not in agg:
        return {}
    lora = agg[(agg[R.METHOD] == "lora") & agg[RANK].notna()]
    if lora[RANK].nunique() < 2:
        return {}
    prefix = f"{R.CONFIG}."
    skip = {RANK, ALPHA, col(R.CONFIG, R.METHOD)} | {col(R.CONFIG, k) for k in R.NOT_HASHED}
    others = [c for c in lora.columns if c.startswith(prefix) and c not in skip
              and results.varies(lora[c])]
    sizes = {col(R.CONFIG, k) for k in results.SMOKE_KEYS}
    sweeps: dict[str, pd.DataFrame] = {}
    groups = lora.groupby(others, sort=False, dropna=False) if others else [((), lora)]
    for _, group in groups:
        first = group.iloc[0]
        # Named as configurations are (results.config_labels): the options in words, a smoke
        # run marked as one rather than by its sizes.
        words = [results.describe(c.removeprefix(prefix), first[c]) for c in others
                 if c not in sizes and not results.is_missing(first[c])]
        smoke = " (smoke)" if sizes & set(others) and results.is_smoke(first) else ""
        held = {"": group}  # alpha never varied: the group is the sweep, not worth naming
        if ALPHA in group and group[ALPHA].notna().all() and group[ALPHA].nunique() > 1:
            # A sweep holds alpha (the update grows with r) or alpha/r (e.g. alpha = 2r).
            held = {**{f"α={format_value(a)}": g for a, g in group.groupby(ALPHA, sort=False)},
                    **{f"α/r={format_value(k)}": g
                       for k, g in group.groupby(group[ALPHA] / group[RANK], sort=False)}}
        for word, sweep in held.items():
            if sweep[RANK].nunique() >= 2:
                name = " ".join(["lora", *words, *([word] if word else [])]) + smoke
                sweeps[name] = sweep.sort_values(RANK)
    return sweeps


@paper_style
def accuracy_vs_rank(agg: pd.DataFrame) -> Figure | None:
    """Test accuracy against LoRA rank (log2 x), the head's and full's best as references."""
    sweeps = rank_sweeps(agg)
    if not sweeps or not _has(agg, ACC):
        return None
    fig, (ax,) = new_figure()
    ranks: set[int] = set()
    for i, (name, g) in enumerate(sweeps.items()):
        err = (100 * g[f"{ACC}.ci95"]).fillna(0) if f"{ACC}.ci95" in g else None
        n = (f"n={int(g['n'].min())}–{int(g['n'].max())}" if g["n"].nunique() > 1
             else f"n={int(g['n'].iloc[0])}")
        ax.errorbar(g[RANK].astype(float), 100 * g[ACC], yerr=err, color=method_color("lora"),
                    marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                    label=f"{name}, {n}", **_markers())
        ranks.update(int(r) for r in g[RANK])
    # The two ends of the spectrum as references, the frozen backbone's head and full
    # fine-tuning (every method's line would bury the sweep); any method when neither ran.
    others = agg[agg[R.METHOD] != "lora"]
    ends = others[others[R.METHOD].isin(REFERENCES)]
    for method, g in (ends if len(ends) else others).groupby(R.METHOD, sort=False):
        best = g.loc[g[ACC].idxmax()] if g[ACC].notna().any() else None
        if best is not None:
            ax.axhline(100 * best[ACC], color=method_color(method), linestyle="--", linewidth=1.2,
                       label=f"{best['label']} (reference)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(ranks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.set_xlabel("LoRA rank r (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs LoRA rank")
    _legend_below(fig)
    return fig


PLOTS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "accuracy_vs_params": accuracy_vs_params,
    "accuracy_vs_memory": accuracy_vs_memory,
    "memory_breakdown": memory_breakdown,
    "time_throughput": time_and_throughput,
    "val_curves": validation_curves,
    "accuracy_vs_rank": accuracy_vs_rank,
}


def figures(agg: pd.DataFrame) -> dict[str, Figure]:
    """Every figure the aggregated runs support (the rank plot only when ranks were varied)."""
    out = {}
    for name, plot in PLOTS.items():
        fig = plot(agg)
        if fig is not None:
            out[name] = fig
    return out


def write_reports(df: pd.DataFrame, reports_dir: Path, source: str = "",
                  runs_dir: Path | None = None) -> list[Path]:
    """All figures (PNG and SVG) and summary.md for the runs in `df`, plus RESULTS.md when
    `runs_dir` holds a published comparison (a FINDINGS.md; its figures then go to
    reports_dir/results/); returns the files written."""
    from analysis.summary import FINDINGS_FILE, RESULTS_FIGURES, write_results_page, write_summary

    agg = results.aggregate(results.finished(df))
    published = runs_dir is not None and (runs_dir / FINDINGS_FILE).is_file()
    # A published comparison's figures are committed beside RESULTS.md; they get a folder of
    # their own so that `make plots` on one's own runs never overwrites them.
    fig_dir = reports_dir / RESULTS_FIGURES if published else reports_dir
    written: list[Path] = []
    drawn = figures(agg)
    for name, fig in drawn.items():
        written += save_figure(fig, fig_dir, name)
        plt.close(fig)  # a long sweep makes many figures; pyplot would keep each alive
    for name in set(PLOTS) - set(drawn):  # e.g. a rank plot whose sweep is gone: not stale
        for fmt in ("png", "svg"):
            (fig_dir / f"{name}.{fmt}").unlink(missing_ok=True)
    images = [p.relative_to(reports_dir).as_posix() for p in written if p.suffix == ".png"]
    written.append(write_summary(df, agg, reports_dir, images, source))
    if published:
        written.append(write_results_page(df, agg, reports_dir, images, runs_dir))
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate every figure and summary.md; exit 2 when there are no runs."""
    started = cli.start(argv, "python -m analysis.plots", __doc__)
    if started is None:
        return cli.EXIT_NO_RUNS
    args, df, where = started
    runs_dir = None if args.source == "wandb" else Path(args.runs_dir or R.runs_dir())
    written = write_reports(df, Path(args.reports_dir), where, runs_dir)
    n_fin = len(results.finished(df))
    print(f"{len(df)} runs ({n_fin} finished) from {where} -> {len(written)} files in "
          f"{args.reports_dir}/:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
