"""The embedded tasks' protocol: each task's metric and the budget its comparison runs at.

A task's metric is what model selection within a run maximises (`select_metric=auto`) and what
the tuner's objective is: accuracy for balanced binary sentiment, macro-F1 for the topic tasks,
whose classes are imbalanced (Reuters R8) or many (20 Newsgroups), so a method that ignores the
small classes cannot win on the large ones.

A task's budget is the config the tuner and the published suites run it at (`make tune` applies
it unless ARGS say otherwise; the suite files repeat it), and analysis reads it to tell a run at
the task's own size from a smoke run. `max_length` comes from the task's token-length
distribution on MiniLM's tokenizer over the train split (the percentile it covers is in `why`,
measured by `python -m experiments.inputs.tasks`); `train_size` subsamples the train split where
the whole split would not fit the comparison's machine budget (about 8 hours of a 2-core CPU for
tuning and runs on three tasks). Validation and test are never subsampled here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACCURACY, MACRO_F1 = "accuracy", "macro_f1"


@dataclass(frozen=True)
class Task:
    """One embedded task: its metric, its budget and why the budget is what it is."""

    metric: str
    budget: dict[str, int] = field(default_factory=dict)
    why: str = ""


TASKS: dict[str, Task] = {
    "rotten_tomatoes": Task(ACCURACY, {"max_length": 64}, (
        "max_length 64 keeps 99.9% of train texts whole (median 26, p99 55 tokens); the whole "
        "train split (10,201 rows)")),
    "reuters_r8": Task(MACRO_F1, {"max_length": 128, "train_size": 2000}, (
        "max_length 128 keeps 73.0% of train texts whole (median 83, p90 276 tokens): a news "
        "story's topic is in its headline and lead. 2,000 of the 4,877 train rows (a fixed "
        "shuffle), so that each run costs about what a Rotten Tomatoes run does (2,000 x 123 "
        "mean tokens against 10,201 x 27)")),
    "newsgroups20": Task(MACRO_F1, {"max_length": 128, "train_size": 2000}, (
        "max_length 128 keeps 31.4% of train posts whole (median 188, p90 534 tokens): the "
        "subject line and the opening of a post, not all of it. 2,000 of the 10,139 train rows "
        "(a fixed shuffle, about 100 per class), for the same reason as reuters_r8")),
}


def task_metric(data: str, select_metric: str = "auto") -> str:
    """The metric a run on `data` selects by: `select_metric`, or when auto the task's own
    (accuracy for data that is no embedded task)."""
    if select_metric != "auto":
        return select_metric
    task = TASKS.get(data)
    return task.metric if task is not None else ACCURACY


def task_budget(data: str) -> dict[str, int]:
    """The config keys the task's comparison runs at (empty for data that is no embedded task)."""
    task = TASKS.get(data)
    return dict(task.budget) if task is not None else {}
