"""The comparison table: one row per configuration, as Markdown (reports/summary.md) or cells."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import results
from analysis.style import human_bytes, human_count, method_rank

COLUMNS = ("method", "n", "test accuracy (%)", "trainable params", "% of total",
           "predicted memory", "measured peak memory", "time to fit (s)", "throughput (ex/s)")


def _num(row: pd.Series, col: str) -> float:
    value = row.get(col)
    try:
        return float(value) if value is not None and not pd.isna(value) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _pm(row: pd.Series, col: str, scale: float = 1.0, digits: int = 1) -> str:
    """'mean ± CI' (just the mean for one seed, '—' when absent)."""
    mean, half = _num(row, col), _num(row, f"{col}.ci95")
    if math.isnan(mean):
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {scale * half:.{digits}f}"


def _pct(part: float, total: float) -> str:
    if math.isnan(part) or math.isnan(total) or total <= 0:
        return "—"
    pct = 100 * part / total
    # Enough digits that a 66-parameter head on a 22M backbone does not read as 0.00%.
    return f"{pct:.3g}%" if pct < 10 else f"{pct:.1f}%"


def summary_rows(agg: pd.DataFrame) -> list[dict[str, str]]:
    """The table's cells, formatted for reading (one dict per configuration)."""
    rows = []
    for _, row in agg.iterrows():
        trainable, total = _num(row, "params.trainable"), _num(row, "params.total")
        rows.append({
            "method": str(row["label"]), "n": str(int(row["n"])),
            "test accuracy (%)": _pm(row, results.ACCURACY, 100),
            "trainable params": human_count(trainable) if not math.isnan(trainable) else "—",
            "% of total": _pct(trainable, total),
            "predicted memory": human_bytes(_num(row, "memory.predicted_bytes")),
            "measured peak memory": human_bytes(_num(row, results.MEASURED)),
            "time to fit (s)": _pm(row, "time.fit_s", digits=2),
            "throughput (ex/s)": _pm(row, "time.train_samples_per_s", digits=0),
        })
    return rows


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    align = ["---" if c == "method" else "---:" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def status_counts(df: pd.DataFrame) -> str:
    """'4 finished, 1 failed' for the runs in df."""
    if df.empty or "status" not in df:
        return "no runs"
    counts = df["status"].fillna("unknown").value_counts()
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def notes(df: pd.DataFrame) -> list[str]:
    """How to read the numbers: the interval, and how memory was measured and predicted."""
    out = ["Accuracy and time are the mean over seeds of one configuration (runs sharing a "
           "config_hash) ± the 95% t-distribution confidence interval half-width; "
           "one seed has no interval. Time to fit is the training loop plus any one-off "
           "preparation (the head method's cached backbone features); throughput is the loop's."]
    if "memory.peak_method" in df:
        for method in df["memory.peak_method"].dropna().unique():
            out.append(f"Measured peak memory: {method}.")
    if "memory.predicted_formula" in df:
        formulas = df.dropna(subset=["memory.predicted_formula"])
        parts = [f"{formula} ({', '.join(sorted(group['method'].unique(), key=method_rank))})"
                 for formula, group in formulas.groupby("memory.predicted_formula")]
        out.append("Predicted memory (N parameters, M trainable): " + "; ".join(parts) + ".")
    else:
        out.append("Predicted memory: not in these records (they predate the memory ledger).")
    return out


def write_summary(df: pd.DataFrame, agg: pd.DataFrame, reports_dir: Path,
                  images: list[str] | None = None, source: str = "") -> Path:
    """Write reports_dir/summary.md: the table, how to read it, and the figures."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# tunebench: comparison summary", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
             f"{source or 'run records'}: {len(df)} runs ({status_counts(df)}); "
             f"{len(agg)} configurations from the finished ones.", "",
             markdown_table(summary_rows(agg)), ""]
    lines += [f"- {n}" for n in notes(df)]
    if images:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in images]
    path = reports_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
