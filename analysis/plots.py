"""The comparison figures, as PNG and SVG in reports/, plus reports/summary.md.

Run it:
    python -m analysis.plots                  # $RUNS_DIR (./runs) -> $REPORTS_DIR (./reports)
    python -m analysis.plots runs/ --reports-dir /tmp/reports
    python -m analysis.plots results/         # task folders -> one cross-task RESULTS.md
    python -m analysis.plots --source wandb   # $WANDB_ENTITY / $WANDB_PROJECT
    make plots

Every figure shows the mean over seeds of one configuration (runs sharing a config_hash) with a
95% t-interval, and each method keeps one hue across figures (analysis.style), its variants
shades of it. The figures themselves live in analysis/figures/ (scatter, bars, curves); `PLOTS`
lists them in the order reports show them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from analysis import cli, paired, results, tasks
from analysis.figures.bars import CATEGORIES, breakdown_parts, memory_breakdown, time_and_throughput
from analysis.figures.common import pareto_front, variant_styles
from analysis.figures.curves import ALPHA, RANK, accuracy_vs_rank, rank_sweeps, validation_curves
from analysis.figures.scatter import (
    accuracy_vs_memory,
    accuracy_vs_params,
    accuracy_vs_time,
    unmeasured,
)
from analysis.style import save_figure
from experiments.contract import record as R

__all__ = ["ALPHA", "CATEGORIES", "PLOTS", "RANK", "accuracy_vs_memory", "accuracy_vs_params",
           "accuracy_vs_rank", "accuracy_vs_time", "breakdown_parts", "figures", "main",
           "memory_breakdown", "pareto_front", "rank_sweeps", "time_and_throughput", "unmeasured",
           "validation_curves", "variant_styles", "write_reports"]

PLOTS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "accuracy_vs_params": accuracy_vs_params,
    "accuracy_vs_memory": accuracy_vs_memory,
    "accuracy_vs_time": accuracy_vs_time,
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
    reports_dir/results/); for a folder of task folders only the cross-task RESULTS.md
    (analysis.tasks_page); returns the files written."""
    from analysis.summary import FINDINGS_FILE, RESULTS_FIGURES, write_results_page, write_summary

    if runs_dir is not None and tasks.is_multitask(runs_dir):  # results/<task>/ folders
        from analysis import tasks_page  # imports this module

        return tasks_page.write_page(df, reports_dir, runs_dir)
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
    pages = [write_summary(df, agg, reports_dir, images, source)]
    if published:
        pages.append(write_results_page(df, agg, reports_dir, images, runs_dir))
    # The whole matrix of paired tests, written beside each page that shows a part of it.
    csvs = [reports_dir / paired.MATRIX_CSV, fig_dir / paired.MATRIX_CSV]
    return written + [c for c in dict.fromkeys(csvs) if c.is_file()] + pages


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
