"""The cross-task numbers: each task's metric, each method's main configuration, the methods x
tasks table, average ranks and costs (analysis.tasks), on three synthetic task folders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import configs, results, tasks
from experiments.contract import record as R


@pytest.fixture
def found(three_tasks: Path) -> list[tasks.Task]:
    return tasks.split(tasks.load_runs(three_tasks))


def test_a_folder_of_task_folders_is_read_as_tasks(three_tasks: Path) -> None:
    # A bug that read only runs_dir/*/record.json would find no runs at all in results/.
    assert tasks.is_multitask(three_tasks)
    assert not tasks.is_multitask(three_tasks / "alpha-minilm")  # a task folder is one task
    assert not tasks.is_multitask(three_tasks / "missing")
    df = tasks.load_runs(three_tasks)
    assert len(df) == 30 and set(df[tasks.TASK]) == {"alpha-minilm", "beta-minilm",
                                                     "gamma-minilm"}


def test_each_task_is_compared_by_the_metric_its_runs_selected_on(
        found: list[tasks.Task]) -> None:
    # alpha's records predate selection_metric (accuracy); beta's say macro_f1.
    assert [(t.name, t.metric) for t in found] == [
        ("alpha-minilm", "accuracy"), ("beta-minilm", "macro_f1"), ("gamma-minilm", "accuracy")]
    # No column of another task leaks in: alpha has no macro-F1 and no other data set.
    alpha = found[0]
    assert results.MACRO_F1 not in alpha.runs
    assert set(alpha.runs[R.col(R.CONFIG, R.C_DATA)]) == {"rotten_tomatoes"}


def test_records_that_disagree_on_the_metric_are_compared_by_the_most_common() -> None:
    said: list[str] = []
    fin = pd.DataFrame({R.SELECTION_METRIC: ["macro_f1", "macro_f1", None]})
    assert results.selected_metric(fin, "t", said.append) == "macro_f1"
    assert said and "of task t selected on different metrics (accuracy (1), macro_f1 (2))" in \
        said[0]
    assert results.selected_metric(pd.DataFrame({R.RUN_ID: ["a"]})) == "accuracy"  # no key: old


def test_the_main_configuration_is_the_experiment_named_like_the_method(
        found: list[tasks.Task]) -> None:
    # lora-attention sorts before lora-all (fewer trainable parameters): taking a method's
    # first configuration would show the variant's 78.0 as LoRA's number.
    alpha = configs.main_configurations(found[0].agg)
    assert list(alpha[R.METHOD]) == ["head", "lora", "full"]
    assert list(alpha[R.EXPERIMENT]) == ["head", "lora-all", "full"]
    variant_only = found[0].agg[found[0].agg[R.EXPERIMENT] == "lora-attention"]
    assert configs.main_configurations(variant_only).empty  # a variant is never the main one
    assert configs.main_configurations(found[0].agg.drop(columns=[R.EXPERIMENT])).empty


def test_the_methods_by_tasks_table_holds_hand_computed_means(
        found: list[tasks.Task]) -> None:
    """Means and 95% t-intervals over 3 seeds: half-width t(0.975, 2) s / sqrt(3) =
    4.3027 s / 1.7321; e.g. head on beta, macro-F1 0.50, 0.52, 0.57: mean 53.0, s = 3.606,
    ± 8.96. A macro_f1 task shows macro-F1 and accuracy, an accuracy task accuracy alone."""
    columns, rows = tasks.metric_rows(found)
    assert columns == ("method", "alpha-minilm accuracy (%)", "beta-minilm macro-F1 (%)",
                       "beta-minilm accuracy (%)", "gamma-minilm accuracy (%)")
    table = {r["method"]: [r[c] for c in columns[1:]] for r in rows}
    assert list(table) == ["head", "lora", "full"]
    assert table["head"] == ["72.0 ± 5.0", "53.0 ± 9.0", "62.0 ± 5.0", "85.0 ± 0.0"]
    assert table["lora"] == ["82.0 ± 5.0", "71.0 ± 2.5", "75.0 ± 0.0", "85.0 ± 2.5"]
    assert table["full"] == ["92.0 ± 5.0", "67.0 ± 6.6", "80.0 ± 0.0", "86.0 ± 0.0"]
    means = tasks.metric_means(found)
    assert means.loc["lora"].tolist() == pytest.approx([0.82, 0.71, 0.85])  # beta: macro-F1
    assert means.loc["full", "beta-minilm"] == pytest.approx(0.67)


def test_average_ranks_a_hand_worked_example() -> None:
    """t1: full .88 > lora .82 > bitfit .75 > head .72 -> 1, 2, 3, 4. t2 (bitfit absent):
    lora .71 > full .67 > head .53 -> 1, 2, 3. t3: head .2 = lora (0.1 + 0.2 + 0.3) / 3, a float
    0.20000000000000004, tie at 1.5 each, full .1 -> 3. Averages: lora 4.5/3 = 1.5, full 6/3 =
    2, head 8.5/3 = 2.83, bitfit 3 over its one task."""
    means = pd.DataFrame({"t1": [0.72, 0.82, 0.88, 0.75],
                          "t2": [0.53, 0.71, 0.67, math.nan],
                          "t3": [0.2, float(np.mean([0.1, 0.2, 0.3])), 0.1, math.nan]},
                         index=["head", "lora", "full", "bitfit"])
    ranks = tasks.average_ranks(means)
    assert list(ranks.index) == ["lora", "full", "head", "bitfit"]
    assert ranks["t1"].tolist() == [2, 1, 4, 3]
    assert ranks.loc[["lora", "full", "head"], "t2"].tolist() == [1, 2, 3]
    assert math.isnan(ranks.at["bitfit", "t2"])
    assert ranks.loc[["lora", "full", "head"], "t3"].tolist() == [1.5, 3, 1.5]
    assert ranks["average"].tolist() == pytest.approx([1.5, 2.0, 8.5 / 3, 3.0])
    assert ranks["tasks"].tolist() == [3, 3, 3, 1]
    columns, rows = tasks.rank_rows(ranks)
    assert columns == ("method", "rank on t1", "rank on t2", "rank on t3", "average rank")
    assert rows[0] == {"method": "lora", "rank on t1": "2", "rank on t2": "1",
                       "rank on t3": "1.5", "average rank": "1.50"}
    assert rows[3]["rank on t2"] == "—"
    assert rows[3]["average rank"] == "3.00 (over 1 of 3 tasks)"


def test_ranks_on_a_macro_f1_task_follow_macro_f1(found: list[tasks.Task]) -> None:
    # On beta full has the best accuracy (80.0) but LoRA the best macro-F1 (71.0): ranked by
    # accuracy, full would be 1 there. gamma: head 85.0 and lora 85.0 tie at 2.5, full 1.
    ranks = tasks.average_ranks(tasks.metric_means(found))
    assert ranks.loc["lora"].tolist()[:3] == [2, 1, 2.5]
    assert ranks.loc["full"].tolist()[:3] == [1, 2, 1]
    assert ranks["average"].to_dict() == pytest.approx(
        {"full": 4 / 3, "lora": 5.5 / 3, "head": 8.5 / 3})
    assert list(ranks.index) == ["full", "lora", "head"]


def test_costs_per_method_and_task(found: list[tasks.Task]) -> None:
    rows = tasks.cost_rows(found)
    assert [(r["method"], r["task"]) for r in rows][:3] == [
        ("head", "alpha-minilm"), ("head", "beta-minilm"), ("head", "gamma-minilm")]
    lora = next(r for r in rows if r["method"] == "lora" and r["task"] == "alpha-minilm")
    # Fit times 10, 11, 12 s: 11.00 ± 4.3027 x 1 / sqrt(3) = 2.48; lora-all's 3,000
    # parameters, not lora-attention's 1,000; its measured step on the 16 x 64 batch.
    assert lora == {"method": "lora", "task": "alpha-minilm", "experiment": "lora-all",
                    "n": "3", "trainable params": "3k",
                    "measured peak memory": lora["measured peak memory"],
                    "measured batch": "16 × 64 tokens",
                    "time to fit (s)": "11.00 ± 2.48"}
    assert lora["measured peak memory"].endswith("MiB")
    head = next(r for r in rows if r["method"] == "head" and r["task"] == "alpha-minilm")
    assert head["measured batch"] == "16 × 384 features"
