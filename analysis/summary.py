"""The comparison table: one row per configuration, as Markdown (reports/summary.md) or cells."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import configs, orderings, paired, results
from analysis.configs import number
from analysis.style import human_bytes, human_count
from experiments.contract import record as R
from experiments.contract.record import method_rank

COLUMNS = ("method", "n", "test accuracy (%)", "trainable params", "% of total",
           "predicted memory", "measured peak memory", "time to fit (s)", "throughput (ex/s)")


def pm(row: pd.Series, column: str, scale: float = 1.0, digits: int = 1) -> str:
    """'mean ± CI' (just the mean for one seed, '—' when absent)."""
    mean, half = number(row.get(column)), number(row.get(f"{column}.ci95"))
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
        trainable, total = number(row.get(results.TRAINABLE)), number(row.get(results.TOTAL))
        rows.append({
            "method": str(row["label"]), "n": str(int(row["n"])),
            "test accuracy (%)": pm(row, results.ACCURACY, 100),
            "test F1 (%)": pm(row, results.F1, 100),
            "macro-F1 (%)": pm(row, results.MACRO_F1, 100),
            "test MCC": pm(row, results.MCC, digits=3),
            "trainable params": human_count(trainable),
            "% of total": _pct(trainable, total),
            "predicted memory": human_bytes(row.get(results.PREDICTED)),
            # The step's exact peak only: an older record's RSS growth is not a peak ('—').
            "measured peak memory": human_bytes(row.get(results.MEASURED)),
            "time to fit (s)": pm(row, results.FIT_S, digits=2),
            "throughput (ex/s)": pm(row, results.SAMPLES_PER_S, digits=0),
        })
    return rows


def _columns(rows: list[dict[str, str]]) -> tuple[str, ...]:
    """The table's columns: F1, macro-F1 and MCC after accuracy where some run recorded them
    (older records, like the published comparison's, did not)."""
    extra = [c for c in ("test F1 (%)", "macro-F1 (%)", "test MCC")
             if any(r.get(c, "—") != "—" for r in rows)]
    at = COLUMNS.index("test accuracy (%)") + 1
    return (*COLUMNS[:at], *extra, *COLUMNS[at:])


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, the first column left)."""
    align = ["---" if i == 0 else "---:" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def status_counts(df: pd.DataFrame) -> str:
    """'4 finished, 1 failed' for the runs in df."""
    if df.empty or R.STATUS not in df:
        return "no runs"
    counts = df[R.STATUS].fillna("unknown").value_counts()
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _distinct(df: pd.DataFrame, column: str) -> list[str]:
    return [str(v) for v in df[column].dropna().unique()] if column in df else []


def notes(df: pd.DataFrame) -> list[str]:
    """How to read the numbers: the interval, how memory was measured and predicted, smoke runs."""
    fin = results.finished(df)
    out = ["Accuracy and time are the mean over seeds of one configuration (runs sharing a "
           "config_hash) ± the 95% t-distribution confidence interval half-width; "
           "one seed has no interval. Time to fit is the training loop plus any one-off "
           "preparation (the head method's cached backbone features); throughput is the loop's."]
    for how in _distinct(fin, results.MEASURED_METHOD):
        out.append(f"Measured peak memory: {how}.")
    measured = fin[results.MEASURED].notna() if results.MEASURED in fin else None
    if measured is None or not measured.all():
        out.append("Measured peak memory '—': the record predates the measured training step. "
                   "Such records hold only a process-level figure (the CPU resident-set growth, "
                   "approximate, or CUDA's max allocated), which is not the step's peak and is "
                   "shown only in the dashboard's run table.")
    if results.PREDICTED_FORMULA in fin:
        formulas = fin.dropna(subset=[results.PREDICTED_FORMULA])
        parts = [f"{formula} ({', '.join(sorted(group[R.METHOD].unique(), key=method_rank))})"
                 for formula, group in formulas.groupby(results.PREDICTED_FORMULA)]
        out.append("Predicted memory (N parameters, M trainable): " + "; ".join(parts) + ".")
    else:
        out.append("Predicted memory: not in these records (they predate the memory ledger).")
    smoke = [configs.is_smoke(row) for _, row in fin.iterrows()]
    if smoke and all(smoke):
        out.append("Every configuration here is a smoke run (train_size, eval_size or max_steps "
                   "set, other than the task's budget): the numbers show the pipeline works, not "
                   "what the methods reach.")
    elif any(smoke):
        out.append("(smoke): trained or tested on a subsample, or stopped early (train_size, "
                   "eval_size or max_steps set, other than the task's budget); not comparable "
                   "with full runs.")
    return out


def paired_markdown(shown: list[paired.Comparison], n_configs: int,
                    matrix: list[paired.Comparison] | None = None,
                    csv_name: str = paired.MATRIX_CSV) -> list[str]:
    """The 'Paired comparisons' section's lines: a table, or why there is none."""
    lines = ["## Paired comparisons (same test examples)", ""]
    if shown:
        lines += [markdown_table(paired.table_rows(shown), paired.TABLE_COLUMNS), "",
                  f"- {paired.note(shown, matrix, csv_name)}"]
    elif n_configs > 1:
        lines.append(f"No pair of configurations has per-example predictions "
                     f"({R.PREDICTIONS_FILE}) on the same test split, so no paired test.")
    else:
        return []
    return [*lines, ""]


