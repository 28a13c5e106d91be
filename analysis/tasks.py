"""A comparison over several tasks: the numbers of the cross-task RESULTS.md.

A multi-task folder (`results/`) holds one published task folder per subfolder
(`results/rotten_tomatoes-minilm/<run>/record.json`, ...); each is a task, named by its folder.

    from analysis import tasks
    found = tasks.split(tasks.load_runs(Path("results")))   # one Task per folder, by name
    columns, rows = tasks.metric_rows(found)    # methods x tasks: mean ± 95% CI of the metric
    ranks = tasks.average_ranks(tasks.metric_means(found))

A task's metric is the one its runs selected their model on (the record's `selection_metric`:
accuracy, or macro-F1; records from before the key: accuracy). A method's main configuration on
a task is the experiment named like the method (`head`, `full`; `lora-all` for LoRA, whose
target sets and rank-sweep points are variants, experiments/suites/compare-rotten_tomatoes.yaml);
the other configurations appear only in the task's own section.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis import configs, results
from analysis.configs import number
from analysis.results import ACCURACY, FIT_S, MACRO_F1, MEASURED, TRAINABLE
from analysis.style import human_bytes, human_count
from analysis.summary import pm
from experiments.contract import record as R
from experiments.contract.record import col, method_rank

TASK = "task"  # the column load_runs adds to each run: its task folder's name
# The metric columns a task shows, its own first: a macro-F1 task shows accuracy beside it.
METRIC_COLUMNS = {"accuracy": ((ACCURACY, "accuracy"),),
                  "macro_f1": ((MACRO_F1, "macro-F1"), (ACCURACY, "accuracy"))}
MEASURED_BATCH = col(R.MEMORY, R.MEASURED_BATCH)
Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass(frozen=True, eq=False)
class Task:
    """One task folder's runs, its finished configurations aggregated, and its metric."""

    name: str  # the folder's name, e.g. reuters_r8-minilm
    runs: pd.DataFrame  # every run read, whatever its status
    agg: pd.DataFrame  # results.aggregate of the finished runs
    metric: str  # one of R.SELECT_METRICS

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """(column, word) of the metrics shown for this task, its own first."""
        return METRIC_COLUMNS[self.metric]

    @property
    def word(self) -> str:
        """The task's metric as a reader says it: 'accuracy', 'macro-F1'."""
        return self.columns[0][1]


def task_dirs(runs_dir: Path) -> list[Path]:
    """The subfolders of runs_dir that hold run records (`<task>/<run>/record.json`), by name."""
    if not runs_dir.is_dir():
        return []
    return sorted(d for d in runs_dir.iterdir()
                  if d.is_dir() and any(d.glob(f"*/{R.RECORD_FILE}")))


def is_multitask(runs_dir: Path) -> bool:
    """Whether runs_dir is a folder of task folders rather than a folder of runs."""
    return (runs_dir.is_dir() and not any(runs_dir.glob(f"*/{R.RECORD_FILE}"))
            and bool(task_dirs(runs_dir)))


