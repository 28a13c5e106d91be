"""Paired tests on per-example predictions: known answers, seeds, and which pairs are compared."""

from __future__ import annotations

import json
import math
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import dashboard, paired, results, significance, summary
from experiments.contract import record as R


def predictions(labels: list[int], predicted: list[int],
                examples: list[int] | None = None) -> pd.DataFrame:
    """A predictions file's frame, as the harness writes it (two classes)."""
    labels_, predicted_ = np.asarray(labels), np.asarray(predicted)
    p1 = np.where(predicted_ == 1, 0.8, 0.2)
    return pd.DataFrame({R.PRED_EXAMPLE: np.arange(len(labels)) if examples is None else examples,
                         R.PRED_LABEL: labels_, R.PRED_PREDICTED: predicted_,
                         f"{R.PRED_PROB_PREFIX}0": 1 - p1, f"{R.PRED_PROB_PREFIX}1": p1})


def _correct(labels: list[int], predicted_by_seed: list[list[int]]) -> pd.DataFrame:
    runs = [predictions(labels, p).set_index(R.PRED_EXAMPLE) for p in predicted_by_seed]
    found = paired.correctness(runs)
    assert found is not None
    return found


def _outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[int], ...]:
    """Labels and two prediction lists with the given agreement counts (all labels 1)."""
    labels = [1] * (both + only_a + only_b + neither)
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return labels, a, b


def test_identical_predictions_differ_by_nothing() -> None:
    labels = [0, 1, 1, 0, 1, 0, 0, 1]
    same = [0, 1, 0, 0, 1, 1, 0, 1]
    c = paired.compare(_correct(labels, [same]), _correct(labels, [same]), "lora", "full")
    assert c is not None
    assert (c.diff, c.better_a, c.better_b, c.p_value) == (0.0, 0, 0, 1.0)
    assert (c.ci_low, c.ci_high) == (0.0, 0.0) and c.n == 8 and c.test == "McNemar exact"
    assert paired.sentence(c) == "lora vs full: 0.0 pt (95% CI 0.0 to 0.0), p = 1"


def test_a_large_known_discordance_gives_the_exact_binomial_p() -> None:
    labels, a, b = _outcomes(both=50, only_a=20, only_b=2, neither=28)
    c = paired.compare(_correct(labels, [a]), _correct(labels, [b]))
    assert c is not None
    assert (c.better_a, c.better_b, c.n) == (20, 2, 100)
    assert c.acc_a == pytest.approx(0.70) and c.acc_b == pytest.approx(0.52)
    assert c.diff == pytest.approx(0.18)
    # Two-sided exact McNemar: 2 * P(X <= 2), X ~ Binomial(22, 1/2).
    by_hand = 2 * (comb(22, 0) + comb(22, 1) + comb(22, 2)) / 2**22
    assert c.p_value == pytest.approx(by_hand, rel=1e-9)
    assert by_hand == pytest.approx(1.2112e-4, rel=1e-3)
    # The bootstrap interval lies around the difference and excludes no difference.
    assert 0.0 < c.ci_low < 0.18 < c.ci_high < 0.36
    assert paired.format_p(c.p_value) == "p < 0.001"


def test_small_counts_and_balanced_disagreement() -> None:
    assert significance.mcnemar(3, 0, 10).p_value == pytest.approx(0.25)  # 2 * (1/2)^3
    assert significance.mcnemar(0, 0, 10).p_value == 1.0
    assert significance.mcnemar(5, 5, 10).p_value == pytest.approx(1.0)
    labels, a, b = _outcomes(both=10, only_a=5, only_b=5, neither=10)
    c = paired.compare(_correct(labels, [a]), _correct(labels, [b]))
    assert c.diff == 0.0 and c.p_value == pytest.approx(1.0) and c.ci_low < 0 < c.ci_high


def test_one_seed_each_interval_and_p_agree() -> None:
    """McNemar's p and its Clopper-Pearson interval invert the same tails: p < 0.05 exactly
    when the interval excludes 0, whatever the counts."""
    for better_a in range(0, 30):
        for better_b in (0, 3, 9, 17):
            c = significance.mcnemar(better_a, better_b, 200)
            assert (c.p_value < 0.05) == (c.ci_low > 0 or c.ci_high < 0), (better_a, better_b)


def test_unequal_seed_counts_compare_matched_seeds_only() -> None:
    labels = [1, 1, 1, 1, 0, 0]
    a = _correct(labels, [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]])  # seeds 0, 1
    b = _correct(labels, [[1, 0, 0, 0, 0, 0]])  # seed 0
    assert a.columns.tolist() == [0, 1] and a[0].tolist() == [1, 1, 1, 0, 1, 1]
    c = paired.compare(a, b, "a", "b")
    # Only seed 0 of a meets b's seed 0: one run each, McNemar on 2 examples a alone gets right.
    assert c.used == ((0, 0),) and c.test == "McNemar exact"
    assert (c.better_a, c.better_b) == (2, 0) and c.diff == pytest.approx(2 / 6)
    assert paired.seeds_text(c) == "matched seed 0 only (of 2, 1)"
    assert paired.match_seeds([0, 1, 2], [5]) == [(0, 5)]  # no common seed: the first ones
    assert paired.match_seeds([0, 1, 2], [3, 4, 5]) == [(0, 3), (1, 4), (2, 5)]


