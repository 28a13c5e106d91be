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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, LogLocator, MaxNLocator, NullLocator

from analysis import cli, results
from analysis.style import (
    LINESTYLES,
    MARKERS,
    CountFormatter,
    bytes_axis,
    method_color,
    new_figure,
    paper_style,
    save_figure,
)

ACC = results.ACCURACY
LEDGER = (("memory.weights_bytes", "weights", "#4d4d4d"),
          ("memory.grads_bytes", "gradients", "#8c8c8c"),
          ("memory.optimizer_bytes", "optimizer state", "#bdbdbd"),
          ("memory.activations_peak_bytes", "activations (peak)", "#e6e6e6"))
CI_NOTE = "mean ± 95% CI over seeds"


def _val(row: pd.Series, col: str) -> float:
    value = row.get(col)
    return float(value) if value is not None and not pd.isna(value) else math.nan


def _err(row: pd.Series, col: str, scale: float = 1.0) -> float | None:
    """The CI half-width for an error bar, or None (n = 1 has no interval to draw)."""
    half = _val(row, f"{col}.ci95")
    return None if math.isnan(half) else half * scale


def variant_styles(agg: pd.DataFrame) -> dict[str, tuple[str, str, str]]:
    """config_hash -> (colour, marker, linestyle): colour by method, marker/line by variant."""
    styles, seen = {}, {}
    for _, row in agg.iterrows():
        i = seen.get(row["method"], 0)
        seen[row["method"]] = i + 1
        styles[row["config_hash"]] = (method_color(row["method"]), MARKERS[i % len(MARKERS)],
                                      LINESTYLES[i % len(LINESTYLES)])
    return styles


def _legend_label(row: pd.Series) -> str:
    return f"{row['label']}, n={int(row['n'])}"


def _outside_legend(fig: Figure, title: str | None = CI_NOTE) -> None:
    # Outside the axes, so a legend never covers a point; constrained layout makes room for it.
    fig.legend(loc="outside right upper", title=title, frameon=False, title_fontsize=9)


def _has(agg: pd.DataFrame, col: str) -> bool:
    return col in agg and agg[col].notna().any()


@paper_style
def accuracy_vs_params(agg: pd.DataFrame) -> Figure | None:
    """Test accuracy against trainable parameters (log x), one marker per configuration."""
    if not (_has(agg, ACC) and _has(agg, "params.trainable")):
        return None
    fig, (ax,) = new_figure(7.2, 4.2)
    styles = variant_styles(agg)
    for _, row in agg.iterrows():
        color, marker, _ = styles[row["config_hash"]]
        ax.errorbar(row["params.trainable"], 100 * row[ACC], yerr=_err(row, ACC, 100),
                    fmt=marker, color=color, markersize=7, capsize=4, elinewidth=1.2,
                    label=_legend_label(row))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(CountFormatter())
    ax.set_xlabel("trainable parameters (count, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs trainable parameters")
    totals = agg["params.total"].dropna() if "params.total" in agg else pd.Series(dtype=float)
    # One backbone (adapters add a little to its total): a share of it reads well on top.
    if len(totals) and totals.min() > 0 and totals.max() / totals.min() < 1.1:
        total = float(totals.min())
        top = ax.secondary_xaxis("top", functions=(lambda x: 100 * np.asarray(x) / total,
                                                   lambda p: np.asarray(p) * total / 100))
        top.set_xlabel(f"% of the model's {total:,.0f} parameters")
        top.xaxis.set_major_formatter(lambda v, _: f"{v:g}%")
    _pad_log(ax, agg["params.trainable"])
    _outside_legend(fig)
    return fig


def _pad_log(ax: object, values: pd.Series) -> None:
    """Half a decade of room either side, so end points and their bars are not clipped."""
    v = values.dropna()
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