def load_runs(runs_dir: Path, warn: Warn = _stderr) -> pd.DataFrame:
    """Every task folder's records as one frame, each run's folder name in the TASK column."""
    frames = [results.load_records(d, warn).assign(**{TASK: d.name}) for d in task_dirs(runs_dir)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return results.load_records(runs_dir, warn)  # empty, with the usual columns
    return pd.concat(frames, ignore_index=True)


def split(df: pd.DataFrame, warn: Warn = _stderr) -> list[Task]:
    """load_runs' frame -> one Task per folder, by name (columns no run of it has dropped)."""
    if df.empty or TASK not in df:
        return []
    out = []
    for name, group in df.groupby(TASK, sort=True):
        runs = group.dropna(axis=1, how="all").reset_index(drop=True)
        fin = results.finished(runs)
        out.append(Task(str(name), runs, results.aggregate(fin),
                        results.selected_metric(fin, str(name), warn)))
    return out


def mains(found: list[Task]) -> dict[str, pd.DataFrame]:
    """task name -> its main configurations, indexed by method."""
    return {t.name: configs.main_configurations(t.agg).set_index(R.METHOD, drop=False)
            for t in found}


def methods(found: list[Task]) -> list[str]:
    """The methods with a main configuration on some task, in the methods' order."""
    names = {m for frame in mains(found).values() for m in frame.index}
    return sorted(names, key=method_rank)


def metric_means(found: list[Task]) -> pd.DataFrame:
    """methods x tasks: the mean over seeds of each task's metric for the main configuration
    (NaN where the method has none there, or it lacks the metric)."""
    main = mains(found)
    out = pd.DataFrame(index=pd.Index(methods(found), name=R.METHOD), dtype=float)
    for t in found:
        column = t.columns[0][0]
        out[t.name] = [number(main[t.name].at[m, column])
                       if m in main[t.name].index and column in main[t.name] else math.nan
                       for m in out.index]
    return out


def metric_header(task: Task, word: str) -> str:
    """A metric column's header in the methods x tasks table."""
    return f"{task.name} {word} (%)"


def metric_rows(found: list[Task]) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    """The methods x tasks table: its columns and cells (mean ± 95% CI in %, '—' if absent)."""
    main = mains(found)
    columns = ["method"]
    rows = [{"method": m} for m in methods(found)]
    for t in found:
        for column, word in t.columns:
            header = metric_header(t, word)
            columns.append(header)
            for row in rows:
                frame = main[t.name]
                row[header] = (pm(frame.loc[row["method"]], column, 100)
                               if row["method"] in frame.index else "—")
    return tuple(columns), rows


def average_ranks(means: pd.DataFrame) -> pd.DataFrame:
    """Per task each method's rank by its mean (1 = best; equal means share the average rank,
    scipy.stats.rankdata), then `average` over the tasks it was ranked on and their count
    `tasks`; rows sorted by the average, then the methods' order."""
    ranks = pd.DataFrame(index=means.index, dtype=float)
    for task in means.columns:
        scores = means[task].dropna()
        # Rounded: a mean is a float sum, and equal accuracies must tie, not differ in 1e-16.
        order = stats.rankdata(np.round(-scores.to_numpy(float), 12), method="average")
        ranks[task] = pd.Series(order, index=scores.index)
    tasks = list(means.columns)
    ranks["average"] = ranks[tasks].mean(axis=1)
    ranks["tasks"] = ranks[tasks].notna().sum(axis=1)
    key = [(math.inf if math.isnan(a) else a, method_rank(m))
           for m, a in zip(ranks.index, ranks["average"], strict=True)]
    return ranks.iloc[sorted(range(len(ranks)), key=key.__getitem__)]


def rank_rows(ranks: pd.DataFrame) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    """The average-rank table's columns and cells."""
    tasks = [c for c in ranks.columns if c not in ("average", "tasks")]
    columns = ("method", *(f"rank on {t}" for t in tasks), "average rank")
    rows = []
    for method, row in ranks.iterrows():
        cells = {"method": str(method)}
        cells.update({f"rank on {t}": "—" if math.isnan(row[t]) else f"{row[t]:g}"
                      for t in tasks})
        average = "—" if math.isnan(row["average"]) else f"{row['average']:.2f}"
        if 0 < row["tasks"] < len(tasks):
            average += f" (over {int(row['tasks'])} of {len(tasks)} tasks)"
        cells["average rank"] = average
        rows.append(cells)
    return columns, rows


COST_COLUMNS = ("method", "task", "experiment", "n", "trainable params", "measured peak memory",
                "measured batch", "time to fit (s)")
SHAPES = col(R.MEMORY, R.MEASURED_BATCH_SHAPES)
# What the second size of a measured batch counts, by the input it came from: token methods
# measure rows x tokens; the head, which trains on cached backbone features, rows x feature width.
_BATCH_UNITS = {R.BATCH_TOKENS: "tokens", R.BATCH_FEATURES: "features"}


def _batch(row: pd.Series) -> str:
    """The measured batch: '32 × 128 tokens', '32 × 384 features'; '—' for a record without it."""
    value = row.get(MEASURED_BATCH)
    if not (isinstance(value, list | tuple | np.ndarray) and len(value) == 2):
        return "—"
    size = f"{configs.format_value(value[0])} × {configs.format_value(value[1])}"
    units = [unit for name, unit in _BATCH_UNITS.items()
             if isinstance(row.get(f"{SHAPES}.{name}"), list | tuple | np.ndarray)]
    return f"{size} {units[0]}" if units else size


def cost_rows(found: list[Task]) -> list[dict[str, str]]:
    """Per method and task (main configuration): trainable parameters, the measured step peak
    on the canonical batch (mean over seeds) and time to fit (mean ± 95% CI)."""
    main = mains(found)
    rows = []
    for method in methods(found):
        for t in found:
            if method not in main[t.name].index:
                continue
            row = main[t.name].loc[method]
            rows.append({"method": method, "task": t.name, "experiment": str(row[R.EXPERIMENT]),
                         "n": str(int(row["n"])),
                         "trainable params": human_count(row.get(TRAINABLE)),
                         "measured peak memory": human_bytes(row.get(MEASURED)),
                         "measured batch": _batch(row),
                         "time to fit (s)": pm(row, FIT_S, digits=2)})
    return rows
