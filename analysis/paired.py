"""Paired tests between configurations on the same test examples (`runs/<id>/predictions.parquet`).

Two configurations tested on the same examples are compared example by example: what decides
whether one is better is the examples they disagree on, which two accuracies and their seed
intervals cannot show.

    from analysis import paired, results
    df = results.finished(results.load())
    for c in paired.comparisons(df):
        print(paired.sentence(c))        # lora vs full: -0.4 pt (95% CI -1.2 to +0.5), p = 0.41

The statistics (per pair of configurations that share a test split, `record.TEST_SPLIT_KEYS`):
  - the difference of accuracies, a - b, on their shared examples;
  - McNemar's exact test: under "a and b are equally good", the examples only one of them gets
    right are as likely to be a's as b's, so a's count is Binomial(discordant, 1/2)
    (`scipy.stats.binomtest`); two-sided p;
  - a 95% interval for the difference from a paired bootstrap: the test examples resampled with
    replacement, the difference recomputed on each resample (`scipy.stats.bootstrap`,
    percentile method, a fixed seed so reports do not change between renders).

Seeds. A configuration with several seeds contributes every finished seed that wrote
predictions: its per-example correctness is the share of those seeds that got the example
right, and the difference is the difference of the mean accuracies the summary table shows.
The unit of the test stays the test example: seeds that see the same example are not
independent evidence about it, so they are averaged, never pooled as extra examples (pooling
would shrink p with every seed added). With several seeds the per-example differences are
fractions, and McNemar's test becomes its generalisation, the sign test: the examples a does
better on, against those b does better on. With one seed each the two tests are the same.
Seeds need not match between the configurations; a seed is one draw of the training noise,
and seed 0 of lora has nothing in common with seed 0 of full.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis import results
from experiments.contract import record as R
from experiments.contract.record import col

BOOTSTRAP_RESAMPLES = 2000  # the interval's ends move by ~0.1 pt between seeds at this count
BOOTSTRAP_SEED = 0
COLUMNS = (R.PRED_EXAMPLE, R.PRED_LABEL, R.PRED_PREDICTED)
Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass(frozen=True)
class Comparison:
    """Configuration a against b on the test examples both were scored on."""

    a: str  # labels (results.config_labels)
    b: str
    hash_a: str
    hash_b: str
    n: int  # shared test examples
    acc_a: float  # mean accuracy over seeds on those examples
    acc_b: float
    diff: float  # acc_a - acc_b
    better_a: int  # examples a gets right more often than b (one seed each: a right, b wrong)
    better_b: int
    p_value: float  # McNemar's exact test (the sign test with several seeds), two-sided
    ci_low: float  # paired bootstrap interval of diff
    ci_high: float
    seeds_a: int  # runs averaged per configuration
    seeds_b: int
    test: str  # "McNemar exact" or "sign test"


def predictions_path(record_file: str | Path) -> Path:
    """A run's predictions file, beside its record."""
    return Path(record_file).parent / R.PREDICTIONS_FILE


def read_predictions(path: str | Path, warn: Warn = _stderr) -> pd.DataFrame | None:
    """One run's predictions indexed by example (label, predicted), or None if unusable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        frame = pd.read_parquet(path, columns=list(COLUMNS))
    except Exception as exc:  # a truncated or foreign file must not stop the report
        warn(f"warning: skipping {path}: unreadable ({type(exc).__name__}: {exc})")
        return None
    if frame[R.PRED_EXAMPLE].duplicated().any():
        warn(f"warning: skipping {path}: an example appears twice")
        return None
    return frame.set_index(R.PRED_EXAMPLE).sort_index()


def _same_examples(x: pd.DataFrame, y: pd.DataFrame) -> bool:
    """Whether two prediction frames hold the same examples with the same labels."""
    return (np.array_equal(x.index.to_numpy(), y.index.to_numpy())
            and np.array_equal(x[R.PRED_LABEL].to_numpy(), y[R.PRED_LABEL].to_numpy()))


def correctness(runs: Iterable[pd.DataFrame]) -> pd.DataFrame | None:
    """The seeds' predictions -> per example: label, share of seeds correct (`correct`), `seeds`.

    None when the seeds disagree on the examples or their labels (then they were not tested on
    one split, and averaging them would mean nothing).
    """
    runs = list(runs)
    if not runs:
        return None
    first = runs[0]
    if not all(_same_examples(first, other) for other in runs[1:]):
        return None
    hits = np.mean([(r[R.PRED_PREDICTED] == r[R.PRED_LABEL]).to_numpy(float) for r in runs],
                   axis=0)
    return pd.DataFrame({R.PRED_LABEL: first[R.PRED_LABEL], "correct": hits,
                         "seeds": len(runs)}, index=first.index)


def mcnemar_exact(better_a: int, better_b: int) -> float:
    """Two-sided p of McNemar's exact test from the discordant counts (1 when there are none)."""
    discordant = better_a + better_b
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(better_a, discordant, 0.5).pvalue)