def test_several_seeds_each_use_the_seeds_by_examples_test() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300).tolist()
    runs = [np.where(rng.random(300) < q, labels, 1 - np.asarray(labels)).tolist()
            for q in (0.80, 0.82, 0.78, 0.70, 0.71, 0.69)]
    c = paired.compare(_correct(labels, runs[:3]), _correct(labels, runs[3:]))
    assert c.test == "seeds × examples t" and len(c.used) == 3 and c.df >= 2
    assert c.ci_low < c.diff < c.ci_high and (c.p_value < 0.05) == (c.ci_low > 0)
    assert c.diff == pytest.approx(c.acc_a - c.acc_b)


def test_seeds_of_different_splits_are_not_averaged() -> None:
    one = predictions([0, 1, 1], [0, 1, 0]).set_index(R.PRED_EXAMPLE)
    other = predictions([0, 1, 1], [0, 1, 0], examples=[0, 1, 5]).set_index(R.PRED_EXAMPLE)
    relabelled = predictions([1, 1, 1], [0, 1, 0]).set_index(R.PRED_EXAMPLE)
    assert paired.correctness([one, other]) is None
    assert paired.correctness([one, relabelled]) is None
    assert paired.compare(_correct([0, 1, 1], [[0, 1, 0]]), _correct([1, 1, 1], [[0, 1, 0]])) \
        is None


def _record(runs_dir: Path, method: str, seed: int, labels: list[int], predicted: list[int] | None,
            **config: object) -> None:
    """A minimal finished record (and its predictions file, unless predicted is None)."""
    cfg = {R.C_DATA: "rotten_tomatoes", R.C_EVAL_SIZE: 0, R.METHOD: method, R.C_SEED: seed,
           **config}
    chash = f"{method}-" + "-".join(f"{k}{v}" for k, v in sorted(config.items()))
    run_dir = runs_dir / f"{chash}-{seed}"
    run_dir.mkdir(parents=True)
    acc = None if predicted is None else float(np.mean(np.equal(labels, predicted)))
    record = {R.SCHEMA_KEY: R.SCHEMA, R.RUN_ID: run_dir.name, R.METHOD: method,
              R.CONFIG_HASH: chash, R.STATUS: R.FINISHED, R.CONFIG: cfg,
              R.METRICS: {R.TEST_ACCURACY: acc if acc is not None else 0.5}}
    (run_dir / R.RECORD_FILE).write_text(json.dumps(record))
    if predicted is not None:
        predictions(labels, predicted).to_parquet(run_dir / R.PREDICTIONS_FILE, index=False)


