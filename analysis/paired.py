"""Paired comparisons between configurations on the same test examples (`predictions.parquet`).

Two configurations tested on the same examples are compared example by example: what decides
whether one is better is the examples they disagree on, which two accuracies cannot show.

    from analysis import paired, results
    df = results.finished(results.load())
    found = paired.comparisons(df)                 # every pair, Holm over all of them
    for c in paired.default_family(found, results.aggregate(df)):
        print(paired.sentence(c))   # lora vs full: -0.9 pt (95% CI -2.1 to +0.3), p = 0.11 ...

How a pair is tested (analysis.significance; docs/statistics.md says it for readers):
  - one seed each: McNemar's exact test on the examples only one of them gets right, with the
    Clopper-Pearson interval of the same binomial;
  - two or more seeds each: seeds are paired (the same seed numbers where both have them, else
    in order) and a t-test over seeds x examples is run on the per-example differences, so the
    training seed is a unit of replication: a second seed that lands 1 point higher is noise
    that the test must see, not 1,275 pieces of evidence;
  - unequal seed counts: only matched seeds (the seed numbers both have; else the first ones)
    are compared, and the table says which: a configuration's extra seeds would otherwise make
    its mean less noisy than its rival's and the comparison lopsided.
A task compared by macro-F1 (its runs' `selection_metric`) is tested the same way on each
example's jackknife pseudo-value of macro-F1 in place of its 0/1 correctness (one seed each: a
t-test over examples; analysis.significance.macro_f1_pseudo_values).
Each test gives its p-value and 95% interval from one procedure: they cannot disagree.
Holm's correction is applied over the family shown (`default_family`, or every pair for the
CSV), and a difference whose adjusted p is 0.05 or more is a tie, '≈'.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import configs, results
from analysis.significance import (
    examples_t,
    holm,
    macro_f1_pseudo_values,
    mcnemar,
    seeds_by_examples,
    verdict,
)
from experiments.contract import record as R
from experiments.contract.record import col

COLUMNS = (R.PRED_EXAMPLE, R.PRED_LABEL, R.PRED_PREDICTED)
# The configurations every other one is compared with in the default table: full fine-tuning,
# and LoRA at methods/lora.py's defaults (rank 8 on every linear layer; analysis does not import
# methods/, which needs torch).
REFERENCE_FULL = "full"
DEFAULT_LORA = {col(R.CONFIG, "lora.rank"): 8, col(R.CONFIG, "lora.targets"): "all"}
MATRIX_CSV = "paired_matrix.csv"
ACCURACY = "accuracy"  # a metric name (R.SELECT_METRICS)
Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass(frozen=True)
class Comparison:
    """Configuration a against b on the test examples both were scored on."""

    a: str  # labels (configs.config_labels)
    b: str
    hash_a: str
    hash_b: str
    n: int  # shared test examples
    acc_a: float  # the mean of `metric` over the seeds compared
    acc_b: float
    diff: float  # acc_a - acc_b, as the test estimates it
    better_a: int  # examples a gets right more often than b (one seed each: a right, b wrong)
    better_b: int
    p_value: float  # two-sided, from `test`
    ci_low: float  # 95% interval of diff, from the same test
    ci_high: float
    seeds_a: tuple[int, ...]  # the seeds each configuration has
    seeds_b: tuple[int, ...]
    used: tuple[tuple[int, int], ...]  # the seed pairs compared (a's seed, b's seed)
    test: str  # "McNemar exact", "seeds × examples t" (", jackknife" for macro-F1), "examples t"
    df: float = math.nan  # the t-test's degrees of freedom
    p_adjusted: float = math.nan  # Holm over the family the comparison is shown in
    family: int = 0  # that family's size
    metric: str = "accuracy"  # what is compared: accuracy, or macro_f1 (jackknife)

    @property
    def result(self) -> str:
        """'>' or '<' (a against b) where the adjusted p is below 0.05, else '≈'."""
        return verdict(self.diff, self.p_adjusted)

    def flipped(self) -> Comparison:
        """The same comparison read as b against a."""
        return replace(self, a=self.b, b=self.a, hash_a=self.hash_b, hash_b=self.hash_a,
                       acc_a=self.acc_b, acc_b=self.acc_a, diff=-self.diff,
                       better_a=self.better_b, better_b=self.better_a, ci_low=-self.ci_high,
                       ci_high=-self.ci_low, seeds_a=self.seeds_b, seeds_b=self.seeds_a,
                       used=tuple((y, x) for x, y in self.used))


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


def correctness(runs: Mapping[int, pd.DataFrame] | Iterable[pd.DataFrame],
                metric: str = ACCURACY) -> pd.DataFrame | None:
    """Seeds' predictions -> each example's score (rows: example and label) per seed (columns):
    1.0/0.0 for accuracy, the jackknife pseudo-value for macro-F1 (their mean is the metric).

    `runs` maps seed -> predictions (a plain list is numbered 0, 1, ...). None when the seeds
    disagree on the examples or their labels: then they were not tested on one split.
    """
    runs = dict(runs) if isinstance(runs, Mapping) else dict(enumerate(runs))
    if not runs:
        return None
    frames = [runs[s] for s in sorted(runs)]
    index = pd.MultiIndex.from_arrays([frames[0].index, frames[0][R.PRED_LABEL]])
    columns = {}
    for seed, frame in zip(sorted(runs), frames, strict=True):
        if not index.equals(pd.MultiIndex.from_arrays([frame.index, frame[R.PRED_LABEL]])):
            return None
        label, predicted = frame[R.PRED_LABEL].to_numpy(), frame[R.PRED_PREDICTED].to_numpy()
        columns[seed] = ((predicted == label).astype(float) if metric == ACCURACY
                         else macro_f1_pseudo_values(label, predicted))
    return pd.DataFrame(columns, index=index)


def match_seeds(seeds_a: list[int], seeds_b: list[int]) -> list[tuple[int, int]]:
    """The seed pairs to compare: all seeds when the counts are equal (same numbers together,
    else in order); with unequal counts only the seed numbers both have, or the first ones."""
    seeds_a, seeds_b = sorted(seeds_a), sorted(seeds_b)
    if len(seeds_a) != len(seeds_b):
        common = sorted(set(seeds_a) & set(seeds_b))
        if common:
            return [(s, s) for s in common]
    if set(seeds_a) == set(seeds_b):
        return [(s, s) for s in seeds_a]
    return list(zip(seeds_a, seeds_b, strict=False))


def compare(correct_a: pd.DataFrame, correct_b: pd.DataFrame, a: str = "a", b: str = "b",
            hash_a: str = "", hash_b: str = "", metric: str = ACCURACY) -> Comparison | None:
    """The paired test of two `correctness` frames (scored by `metric`); None unless same
    examples and labels."""
    if not correct_a.index.equals(correct_b.index):
        return None
    used = match_seeds(list(correct_a.columns), list(correct_b.columns))
    xa = correct_a[[s for s, _ in used]].to_numpy(float).T  # seed pairs x examples
    xb = correct_b[[t for _, t in used]].to_numpy(float).T
    d = xa - xb
    mean_d = d.mean(axis=0)
    better_a, better_b = int((mean_d > 0).sum()), int((mean_d < 0).sum())
    n = d.shape[1]
    jackknife = "" if metric == ACCURACY else ", jackknife"
    if len(used) == 1 and metric == ACCURACY:
        res, test = mcnemar(better_a, better_b, n), "McNemar exact"
    elif len(used) == 1:
        res, test = examples_t(d[0]), f"examples t{jackknife}"
    else:
        res, test = seeds_by_examples(d), f"seeds × examples t{jackknife}"
    return Comparison(
        a=a, b=b, hash_a=hash_a, hash_b=hash_b, n=n, acc_a=float(xa.mean()),
        acc_b=float(xb.mean()), diff=res.diff, better_a=better_a, better_b=better_b,
        p_value=res.p_value, ci_low=res.ci_low, ci_high=res.ci_high,
        seeds_a=tuple(int(s) for s in correct_a.columns),
        seeds_b=tuple(int(s) for s in correct_b.columns),
        used=tuple((int(s), int(t)) for s, t in used), test=test, df=res.df, metric=metric)


def split_key(row: pd.Series) -> tuple[str, ...]:
    """What fixes a run's test split (data, its columns, eval_size), as comparable text."""
    return tuple(configs.format_value(row.get(col(R.CONFIG, k))) for k in R.TEST_SPLIT_KEYS)


