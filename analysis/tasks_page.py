"""RESULTS.md for a comparison over several tasks (`make plots RUNS_DIR=results`).

The page: the methods x tasks table (analysis.tasks), each method's average rank, its costs per
task; then one section per task (its own table, the Holm-corrected paired tests against full
fine-tuning and the default LoRA, the orderings they support, its figures in
reports/results/<task>/); then the hand-written results/FINDINGS.md, verbatim. Everything but
the date line is the same bytes on a rerun.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from analysis import configs, orderings, paired, results, tasks
from analysis.plots import PLOTS
from analysis.results import ACCURACY
from analysis.style import save_figure
from analysis.summary import (
    FINDINGS_FILE,
    RESULTS_FIGURES,
    body,
    markdown_table,
    provenance,
)
from analysis.tasks import Task
from experiments.contract import record as R
from experiments.contract.record import col

# The figures whose y axis is the task's metric (a macro-F1 task's are named macro_f1_vs_...).
SCATTER = ("accuracy_vs_params", "accuracy_vs_memory", "accuracy_vs_time")
PAGE = "RESULTS.md"
Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _quiet(_: str) -> None:
    return None


def figure_name(name: str, task: Task) -> str:
    """A figure's file name on a task: the scatter figures say the task's metric."""
    if name in SCATTER and task.metric != results.DEFAULT_METRIC:
        return name.replace("accuracy", task.metric, 1)
    return name


def _draw(name: str, task: Task) -> Figure | None:
    y = task.columns[0][0]
    if name in SCATTER and y != ACCURACY:
        return PLOTS[name](task.agg, y=y)  # type: ignore[call-arg]  # the scatter figures take y
    if name == "val_curves":
        return PLOTS[name](task.agg, metric=task.metric)  # type: ignore[call-arg]
    return PLOTS[name](task.agg)


def task_figures(task: Task, fig_dir: Path) -> list[Path]:
    """Every figure the task's runs support, PNG and SVG, in fig_dir; stale ones removed."""
    written: list[Path] = []
    for name in PLOTS:
        fig = _draw(name, task)
        stale = {name, figure_name(name, task)}
        if fig is not None:
            written += save_figure(fig, fig_dir, figure_name(name, task))
            plt.close(fig)
            stale.discard(figure_name(name, task))
        for old in stale:
            for fmt in ("png", "svg"):
                (fig_dir / f"{old}.{fmt}").unlink(missing_ok=True)
    return written


def _demote(lines: list[str]) -> list[str]:
    """A page's sections one heading level down, to sit inside a task's section."""
    return [f"#{line}" if line.startswith("#") else line for line in lines]


def task_section(task: Task, reports_dir: Path, images: list[str]) -> list[str]:
    """One task's section: provenance, its table, paired tests and orderings, its figures."""
    fin = results.finished(task.runs)
    fig_dir = f"{RESULTS_FIGURES}/{task.name}"
    lines = [f"## Task: {task.name}", "",
             f"{len(fin)} finished runs in `{task.name}/`, {len(task.agg)} configurations; "
             f"compared by test {task.word}.", "", *provenance(fin), ""]
    if task.metric != results.DEFAULT_METRIC:
        lines += [f"The paired tests below compare {task.word}, through each test example's "
                  "jackknife pseudo-value (notes under the table); the table gives accuracy "
                  "beside it.", ""]
    lines += _demote(body(task.runs, task.agg, reports_dir / fig_dir / paired.MATRIX_CSV,
                          f"{fig_dir}/{paired.MATRIX_CSV}", True))
    lines += ["### Figures", "", *[f"![{Path(name).stem}]({name})" for name in images], ""]
    return lines


def overview(found: list[Task]) -> list[str]:
    """The cross-task sections: the methods x tasks table, average ranks, costs."""
    columns, rows = tasks.metric_rows(found)
    rank_columns, ranks = tasks.rank_rows(tasks.average_ranks(tasks.metric_means(found)))
    return [
        "## Methods across tasks", "", markdown_table(rows, columns), "",
        "- Each method's main configuration on each task: the experiment named like the method "
        "(`lora-all` for LoRA, `dora-all` for DoRA); target sets, ranks and other variants "
        "appear only in the task's own section. Mean over seeds ± the 95% t-interval "
        "half-width, in %; one seed has no interval. A task compared by macro-F1 (the metric "
        "its runs selected on) shows accuracy beside it.", "",
        "## Average rank", "", markdown_table(ranks, rank_columns), "",
        "- Within a task, the main configurations are ranked by the mean of the task's metric "
        "(1 = best; equal means share the average rank); the average is over the tasks a "
        "method ran on. A rank orders means, not tested differences: which differences the "
        "data support is in each task's paired tests.", "",
        "## Cost per task", "", markdown_table(tasks.cost_rows(found), tasks.COST_COLUMNS), "",
        "- Measured peak memory: the exact peak of live tensors over one training step taken on "
        "the canonical batch (the record's memory section: rows × the training split's "
        "95th-percentile length in tokens; the head, which trains on cached backbone features, "
        "the same rows × the feature width), mean over seeds; '—' for records from before that "
        "measurement. Time to fit: preparation plus the training loop, mean ± 95% CI.", ""]


