"""The tests behind the paired comparisons: McNemar's exact test, a seeds x examples t-test, Holm.

Each test returns its p-value and its 95% interval from the same procedure, so that p < 0.05
exactly when the interval excludes 0 (up to rounding in the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Result:
    """A test's answer about mean(a - b): estimate, two-sided p, interval, degrees of freedom."""

    diff: float
    p_value: float
    ci_low: float
    ci_high: float
    df: float = math.nan  # t-tests only


def mcnemar(better_a: int, better_b: int, n: int, confidence: float = CONFIDENCE) -> Result:
    """McNemar's exact test of one run against another on n shared examples.

    Only the discordant examples carry information: under "equally good" a's share of them is
    Binomial(m, 1/2) (`scipy.stats.binomtest`). The interval is the Clopper-Pearson interval of
    that share, mapped to the accuracy difference (m/n)(2 pi - 1): for p0 = 1/2 the binomial is
    symmetric, so the exact two-sided p is below 1 - confidence exactly when this interval
    excludes a difference of 0 (both invert the same tails).
    """
    m = better_a + better_b
    diff = (better_a - better_b) / n if n else math.nan
    if m == 0:
        return Result(diff, 1.0, diff, diff)
    test = stats.binomtest(better_a, m, 0.5)
    ci = test.proportion_ci(confidence_level=confidence, method="exact")
    scale = m / n
    return Result(diff, float(test.pvalue), scale * (2 * ci.low - 1), scale * (2 * ci.high - 1))


def _mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    """Two-way (seeds x examples) mean squares of d: seeds, examples, residual."""
    k, n = d.shape
    grand = d.mean()
    by_seed, by_example = d.mean(axis=1), d.mean(axis=0)
    ms_seed = n * float(((by_seed - grand) ** 2).sum()) / (k - 1)
    ms_example = k * float(((by_example - grand) ** 2).sum()) / (n - 1)
    resid = d - by_seed[:, None] - by_example[None, :] + grand
    ms_resid = float((resid**2).sum()) / ((k - 1) * (n - 1))
    return ms_seed, ms_example, ms_resid


def seeds_by_examples(d: np.ndarray, confidence: float = CONFIDENCE) -> Result:
    """A t-test of mean(d) for d[s, i] = a's correctness - b's on example i, seed pair s.

    Both the training seed and the test example are random draws, crossed (every seed scores
    every example), so the mean's variance is var_seed/k + var_example/n + var_resid/(kn),
    estimated from the two-way mean squares; the degrees of freedom are Satterthwaite's. A
    component estimated below zero is dropped, and the test becomes its familiar special case:
    no example effect -> the paired t-test of the k per-seed accuracy differences (k - 1 df,
    the usual case when a and b are alike); no seed effect -> the paired t-test over examples.
    Written here because neither scipy nor statsmodels has crossed random effects; a
    two-level bootstrap was tried and rejected: with 3 seeds it resamples only 10 distinct
    seed sets and rejected a true null in 27% of simulated pairs at 0.05 (this: 6%).
    """
    k, n = d.shape
    mean = float(d.mean())
    ms_seed, ms_example, ms_resid = _mean_squares(d)
    seed_on, example_on = ms_seed > ms_resid, ms_example > ms_resid
    if seed_on and example_on:
        v = ms_seed + ms_example - ms_resid
        df = v * v / (ms_seed**2 / (k - 1) + ms_example**2 / (n - 1)
                      + ms_resid**2 / ((k - 1) * (n - 1)))
    elif seed_on:
        v, df = ms_seed, k - 1
    elif example_on:
        v, df = ms_example, n - 1
    else:
        v, df = ms_resid, (k - 1) * (n - 1)
    return _t(mean, math.sqrt(max(v, 0.0) / (k * n)), float(df), confidence)


def _t(mean: float, se: float, df: float, confidence: float) -> Result:
    """The t-test of a mean with standard error se on df degrees of freedom (se 0: p = 1)."""
    if se == 0:  # every pair agrees on every example: nothing to test
        return Result(mean, 1.0, mean, mean, df)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Result(mean, float(2 * stats.t.sf(abs(mean) / se, df)), mean - half, mean + half, df)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error), in the given order.

    Hand-written (five lines) because statsmodels, whose multipletests does it, is not a
    dependency, and scipy.stats.false_discovery_control controls the false discovery rate
    (Benjamini-Hochberg), a weaker promise than "no false ordering in the family".
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdict(diff: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """'>' or '<' where the adjusted p is below alpha, else '≈' (the data do not order them)."""
    if math.isnan(p_adjusted) or p_adjusted >= alpha or diff == 0:
        return "≈"
    return ">" if diff > 0 else "<"


def examples_t(d: np.ndarray, confidence: float = CONFIDENCE) -> Result:
    """The paired t-test of mean(d) over examples (one seed pair: no seed effect to estimate)."""
    n = len(d)
    se = float(np.std(d, ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return _t(float(np.mean(d)), se, float(n - 1), confidence)


def macro_f1_pseudo_values(label: np.ndarray, predicted: np.ndarray,
                           classes: int = 0) -> np.ndarray:
    """Jackknife pseudo-values of macro-F1 over one test set: n F - (n - 1) F(-i) per example.

    Macro-F1 is no mean over examples, so a per-example paired test needs per-example values:
    these are its linearisation (Quenouille-Tukey), whose mean is the jackknife estimate of F
    and whose variance over n is the jackknife variance, so the seeds x examples t-test runs on
    them unchanged. For accuracy they are exactly the 0/1 correctness. F averages the F1 of
    `classes` classes (default: every label or prediction seen), as the harness's evaluation
    does; F(-i) follows from removing example i's one count: a true positive of its class, or
    a false negative of its class and a false positive of the predicted one. Hand-written:
    scipy and scikit-learn have no jackknife of a confusion-matrix statistic.
    """
    y, p = np.asarray(label, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    n = len(y)
    k = max(classes, int(y.max(initial=0)) + 1, int(p.max(initial=0)) + 1)
    right = y == p
    tp = np.bincount(y[right], minlength=k).astype(float)
    denom = 2 * tp + np.bincount(p[~right], minlength=k) + np.bincount(y[~right], minlength=k)

    def f1(two_tp: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(two_tp, den, out=np.zeros_like(den, dtype=float), where=den > 0)

    per_class = f1(2 * tp, denom)
    total = per_class.sum()
    own = np.where(right, f1(2 * (tp[y] - 1), denom[y] - 2), f1(2 * tp[y], denom[y] - 1))
    other = np.where(right, 0.0, f1(2 * tp[p], denom[p] - 1) - per_class[p])
    left_out = (total - per_class[y] + own + other) / k
    return n * (total / k) - (n - 1) * left_out
