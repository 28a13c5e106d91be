"""Line figures: validation accuracy during training, and accuracy against LoRA rank."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from analysis import configs, results
from analysis.configs import format_value, number
from analysis.figures.common import (
    has,
    legend_below,
    legend_label,
    marker_style,
    variant_styles,
)
from analysis.results import ACCURACY as ACC
from analysis.style import (
    LINESTYLES,
    MARKERS,
    method_color,
    method_text_color,
    new_figure,
    paper_style,
)
from experiments.contract import record as R
from experiments.contract.record import col


def _epochs_per_step(row: pd.Series) -> float | None:
    """The run's epochs over its optimizer steps (None for a record without both)."""
    epochs, steps = number(row.get(R.EPOCHS)), number(row.get(R.STEPS))
    return epochs / steps if steps > 0 and epochs > 0 else None


@paper_style
def validation_curves(agg: pd.DataFrame, metric: str = R.H_ACCURACY) -> Figure | None:
    """Validation accuracy (or another metric of the history, e.g. macro_f1) over training, one
    panel per method (mean over seeds, ±1 std band).

    One panel each, with epochs on x, because the methods' budgets differ by an order of
    magnitude (the head trains 30 epochs on cached features, the others 1 to 3): on one shared
    step axis the short runs would be squeezed against the left edge, and whether a method has
    levelled off is what the curves are read for."""
    if R.VAL_HISTORY not in agg:
        return None
    curves = [(row, results.mean_curve(row[R.VAL_HISTORY], metric)) for _, row in agg.iterrows()]
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
    word = "accuracy" if metric == R.H_ACCURACY else metric.replace("macro_f1", "macro-F1")
    scales = [_epochs_per_step(row) for row, _ in curves]
    in_epochs = all(scales)
    for (row, c), scale in zip(curves, scales, strict=True):
        ax = axes[row[R.METHOD]]
        x = c["step"] * (scale if in_epochs else 1)
        color, marker, ls = styles[row[R.CONFIG_HASH]]
        ax.plot(x, 100 * c["mean"], linestyle=ls, marker=marker, markersize=3.5, color=color,
                label=legend_label(row))
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
        ax.set_ylabel(f"val. {word} (%)")
    fig.suptitle(f"Validation {word} during training")
    legend_below(fig, title="mean ± 1 std over seeds")
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
              and configs.varies(lora[c])]
    sizes = {col(R.CONFIG, k) for k in configs.SMOKE_KEYS}
    main = configs.main_configurations(lora)
    sweeps: dict[str, pd.DataFrame] = {}
    groups = lora.groupby(others, sort=False, dropna=False) if others else [((), lora)]
    for _, group in groups:
        first = group.iloc[0]
        # Named as configurations are (configs.config_labels): the options in words, those
        # of LoRA's main experiment left unsaid, a smoke run marked as one, not by its sizes.
        words = [configs.describe(c.removeprefix(prefix), first[c]) for c in others
                 if c not in sizes and not configs.is_missing(first[c])
                 and not (len(main) and configs.same_value(main[c].iloc[0], first[c]))]
        smoke = " (smoke)" if sizes & set(others) and configs.is_smoke(first) else ""
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
    if not sweeps or not has(agg, ACC):
        return None
    fig, (ax,) = new_figure()
    ranks: set[int] = set()
    for i, (name, g) in enumerate(sweeps.items()):
        err = (100 * g[f"{ACC}.ci95"]).fillna(0) if f"{ACC}.ci95" in g else None
        n = (f"n={int(g['n'].min())}–{int(g['n'].max())}" if g["n"].nunique() > 1
             else f"n={int(g['n'].iloc[0])}")
        ax.errorbar(g[RANK].astype(float), 100 * g[ACC], yerr=err, color=method_color("lora"),
                    marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                    label=f"{name}, {n}", **marker_style())
        ranks.update(int(r) for r in g[RANK])
    # The two ends of the spectrum as references, the frozen backbone's head and full
    # fine-tuning (every method's line would bury the sweep); any method when neither ran.
    # A method's main experiment where it ran, not a variant of it (8-bit Adam); else its best.
    others = agg[agg[R.METHOD] != "lora"]
    ends = others[others[R.METHOD].isin(REFERENCES)]
    mains = configs.main_configurations(agg).set_index(R.METHOD, drop=False)
    for method, g in (ends if len(ends) else others).groupby(R.METHOD, sort=False):
        best = (mains.loc[method] if method in mains.index
                else g.loc[g[ACC].idxmax()] if g[ACC].notna().any() else None)
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
    legend_below(fig)
    return fig