def _names(task: Task) -> list[str]:
    """What a FINDINGS heading may call a task: its folder, and its data set's name."""
    data = results.finished(task.runs).get(col(R.CONFIG, R.C_DATA))
    return [task.name, *([] if data is None else sorted(set(data.dropna().astype(str))))]


def supported_by(task: Task) -> set[tuple[str, str]]:
    """(better, worse) pairs the task's corrected paired tests support, by configuration label
    and, for a main configuration, also by its method's name ('full > lora' for lora-all)."""
    family = paired.default_family(
        paired.comparisons(results.finished(task.runs), task.agg, _quiet), task.agg)
    main = configs.main_configurations(task.agg)
    method = {str(r["label"]): str(r[R.METHOD]) for _, r in main.iterrows()}
    return {(x, y) for a, b in orderings.supported(family)
            for x in {a, method.get(a, a)} for y in {b, method.get(b, b)}}


def findings_problems(found: list[Task], text: str) -> list[str]:
    """The orderings `text` (a multi-task FINDINGS) claims that no task's tests support (a
    claim under a task's heading: that task's), as 'A > B (on task)'; [] when none."""
    labels = {str(x) for t in found for x in (*t.agg.get("label", []), *tasks.methods([t]))}
    return orderings.unsupported_claims(text, {t.name: supported_by(t) for t in found}, labels,
                                        {t.name: _names(t) for t in found})


def _findings(found: list[Task], runs_dir: Path, warn: Warn) -> list[str]:
    """The Findings section (results/FINDINGS.md, verbatim), after checking its orderings."""
    path = runs_dir / FINDINGS_FILE
    if not path.is_file():
        return []
    text = path.read_text().strip()
    problems = findings_problems(found, text)
    if problems:
        warn(f"warning: {path} claims orderings the paired tests do not support: "
             + "; ".join(problems))
    return ["## Findings", "", f"(Written by hand in `{runs_dir}/{FINDINGS_FILE}` from the "
            "numbers above.)", "", text, ""]


def _header(found: list[Task], runs_dir: Path) -> list[str]:
    n = sum(len(results.finished(t.runs)) for t in found)
    lines = ["# Results", "",
             f"Generated by `make plots RUNS_DIR={runs_dir}` on "
             f"{time.strftime('%Y-%m-%d', time.gmtime())} from the {n} finished run records in "
             f"the {len(found)} task folder{'s' if len(found) != 1 else ''} of `{runs_dir}/`.", ""]
    lines += [f"- `{t.name}/`: {', '.join(_names(t)[1:]) or 'data unknown'}; compared by test "
              f"{t.word}; {len(t.agg)} configurations; {sizes(t)}." for t in found]
    return [*lines, ""]


def _count(fin: pd.DataFrame, column: str) -> str:
    """A count column's value over the runs ('2,000', or '1,000-2,000' where runs differ)."""
    values = sorted({int(v) for v in fin.get(column, pd.Series(dtype=float)).dropna()})
    if not values:
        return "?"
    return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}-{values[-1]:,}"


def sizes(task: Task) -> str:
    """How much of each split the task's runs used, saying where that was a subsample, and the
    token budget: 'train 2,000 of 4,877 rows (a subsample), validation 542, test 2,176;
    max_length 128'."""
    fin = results.finished(task.runs)
    parts = []
    for split in ("train", "validation", "test"):
        used = _count(fin, col(R.DATA, R.D_ROWS.format(split)))
        whole = _count(fin, col(R.DATA, f"{R.D_SPLIT_ROWS}.{split}"))
        parts.append(f"{split} {used}" + ("" if whole in ("?", used) else
                                          f" of {whole} rows (a subsample)"))
    return ", ".join(parts) + f"; max_length {_count(fin, col(R.CONFIG, R.C_MAX_LENGTH))}"


def _clear_single_task(fig_root: Path) -> None:
    """Remove a single-task page's figures from reports/results/: this page does not show them."""
    for name in PLOTS:
        for fmt in ("png", "svg"):
            (fig_root / f"{name}.{fmt}").unlink(missing_ok=True)
    (fig_root / paired.MATRIX_CSV).unlink(missing_ok=True)


def write_page(df: pd.DataFrame, reports_dir: Path, runs_dir: Path,
               warn: Warn = _stderr) -> list[Path]:
    """Write reports_dir/RESULTS.md and each task's figures and paired CSV in
    reports_dir/results/<task>/ for the runs of `tasks.load_runs(runs_dir)`; returns the files."""
    found = tasks.split(df, warn)
    reports_dir.mkdir(parents=True, exist_ok=True)
    fig_root = reports_dir / RESULTS_FIGURES
    _clear_single_task(fig_root)
    written: list[Path] = []
    sections: list[str] = []
    for task in found:
        figures = task_figures(task, fig_root / task.name)
        images = [p.relative_to(reports_dir).as_posix() for p in figures if p.suffix == ".png"]
        sections += task_section(task, reports_dir, images)
        written += figures
        csv = fig_root / task.name / paired.MATRIX_CSV
        written += [csv] if csv.is_file() else []
    lines = [*_header(found, runs_dir), *overview(found), *sections,
             *_findings(found, runs_dir, warn)]
    page = reports_dir / PAGE
    page.write_text("\n".join(lines).rstrip("\n") + "\n")
    return [*written, page]
