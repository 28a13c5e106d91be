"""The tests behind the paired table: calibrated under a true null, Holm, and their edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import paired, significance
from experiments.contract import record as R

N_EXAMPLES, SEEDS, PAIRS = 1275, 3, 40


def _seed_predictions(rng: np.random.Generator, score: np.ndarray, labels: np.ndarray,
                      seeds: int) -> dict[int, pd.DataFrame]:
    """One model trained with `seeds` seeds: each seed shifts every example's margin by one
    draw (how much a seed moves accuracy) plus per-example noise (where seeds disagree)."""
    out = {}
    for s in range(seeds):
        margin = score + rng.normal(0, 0.1) + rng.normal(0, 0.5, size=len(score))
        predicted = np.where(margin > 0, labels, 1 - labels)
        out[s] = pd.DataFrame({R.PRED_LABEL: labels, R.PRED_PREDICTED: predicted},
                              index=pd.RangeIndex(len(labels), name=R.PRED_EXAMPLE))
    return out


def _old_example_only_p(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The earlier test: per-example accuracy averaged over seeds, a sign test over examples."""
    d = a.to_numpy().mean(axis=1) - b.to_numpy().mean(axis=1)
    better_a, better_b = int((d > 0).sum()), int((d < 0).sum())
    return float(stats.binomtest(better_a, better_a + better_b, 0.5).pvalue)


def test_seed_aware_test_holds_its_level_where_the_example_only_test_does_not() -> None:
    """40 pairs of configurations that are the same model with different seeds (the null
    holds): the seeds x examples test rejects at about 5%, the old one far more often."""
    rng = np.random.default_rng(2024)
    new, old = 0, 0
    for _ in range(PAIRS):
        labels = rng.integers(0, 2, N_EXAMPLES)
        score = rng.normal(1.0, 1.5, N_EXAMPLES)  # how easy each test example is
        a = paired.correctness(_seed_predictions(rng, score, labels, SEEDS))
        b = paired.correctness(_seed_predictions(rng, score, labels, SEEDS))
        c = paired.compare(a, b)
        assert c.test == "seeds × examples t"
        new += c.p_value < 0.05
        old += _old_example_only_p(a, b) < 0.05
    print(f"rejected at 0.05: seed-aware {new}/{PAIRS}, example-only {old}/{PAIRS}")
    assert new <= 0.10 * PAIRS, new
    assert old >= 3 * max(new, 2), (old, new)


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert significance.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert significance.holm([]) == [] and significance.holm([0.7, 0.9]) == [1.0, 1.0]


def test_verdict_calls_ties_where_the_adjusted_p_is_not_small() -> None:
    assert significance.verdict(0.02, 0.049) == ">" and significance.verdict(-0.02, 0.01) == "<"
    assert significance.verdict(0.05, 0.05) == "≈" and significance.verdict(0.0, 0.0) == "≈"


def test_seeds_by_examples_reduces_to_the_familiar_tests() -> None:
    rng = np.random.default_rng(1)
    # A seed effect and nothing per example: the paired t-test of per-seed differences.
    d = np.repeat(rng.normal(0.02, 0.01, size=(4, 1)), 200, axis=1)
    d += rng.choice([-1e-9, 1e-9], size=d.shape)  # a residual that is not exactly zero
    res = significance.seeds_by_examples(d)
    ref = stats.ttest_1samp(d.mean(axis=1), 0)
    assert res.df == 3 and res.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    low, high = ref.confidence_interval()
    assert (res.ci_low, res.ci_high) == pytest.approx((low, high), rel=1e-6)
    # Every seed pair agrees on every example: nothing to test.
    same = significance.seeds_by_examples(np.zeros((3, 50)))
    assert (same.diff, same.p_value, same.ci_low, same.ci_high) == (0.0, 1.0, 0.0, 0.0)