def paired_bootstrap(diffs: np.ndarray, confidence: float = 0.95,
                     resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of the mean per-example difference, examples resampled in pairs."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2 or np.all(diffs == diffs[0]):  # no spread: the interval is the point
        value = float(diffs.mean()) if len(diffs) else math.nan
        return value, value
    # random_state (not rng) so that every scipy from 1.11 takes it.
    res = stats.bootstrap((diffs,), np.mean, n_resamples=resamples, vectorized=True,
                          confidence_level=confidence, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare(correct_a: pd.DataFrame, correct_b: pd.DataFrame, a: str = "a", b: str = "b",
            hash_a: str = "", hash_b: str = "") -> Comparison | None:
    """The paired statistics of two `correctness` frames; None unless same examples and labels."""
    if not _same_examples(correct_a, correct_b):
        return None
    d = correct_a["correct"].to_numpy() - correct_b["correct"].to_numpy()
    better_a, better_b = int((d > 0).sum()), int((d < 0).sum())
    low, high = paired_bootstrap(d)
    seeds_a, seeds_b = int(correct_a["seeds"].iloc[0]), int(correct_b["seeds"].iloc[0])
    return Comparison(
        a=a, b=b, hash_a=hash_a, hash_b=hash_b, n=len(d),
        acc_a=float(correct_a["correct"].mean()), acc_b=float(correct_b["correct"].mean()),
        diff=float(d.mean()), better_a=better_a, better_b=better_b,
        p_value=mcnemar_exact(better_a, better_b), ci_low=low, ci_high=high,
        seeds_a=seeds_a, seeds_b=seeds_b,
        test="McNemar exact" if seeds_a == seeds_b == 1 else "sign test")


def split_key(row: pd.Series) -> tuple[str, ...]:
    """What fixes a run's test split (data, its columns, eval_size), as comparable text."""
    return tuple(results.format_value(row.get(col(R.CONFIG, k))) for k in R.TEST_SPLIT_KEYS)


def comparisons(df: pd.DataFrame, agg: pd.DataFrame | None = None,
                warn: Warn = _stderr) -> list[Comparison]:
    """Every pair of finished configurations that share a test split and wrote predictions.

    In the summary's order (`agg`, aggregated from df unless given): a is listed before b, and
    a - b is reported.
    """
    df = results.finished(df)
    if df.empty or results.RECORD_FILE not in df:
        return []
    agg = results.aggregate(df) if agg is None else agg
    correct: dict[str, pd.DataFrame] = {}
    for chash in agg[R.CONFIG_HASH]:
        runs = [read_predictions(predictions_path(f), warn)
                for f in df.loc[df[R.CONFIG_HASH] == chash, results.RECORD_FILE].dropna()]
        found = correctness(r for r in runs if r is not None)
        if found is not None:
            correct[chash] = found
        elif any(r is not None for r in runs):
            warn(f"warning: no paired tests for {chash}: its seeds' predictions cover "
                 "different examples or labels")
    out = []
    rows = [row for _, row in agg.iterrows() if row[R.CONFIG_HASH] in correct]
    for ra, rb in itertools.combinations(rows, 2):
        if split_key(ra) != split_key(rb):
            continue
        ha, hb = ra[R.CONFIG_HASH], rb[R.CONFIG_HASH]
        found = compare(correct[ha], correct[hb], ra["label"], rb["label"], ha, hb)
        if found is None:
            warn(f"warning: no paired test of {ra['label']} and {rb['label']}: same split "
                 "settings but different test examples or labels in their predictions")
        else:
            out.append(found)
    return out


def format_p(p: float) -> str:
    """'p = 0.41', 'p = 0.003', 'p < 0.001'."""
    if math.isnan(p):
        return "p = —"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.995 else "p = 1"


def _pt(x: float) -> str:
    """Accuracy points with a sign: +1.2, -0.4, 0.0."""
    points = round(100 * x, 1)
    return "0.0" if points == 0 else f"{points:+.1f}"


def sentence(c: Comparison) -> str:
    """'lora vs full: -0.4 pt (95% CI -1.2 to +0.5), p = 0.41'."""
    return (f"{c.a} vs {c.b}: {_pt(c.diff)} pt (95% CI {_pt(c.ci_low)} to {_pt(c.ci_high)}), "
            f"{format_p(c.p_value)}")


TABLE_COLUMNS = ("comparison", "difference (pt)", "95% CI (pt)", "p", "test examples",
                 "better: a / b", "seeds", "test")


def table_rows(found: Iterable[Comparison]) -> list[dict[str, Any]]:
    """The comparisons as table cells (for summary.md and the dashboard)."""
    return [{"comparison": f"{c.a} vs {c.b}", "difference (pt)": _pt(c.diff),
             "95% CI (pt)": f"{_pt(c.ci_low)} to {_pt(c.ci_high)}",
             "p": format_p(c.p_value).removeprefix("p ").removeprefix("= "),
             "test examples": f"{c.n:,}",
             "better: a / b": f"{c.better_a} / {c.better_b}",
             "seeds": f"{c.seeds_a}, {c.seeds_b}", "test": c.test} for c in found]


def note(found: list[Comparison]) -> str:
    """How to read the paired table, for the summary's notes."""
    return ("Paired comparisons: configurations with the same test split (data and eval_size), "
            "scored example by example from each run's predictions.parquet. Difference = a - b "
            "in accuracy points; 'better' counts the examples only one of them gets right "
            "(with several seeds: right more often); p is McNemar's exact test on those "
            "(with several seeds, the sign test on per-example accuracy averaged over seeds); "
            f"the 95% CI is a paired bootstrap over test examples ({BOOTSTRAP_RESAMPLES:,} "
            f"resamples). p-values are not corrected for the {len(found)} comparisons.")