@paper_style
def accuracy_vs_memory(agg: pd.DataFrame) -> Figure | None:
    """Test accuracy against measured peak memory, with the Pareto frontier drawn."""
    mem = results.MEASURED
    if not (_has(agg, ACC) and _has(agg, mem)):
        return None
    rows = [row for _, row in agg.iterrows()
            if not math.isnan(_val(row, mem)) and not math.isnan(_val(row, ACC))]
    if not rows:
        return None
    xs = [float(row[mem]) for row in rows]
    lo, hi = min(xs), max(xs)
    log = lo > 0 and hi / lo > 8  # a wide spread (head vs full) reads better on a log axis
    left = lo / 1.6 if log else 0.0
    fig, (ax,) = new_figure(7.2, 4.2)
    styles = variant_styles(agg)
    for row, x in zip(rows, xs, strict=True):
        color, marker, _ = styles[row["config_hash"]]
        half = _err(row, mem)
        # An interval reaching below the axis (two noisy seeds) is cut at the axis, not drawn
        # across the whole log-scaled plot.
        xerr = None if half is None else [[min(half, x - left)], [half]]
        ax.errorbar(x, 100 * row[ACC], xerr=xerr, yerr=_err(row, ACC, 100), fmt=marker,
                    color=color, markersize=7, capsize=4, elinewidth=1.2,
                    label=_legend_label(row), zorder=3)
    front = pareto_front([(x, 100 * float(row[ACC])) for row, x in zip(rows, xs, strict=True)])
    fx, fy = zip(*front, strict=True)
    ax.step(fx, fy, where="post", color="0.25", linestyle="--", linewidth=1.2, zorder=4,
            label="Pareto frontier")
    ax.plot(fx, fy, "o", markersize=13, markerfacecolor="none", markeredgecolor="0.25", zorder=4)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(left, hi * 1.6)
    else:
        ax.set_xlim(left=0)
    bytes_axis(ax.xaxis, log=log)
    ax.set_xlabel("peak training memory, measured" + (" (log scale)" if log else ""))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs memory (frontier: less memory, higher accuracy)")
    _outside_legend(fig)
    return fig


def _barh_axes(n: int, ncols: int = 1, width: float = 7.2) -> tuple[Figure, list]:
    return new_figure(width, 1.3 + 0.42 * max(n, 2), ncols=ncols, sharey=ncols > 1)


def _label_rows(ax: object, agg: pd.DataFrame) -> None:
    """Configuration names on the y axis, each in its method's colour, first on top."""
    ax.set_yticks(range(len(agg)), labels=list(agg["label"]))
    for tick, method in zip(ax.get_yticklabels(), agg["method"], strict=True):
        tick.set_color(method_color(method))
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)


@paper_style
def memory_breakdown(agg: pd.DataFrame) -> Figure | None:
    """Stacked ledger bars (weights, gradients, optimizer, activations) with predicted bytes."""
    mem = results.MEASURED
    if not any(_has(agg, c) for c, _, _ in LEDGER) and not _has(agg, mem):
        return None
    fig, (ax,) = _barh_axes(len(agg), width=7.6)
    y = np.arange(len(agg))
    left = np.zeros(len(agg))
    has_ledger = np.array([any(not math.isnan(_val(r, c)) for c, _, _ in LEDGER)
                           for _, r in agg.iterrows()])
    edges = [method_color(m) for m in agg["method"]]
    # Legend proxies in reading order, grey-edged: on the bars the edge colour is the method's.
    handles: list = []
    for col, name, color in LEDGER:
        if col not in agg:
            continue
        width = np.nan_to_num(agg[col].astype(float).to_numpy())
        ax.barh(y, width, left=left, height=0.6, color=color, edgecolor=edges, linewidth=1.2)
        handles.append(Patch(facecolor=color, edgecolor="0.3", label=name))
        left += width
    if (~has_ledger).any():  # records from before the ledger: show what was measured, marked so
        width = np.where(has_ledger, 0.0, np.nan_to_num(agg[mem].astype(float).to_numpy()))
        ax.barh(y, width, height=0.6, color="white", edgecolor=edges, hatch="///",
                linewidth=1.2)
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="///",
                             label="measured peak only (no ledger in record)"))
    if _has(agg, "memory.predicted_bytes"):
        handles += ax.plot(agg["memory.predicted_bytes"], y, "D", color="black", markersize=7,
                           markerfacecolor="none", markeredgewidth=1.5, zorder=4,
                           label="predicted (formula)")
    if has_ledger.any() and _has(agg, mem):
        ax.errorbar(agg[mem].where(has_ledger), y, xerr=agg.get(f"{mem}.ci95"), fmt="none",
                    ecolor="black", capsize=3, zorder=5)
        handles += ax.plot(agg[mem].where(has_ledger), y, "x", color="black", markersize=8,
                           markeredgewidth=1.8, zorder=5, label="measured device peak")
    _label_rows(ax, agg)
    bytes_axis(ax.xaxis)
    ax.set_xlim(left=0)
    ax.set_xlabel("memory per device (bytes, binary units)")
    ax.set_title("Memory breakdown per configuration")
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return fig