def duplicate_notes(df: pd.DataFrame) -> list[str]:
    """One note per run left out because a newer run has its config_hash and seed."""
    dup = results.duplicates(df)
    return [f"Duplicate left out: {row[R.RUN_ID]} has the config_hash and seed of "
            f"{row[results.DUPLICATE_OF]}, the newer finished run, which is the one counted."
            for _, row in dup.iterrows()]


def body(df: pd.DataFrame, agg: pd.DataFrame, csv_path: Path, csv_ref: str,
          orderings_section: bool = False) -> list[str]:
    """What summary.md and RESULTS.md share: the table, how to read it, the paired tests (the
    default family; every pair to csv_path), and for RESULTS.md the orderings they support."""
    fin = results.finished(df)
    matrix = paired.comparisons(fin, agg)
    shown = paired.default_family(matrix, agg)
    paired.write_matrix_csv(matrix, csv_path)
    agreements = orderings.seed_agreements(fin, agg)
    extra = [orderings.agreement_line(a) for a in agreements] if not orderings_section else []
    rows = summary_rows(agg)
    lines = [markdown_table(rows, _columns(rows)), "",
             *[f"- {n}" for n in [*notes(df), *extra, *duplicate_notes(df)]], "",
             *paired_markdown(shown, len(agg), matrix, csv_ref)]
    if orderings_section and shown:
        lines += orderings.section(shown, agreements)
    return lines


def write_summary(df: pd.DataFrame, agg: pd.DataFrame, reports_dir: Path,
                  images: list[str] | None = None, source: str = "") -> Path:
    """Write reports_dir/summary.md: the table, how to read it, paired tests, the figures."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# tunebench: comparison summary", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
             f"{source or 'run records'}: {len(df)} runs ({status_counts(df)}); "
             f"{len(agg)} configurations from the finished ones.", "",
             *body(df, agg, reports_dir / paired.MATRIX_CSV, paired.MATRIX_CSV)]
    if images:
        lines += ["## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in images]
    path = reports_dir / "summary.md"
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    return path


FINDINGS_FILE = "FINDINGS.md"  # the prose a person writes beside published run records
RESULTS_FIGURES = "results"  # reports/<this>/: a published comparison's figures


def _values(df: pd.DataFrame, column: str) -> str:
    return ", ".join(sorted(_distinct(df, column))) or "—"


def provenance(fin: pd.DataFrame) -> list[str]:
    """Where finished runs came from: task, backbone, precision, machine, torch, commit."""
    col = R.col
    return [f"- Task: {_values(fin, col(R.CONFIG, R.C_DATA))}; backbone: "
            f"{_values(fin, col(R.CONFIG, R.C_MODEL))}; precision: {_values(fin, R.PRECISION)}.",
            f"- Machine: {_values(fin, col(R.ENV, R.DEVICE_NAME))}; torch "
            f"{_values(fin, col(R.ENV, R.TORCH_VERSION))}; code at commit "
            f"{_values(fin, col(R.ENV, R.GIT_COMMIT))}."]


def write_results_page(df: pd.DataFrame, agg: pd.DataFrame, reports_dir: Path,
                       images: list[str], runs_dir: Path) -> Path:
    """Write reports_dir/RESULTS.md for a published comparison: provenance, the table, paired
    tests, the figures and the findings (runs_dir/FINDINGS.md, verbatim: the numbers are
    regenerated from the records, the prose is the person's, and the page says whose is which)."""
    fin = results.finished(df)
    lines = ["# Results", "",
             f"Generated by `make plots RUNS_DIR={runs_dir}` on "
             f"{time.strftime('%Y-%m-%d', time.gmtime())} from the {len(fin)} finished run "
             f"records in `{runs_dir}/` ({len(agg)} configurations).", "",
             *provenance(fin), "",
             *body(df, agg, reports_dir / RESULTS_FIGURES / paired.MATRIX_CSV,
                   f"{RESULTS_FIGURES}/{paired.MATRIX_CSV}", True)]
    findings = runs_dir / FINDINGS_FILE
    if findings.is_file():
        lines += ["## Findings", "", f"(Written by hand in `{runs_dir}/{FINDINGS_FILE}` from "
                  "the numbers above.)", "", findings.read_text().strip(), ""]
    lines += ["## Figures", "", *[f"![{Path(name).stem}]({name})" for name in images]]
    path = reports_dir / "RESULTS.md"
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    return path