def seed_predictions(df: pd.DataFrame, chash: str,
                     warn: Warn = _stderr) -> dict[int, pd.DataFrame]:
    """seed -> predictions of a configuration's counted runs that wrote them."""
    if results.RECORD_FILE not in df:  # W&B runs: no predictions files
        return {}
    runs = df[df[R.CONFIG_HASH] == chash]
    out = {}
    for i, (_, row) in enumerate(runs.iterrows()):
        seed = configs.number(row.get(results.SEED))
        frame = read_predictions(predictions_path(row[results.RECORD_FILE]), warn)
        if frame is not None:
            out[i if math.isnan(seed) else int(seed)] = frame
    return out


def scored(df: pd.DataFrame, agg: pd.DataFrame, warn: Warn = _stderr,
           metric: str = ACCURACY) -> dict[str, pd.DataFrame]:
    """config_hash -> `correctness` of its seeds, for configurations with usable predictions."""
    out: dict[str, pd.DataFrame] = {}
    if df.empty or results.RECORD_FILE not in df:
        return out
    for chash in agg[R.CONFIG_HASH]:
        runs = seed_predictions(df, chash, warn)
        found = correctness(runs, metric)
        if found is not None:
            out[chash] = found
        elif runs:
            warn(f"warning: no paired tests for {chash}: its seeds' predictions cover "
                 "different examples or labels")
    return out