@paper_style
def time_and_throughput(agg: pd.DataFrame) -> Figure | None:
    """Time to fit (training loop + preparation) and throughput per configuration."""
    if not (_has(agg, "time.train_s") or _has(agg, "time.train_samples_per_s")):
        return None
    fig, (ax_t, ax_s) = _barh_axes(len(agg), ncols=2, width=8.4)
    ax_s.set_xlabel("training throughput (examples/s)")
    colors = [method_color(m) for m in agg["method"]]
    y = np.arange(len(agg))
    train = agg.get("time.train_s", pd.Series(np.nan, agg.index)).astype(float).fillna(0)
    prep = agg.get("time.prepare_s", pd.Series(np.nan, agg.index)).astype(float).fillna(0)
    ax_t.barh(y, train, height=0.6, color=colors)
    if (prep > 0).any():  # the head caches backbone features once: a cost the loop does not show
        ax_t.barh(y, prep, left=train, height=0.6, color="white", edgecolor=colors, hatch="///")
    if "time.fit_s.ci95" in agg:
        ax_t.errorbar(train + prep, y, xerr=agg["time.fit_s.ci95"].astype(float), fmt="none",
                      ecolor="black", capsize=3, elinewidth=1.1)
    ax_t.set_xlabel("time to fit (s)")
    # Grey proxies: in the bars colour means the method, so the legend must not borrow one.
    handles = [Patch(facecolor="0.45", label="training loop")]
    if (prep > 0).any():
        handles.append(Patch(facecolor="white", edgecolor="0.45", hatch="///",
                             label="one-off preparation (e.g. the head's feature cache)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    if _has(agg, "time.train_samples_per_s"):
        col = "time.train_samples_per_s"
        rate = agg[col].astype(float)
        ax_s.barh(y, rate, height=0.6, color=colors, xerr=agg.get(f"{col}.ci95"), capsize=3,
                  error_kw={"elinewidth": 1.1})
        positive = rate[rate > 0]
        # The head's cached features run orders of magnitude faster: on a linear axis the
        # other bars would vanish.
        log_rate = len(positive) > 1 and positive.max() / positive.min() > 20
        if log_rate:
            ax_s.set_xscale("log")
            upper = (rate + agg.get(f"{col}.ci95", 0).fillna(0)).max()  # whole bars, whiskers
            ax_s.set_xlim(positive.min() / 3, max(upper, positive.max()) * 1.5)
        else:
            ax_s.xaxis.set_major_locator(MaxNLocator(5))
            ax_s.set_xlim(left=0)
        ax_s.xaxis.set_major_formatter(CountFormatter())
        ax_s.set_xlabel("training throughput (examples/s" + (", log scale)" if log_rate else ")"))
    ax_t.set_xlim(left=0)  # a time is never negative, whatever a wide interval says
    for ax in (ax_t, ax_s):
        ax.grid(axis="y", visible=False)
    fig.get_layout_engine().set(wspace=0.06)  # keep the two panels' end tick labels apart
    _label_rows(ax_t, agg)
    fig.suptitle(f"Training time and throughput ({CI_NOTE})")
    return fig


@paper_style
def validation_curves(agg: pd.DataFrame) -> Figure | None:
    """Validation accuracy over optimizer steps, mean over seeds with a ±1 std band."""
    if "val_history" not in agg:
        return None
    curves = [(row, results.mean_curve(row["val_history"])) for _, row in agg.iterrows()]
    curves = [(row, c) for row, c in curves if len(c)]
    if not curves:
        return None
    fig, (ax,) = new_figure(7.2, 4.2)
    styles = variant_styles(agg)
    for row, c in curves:
        color, marker, ls = styles[row["config_hash"]]
        ax.plot(c["step"], 100 * c["mean"], linestyle=ls, marker=marker, markersize=4,
                color=color, label=_legend_label(row))
        if c["n"].max() > 1:
            sd = 100 * c["std"].fillna(0)
            ax.fill_between(c["step"], 100 * c["mean"] - sd, 100 * c["mean"] + sd, color=color,
                            alpha=0.15, linewidth=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy during training")
    _outside_legend(fig, title="mean ± 1 std over seeds")
    return fig


RANK = "config.lora.rank"


def rank_sweeps(agg: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """LoRA configurations grouped into rank sweeps (same config except the rank)."""
    if RANK not in agg:
        return {}
    lora = agg[(agg["method"] == "lora") & agg[RANK].notna()]
    if lora[RANK].nunique() < 2:
        return {}
    skip = {RANK, "config.method"} | {f"config.{k}" for k in results.UNHASHED_CONFIG}
    others = [c for c in lora.columns if c.startswith("config.") and c not in skip
              and lora[c].astype(str).nunique() > 1]
    sweeps: dict[str, pd.DataFrame] = {}
    names = lora[others].apply(
        lambda r: ", ".join(f"{c.removeprefix('config.').removeprefix('lora.')}="
                            f"{results.format_value(r[c])}" for c in others), axis=1,
    ) if others else pd.Series("", index=lora.index)
    for name, group in lora.groupby(names, sort=False):
        if group[RANK].nunique() >= 2:
            sweeps[f"lora ({name})" if name else "lora"] = group.sort_values(RANK)
    return sweeps


@paper_style
def accuracy_vs_rank(agg: pd.DataFrame) -> Figure | None:
    """Test accuracy against LoRA rank (log2 x), other methods' best as reference lines."""
    sweeps = rank_sweeps(agg)
    if not sweeps or not _has(agg, ACC):
        return None
    fig, (ax,) = new_figure(7.2, 4.2)
    ranks: set[int] = set()
    for i, (name, g) in enumerate(sweeps.items()):
        err = (100 * g[f"{ACC}.ci95"]).fillna(0) if f"{ACC}.ci95" in g else None
        ax.errorbar(g[RANK].astype(float), 100 * g[ACC], yerr=err, color=method_color("lora"),
                    marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                    capsize=4, label=f"{name}, n={int(g['n'].min())}–{int(g['n'].max())}"
                    if g["n"].nunique() > 1 else f"{name}, n={int(g['n'].iloc[0])}")
        ranks.update(int(r) for r in g[RANK])
    for method, g in agg[agg["method"] != "lora"].groupby("method", sort=False):
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
    _outside_legend(fig)
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


def write_reports(df: pd.DataFrame, reports_dir: Path, source: str = "") -> list[Path]:
    """All figures (PNG and SVG) and summary.md for the runs in `df`; returns the files written."""
    import matplotlib.pyplot as plt

    from analysis.summary import write_summary

    agg = results.aggregate(results.finished(df))
    written: list[Path] = []
    drawn = figures(agg)
    for name, fig in drawn.items():
        written += save_figure(fig, reports_dir, name)
        plt.close(fig)  # a long sweep makes many figures; pyplot would keep each alive
    for name in set(PLOTS) - set(drawn):  # e.g. a rank plot whose sweep is gone: not stale
        for fmt in ("png", "svg"):
            (reports_dir / f"{name}.{fmt}").unlink(missing_ok=True)
    written.append(write_summary(df, agg, reports_dir,
                                 [p.name for p in written if p.suffix == ".png"], source))
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: regenerate every figure and summary.md; exit 2 when there are no runs."""
    started = cli.start(argv, "python -m analysis.plots", __doc__)
    if started is None:
        return cli.EXIT_NO_RUNS
    args, df, where = started
    written = write_reports(df, Path(args.reports_dir), where)
    n_fin = len(results.finished(df))
    print(f"{len(df)} runs ({n_fin} finished) from {where} -> {len(written)} files in "
          f"{args.reports_dir}/:")
    for path in written:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

