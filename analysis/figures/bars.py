"""Bar figures, one bar per configuration: memory by category, and time and throughput."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis import results
from analysis.figures.common import CI_NOTE, GUIDE, barh_axes, has, label_rows, legend_below, span
from analysis.results import MEASURED, PREDICTED, SAMPLES_PER_S, TRAIN_S
from analysis.style import CountFormatter, bytes_axis, method_color, paper_style
from experiments.contract import record as R

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
    if not parts and not has(agg, MEASURED) and not has(agg, PREDICTED):
        return None
    fig, (ax,) = barh_axes(len(agg))
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
    if has(agg, PREDICTED):
        handles += ax.plot(agg[PREDICTED], y, "D", color=GUIDE, markersize=6.5,
                           markerfacecolor="none", markeredgewidth=1.4, zorder=4,
                           label="predicted (formula)")
    if has(agg, MEASURED):
        for i, (_, row) in enumerate(agg.iterrows()):
            bar = span(row, MEASURED)
            if bar is not None:
                ax.errorbar(row[MEASURED], i, xerr=bar, fmt="none", ecolor="black", capsize=3,
                            zorder=5)
        handles += ax.plot(agg[MEASURED], y, "x", color="black", markersize=7.5,
                           markeredgewidth=1.8, zorder=5,
                           label="measured step peak (mean; bar: range over seeds)")
    nothing = np.isnan(pd.to_numeric(agg.get(MEASURED, pd.Series(np.nan, agg.index)),
                                     errors="coerce").to_numpy(float)) & (left == 0)
    for i in np.flatnonzero(nothing):  # say why a row is empty rather than leave a blank
        ax.annotate("no memory measurement in record", xy=(0, i), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8, color="0.35")
    label_rows(ax, agg)
    bytes_axis(ax.xaxis)
    ax.set_xlim(left=0)
    ax.set_xlabel("memory per device (binary units)")
    ax.set_title("Memory by category" + (" (ledger: tensors counted on the first step)"
                                         if ledger.all() and parts else ""))
    legend_below(fig, title=None, handles=handles)
    return fig


@paper_style
def time_and_throughput(agg: pd.DataFrame) -> Figure | None:
    """Time to fit (training loop + preparation) and throughput per configuration."""
    if not (has(agg, TRAIN_S) or has(agg, SAMPLES_PER_S)):
        return None
    fig, (ax_t, ax_s) = barh_axes(len(agg), ncols=2, width=7.6)
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
    if has(agg, SAMPLES_PER_S):
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
    label_rows(ax_t, agg)
    fig.suptitle(f"Training time and throughput ({CI_NOTE})")
    return fig