def with_holm(found: list[Comparison]) -> list[Comparison]:
    """The comparisons with Holm-adjusted p-values over exactly this family."""
    adjusted = holm([c.p_value for c in found])
    return [replace(c, p_adjusted=p, family=len(found)) for c, p in zip(found, adjusted,
                                                                         strict=True)]


def comparisons(df: pd.DataFrame, agg: pd.DataFrame | None = None,
                warn: Warn = _stderr) -> list[Comparison]:
    """Every pair of finished configurations that share a test split and wrote predictions,
    Holm-adjusted over all of them (the matrix), in the metric the runs selected on
    (`results.selected_metric`). In the summary's order: a before b, a - b."""
    df = results.finished(df)
    if df.empty:
        return []
    agg = results.aggregate(df) if agg is None else agg
    metric = results.selected_metric(df, warn=warn)
    correct = scored(df, agg, warn, metric)
    out = []
    rows = [row for _, row in agg.iterrows() if row[R.CONFIG_HASH] in correct]
    for ra, rb in itertools.combinations(rows, 2):
        if split_key(ra) != split_key(rb):
            continue
        ha, hb = ra[R.CONFIG_HASH], rb[R.CONFIG_HASH]
        found = compare(correct[ha], correct[hb], ra["label"], rb["label"], ha, hb, metric)
        if found is None:
            warn(f"warning: no paired test of {ra['label']} and {rb['label']}: same split "
                 "settings but different test examples or labels in their predictions")
        else:
            out.append(found)
    return with_holm(out)


def references(agg: pd.DataFrame) -> list[str]:
    """The config hashes of the default table's references: full fine-tuning and the default
    LoRA, each its method's main configuration (the experiment named like it, or `lora-all`);
    without one, the configuration with the most seeds (LoRA: at its default options if run).
    A variant of a reference (8-bit Adam, a 4-bit base, another rank) is never the reference."""
    main = configs.main_configurations(agg).set_index(R.METHOD)
    out = []
    for method, options in ((REFERENCE_FULL, {}), ("lora", DEFAULT_LORA)):
        if method in main.index:
            out.append(main.loc[method, R.CONFIG_HASH])
            continue
        rows = agg[agg[R.METHOD] == method]
        default = rows
        for column, value in options.items():
            if column in default:
                default = default[default[column].map(configs.format_value) == str(value)]
        rows = default if len(default) else rows
        if len(rows):
            out.append(rows.loc[rows["n"].astype(int).idxmax(), R.CONFIG_HASH])
    return out


def default_family(found: list[Comparison], agg: pd.DataFrame) -> list[Comparison]:
    """The questions users ask: each configuration against full fine-tuning and against the
    default LoRA (read as 'X vs reference'), Holm-adjusted over these. Every pair when neither
    reference ran."""
    refs = references(agg)
    if not refs:
        return with_holm(list(found))
    order = {h: i for i, h in enumerate(agg[R.CONFIG_HASH])}
    chosen: list[Comparison] = []
    for ref in refs:
        for c in found:
            if ref not in (c.hash_a, c.hash_b) or any({c.hash_a, c.hash_b} == {x.hash_a, x.hash_b}
                                                      for x in chosen):
                continue
            chosen.append(c if c.hash_b == ref else c.flipped())
    chosen.sort(key=lambda c: (refs.index(c.hash_b) if c.hash_b in refs else len(refs),
                               order.get(c.hash_a, 0)))
    return with_holm(chosen)


def format_p(p: float) -> str:
    """'p = 0.41', 'p = 0.003', 'p < 0.001'."""
    if math.isnan(p):
        return "p = —"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.995 else "p = 1"


def signed_points(x: float) -> str:
    """Accuracy points with a sign: +1.2, -0.4, 0.0."""
    points = round(100 * x, 1)
    return "0.0" if points == 0 else f"{points:+.1f}"