def test_pairs_share_a_test_split_and_show_in_summary_and_dashboard(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    labels, good, bad = _outcomes(both=40, only_a=15, only_b=1, neither=4)
    _record(runs, "lora", 0, labels, good)
    _record(runs, "lora", 1, labels, good)
    _record(runs, "full", 0, labels, bad)
    _record(runs, "head", 0, labels, None)  # no predictions file: never paired
    _record(runs, "embedding", 0, labels[:30], bad[:30], eval_size=30)  # another test split
    df = results.load_records(runs)
    found = paired.comparisons(df)
    assert [(c.a, c.b) for c in found] == [("lora", "full")]
    c = found[0]
    assert (c.better_a, c.better_b, c.seeds_a, c.seeds_b) == (15, 1, (0, 1), (0,))
    assert c.test == "McNemar exact" and c.used == ((0, 0),)  # lora's seed 0 meets full's
    assert c.p_value == pytest.approx(2 * (1 + 16) / 2**16)
    assert "warning" not in capsys.readouterr().err

    agg = results.aggregate(results.finished(df))
    out = summary.write_summary(df, agg, tmp_path / "reports").read_text()
    assert "## Paired comparisons (same test examples)" in out
    row = next(line for line in out.splitlines() if line.startswith("| lora vs full"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:2] == ["lora vs full", "+23.3"] and cells[3:6] == ["< 0.001", "< 0.001", ">"]
    assert cells[6:] == ["matched seed 0 only (of 2, 1)", "McNemar exact"]
    assert "Holm p: adjusted over the 1 comparisons" in out

    page = dashboard.build_html(df, "test")
    assert "<td>lora vs full</td><td>+23.3</td>" in page


def test_no_predictions_no_pairs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _record(runs, "lora", 0, [1, 0], None)
    _record(runs, "full", 0, [1, 0], None)
    df = results.load_records(runs)
    assert paired.comparisons(df) == []
    lines = summary.paired_markdown([], 2)
    assert "no paired test" in lines[2] and R.PREDICTIONS_FILE in lines[2]


def test_a_config_whose_labels_disagree_is_skipped_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    _record(runs, "lora", 0, [1, 1, 0, 0], [1, 1, 0, 1])
    _record(runs, "full", 0, [0, 1, 0, 0], [1, 1, 0, 1])  # same split settings, other labels
    assert paired.comparisons(results.load_records(runs)) == []
    assert "no paired test of lora and full" in capsys.readouterr().err


def test_format_p() -> None:
    assert paired.format_p(0.4123) == "p = 0.41" and paired.format_p(0.0031) == "p = 0.0031"
    assert paired.format_p(0.0004) == "p < 0.001" and paired.format_p(1.0) == "p = 1"
    assert paired.format_p(math.nan) == "p = —"


def _macro_f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    """Macro-F1 over k classes by its definition (a class never seen counts 0)."""
    f1 = []
    for c in range(k):
        tp, fp, fn = ((p == c) & (y == c)).sum(), ((p == c) & (y != c)).sum(), \
            ((p != c) & (y == c)).sum()
        f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
    return float(np.mean(f1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_f1_pseudo_values_are_the_leave_one_out_jackknife(seed: int) -> None:
    """Each pseudo-value is n F - (n-1) F(-i) with F(-i) recomputed from scratch, including
    examples whose removal empties a class (the last of its kind)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 60)
    p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 5, 60))
    y[0], p[0] = 4, 3  # the only example of class 4: its removal empties the class
    y[y == 4] = 3
    y[0] = 4
    k, n = 5, len(y)
    full = _macro_f1(y, p, k)
    keep = np.ones(n, bool)
    brute = []
    for i in range(n):
        keep[i] = False
        brute.append(n * full - (n - 1) * _macro_f1(y[keep], p[keep], k))
        keep[i] = True
    np.testing.assert_allclose(significance.macro_f1_pseudo_values(y, p, k), brute, atol=1e-9)


def test_pseudo_values_of_a_perfect_or_accuracy_like_run() -> None:
    """All right: every pseudo-value is 1 (macro-F1 1 without any one example)."""
    y = np.array([0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(significance.macro_f1_pseudo_values(y, y), 1.0)


def test_a_macro_f1_task_is_tested_in_macro_f1_where_accuracy_sees_no_difference() -> None:
    """Same accuracy, different macro-F1: a run that always says the majority class against
    one that gets the rare classes right and as many majority examples wrong. The accuracy
    test finds nothing; the macro-F1 test (jackknife) finds the difference."""
    y = np.array([0] * 240 + [1] * 30 + [2] * 30)
    majority = np.zeros_like(y)
    spread = y.copy()
    spread[:60] = 1  # 60 majority examples wrong, the 60 rare ones right: same accuracy
    seeds = range(3)

    def frames(pred: np.ndarray) -> list[pd.DataFrame]:
        flip = [pred.copy() for _ in seeds]
        for s, f in zip(seeds, flip, strict=True):  # seeds differ a little, as seeds do
            f[[100 + s, 200 + s]] = 1 - (f[[100 + s, 200 + s]] > 0)
        return [pd.DataFrame({R.PRED_LABEL: y, R.PRED_PREDICTED: f}).rename_axis(
            R.PRED_EXAMPLE) for f in flip]

    by_acc = paired.compare(paired.correctness(frames(spread)),
                            paired.correctness(frames(majority)))
    by_f1 = paired.compare(paired.correctness(frames(spread), "macro_f1"),
                           paired.correctness(frames(majority), "macro_f1"), metric="macro_f1")
    assert by_acc is not None and by_f1 is not None
    assert abs(by_acc.diff) < 1e-9 and by_acc.p_value > 0.5
    expected = _macro_f1(y, spread, 3) - _macro_f1(y, majority, 3)
    assert by_f1.diff == pytest.approx(expected, abs=0.02) and by_f1.p_value < 0.001
    assert by_f1.test == "seeds × examples t, jackknife" and by_f1.metric == "macro_f1"


def test_the_references_are_the_main_configurations_not_a_variant_with_as_many_seeds() -> None:
    """Full fine-tuning and the default LoRA are the experiments named like them (`full`,
    `lora-all`), though a variant (8-bit Adam; rsLoRA at r 8, which has LoRA's default rank and
    targets) has as many seeds and sorts first; without experiment names, the old rule holds."""
    rank, targets = col_lora = (f"{R.CONFIG}.lora.rank", f"{R.CONFIG}.lora.targets")
    agg = pd.DataFrame({
        R.CONFIG_HASH: ["f8bit", "full", "rs8", "lall", "lattn"],
        R.METHOD: ["full", "full", "lora", "lora", "lora"],
        R.EXPERIMENT: ["full-adamw8bit", "full", "lora-rslora:rank=8", "lora-all",
                       "lora-attention"],
        "n": [3, 3, 3, 3, 3], rank: [None, None, 8, 8, 8],
        targets: [None, None, "all", "all", "attention"]})
    assert paired.references(agg) == ["full", "lall"]
    assert col_lora == tuple(paired.DEFAULT_LORA)  # the fallback's columns are these
    assert paired.references(agg.drop(columns=[R.EXPERIMENT])) == ["f8bit", "rs8"]