def sentence(c: Comparison) -> str:
    """'lora vs full: -0.4 pt (95% CI -1.2 to +0.5), p = 0.41, Holm p = 1 (≈)'."""
    low, high = signed_points(c.ci_low), signed_points(c.ci_high)
    text = (f"{c.a} vs {c.b}: {signed_points(c.diff)} pt (95% CI {low} to {high}), "
            f"{format_p(c.p_value)}")
    if not math.isnan(c.p_adjusted):
        text += f", Holm {format_p(c.p_adjusted)} ({c.result})"
    return text


def seeds_text(c: Comparison) -> str:
    """'3, 3'; with unequal counts which seeds were matched: 'seed 0 only (of 3, 1)'."""
    counts = f"{len(c.seeds_a)}, {len(c.seeds_b)}"
    if len(c.used) == len(c.seeds_a) == len(c.seeds_b):
        return counts
    same = all(s == t for s, t in c.used)
    names = ", ".join(str(s) if same else f"{s}/{t}" for s, t in c.used)
    word = "seed" if len(c.used) == 1 else "seeds"
    return f"matched {word} {names} only (of {counts})"


def _p_cell(p: float) -> str:
    return format_p(p).removeprefix("p ").removeprefix("= ")


TABLE_COLUMNS = ("comparison", "difference (pt)", "95% CI (pt)", "p", "Holm p", "result",
                 "seeds", "test")


def table_rows(found: Iterable[Comparison]) -> list[dict[str, Any]]:
    """The comparisons as table cells (for summary.md, RESULTS.md and the dashboard)."""
    return [{"comparison": f"{c.a} vs {c.b}", "difference (pt)": signed_points(c.diff),
             "95% CI (pt)": f"{signed_points(c.ci_low)} to {signed_points(c.ci_high)}",
             "p": _p_cell(c.p_value), "Holm p": _p_cell(c.p_adjusted), "result": c.result,
             "seeds": seeds_text(c), "test": c.test} for c in found]


def note(shown: list[Comparison], matrix: list[Comparison] | None = None,
         csv_name: str = MATRIX_CSV) -> str:
    """How to read the paired table, for the notes under it."""
    n = shown[0].n if shown else 0
    metric = shown[0].metric if shown else ACCURACY
    word = "accuracy" if metric == ACCURACY else "macro-F1"
    text = (f"Paired comparisons on the same {n:,} test examples, from each run's "
            f"{R.PREDICTIONS_FILE}; difference = a - b in {word} points over the seeds "
            "compared. One seed each: McNemar's exact test, with the exact (Clopper-Pearson) "
            "interval of the same binomial. Several seeds: a t-test over seeds x test examples "
            "(seed pairs and examples both random; Satterthwaite degrees of freedom), so seed "
            "noise counts. Unequal seed counts: matched seeds only, named in 'seeds'. p and "
            f"the 95% CI come from one test and agree. Holm p: adjusted over the {len(shown)} "
            "comparisons of this table; 'result' is < or > where it is below 0.05, else ≈ "
            "(a tie: these data do not order the two).")
    if metric != ACCURACY:
        text += (" Macro-F1 is no mean over examples: each example's score is its jackknife "
                 "pseudo-value, n F - (n - 1) F without that example, whose mean is the "
                 "jackknife estimate of F; the tests run on those in place of 0/1 correctness "
                 "(one seed each: a t-test over examples).")
    if matrix is not None and len(matrix) > len(shown):
        text += f" Every pair ({len(matrix)}, Holm over all of them): {csv_name}."
    return text


def matrix_frame(found: Iterable[Comparison]) -> pd.DataFrame:
    """The comparisons as a table of numbers (the CSV of every pair)."""
    return pd.DataFrame([{
        "a": c.a, "b": c.b, "config_hash_a": c.hash_a, "config_hash_b": c.hash_b,
        "test_examples": c.n, "acc_a": c.acc_a, "acc_b": c.acc_b, "diff": c.diff,
        "ci95_low": c.ci_low, "ci95_high": c.ci_high, "p": c.p_value, "p_holm": c.p_adjusted,
        "family": c.family, "result": c.result, "better_a": c.better_a, "better_b": c.better_b,
        "seeds_a": " ".join(map(str, c.seeds_a)), "seeds_b": " ".join(map(str, c.seeds_b)),
        "seed_pairs": " ".join(f"{s}/{t}" for s, t in c.used), "test": c.test, "df": c.df,
        "metric": c.metric,
    } for c in found])


def write_matrix_csv(found: list[Comparison], path: Path) -> Path | None:
    """Every pair's numbers as CSV (fixed precision, so a rerun writes the same bytes)."""
    if not found:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    matrix_frame(found).to_csv(path, index=False, float_format="%.6g")
    return path
