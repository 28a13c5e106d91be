"""Run records -> one pandas DataFrame (from runs/*/record.json or W&B), and seed statistics.

    from analysis import results
    df = results.load()                          # $RUNS_DIR or ./runs
    df = results.load(source="wandb")            # $WANDB_ENTITY / $WANDB_PROJECT
    agg = results.aggregate(results.finished(df))  # one row per config_hash, mean/std/n/95% CI

Columns are the record's keys flattened with dots (`experiments.contract.record.col`):
`metrics.test/accuracy`, `params.trainable`, `memory.measured_peak_bytes`, `config.lora.rank`.
The names analysis reads are the constants below, built from `experiments.contract.record`, the
one place the keys are spelled. Lists (`val_history`) stay as Python objects.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.configs import config_labels, format_value, is_smoke, number
from experiments.contract import record as R
from experiments.contract.record import col, flatten, method_rank

# Columns every view reads (flattened record keys).
ACCURACY = col(R.METRICS, R.TEST_ACCURACY)
VAL_ACCURACY = col(R.METRICS, R.VAL_ACCURACY)
VAL_BEST = col(R.METRICS, R.VAL_BEST_ACCURACY)
MACRO_F1 = col(R.METRICS, R.TEST_MACRO_F1)
F1 = col(R.METRICS, R.TEST_F1)  # binary tasks: F1 of class 1
MCC = col(R.METRICS, R.TEST_MCC)  # Matthews correlation (records from before it lack it)
TRAINABLE = col(R.PARAMS, R.P_TRAINABLE)
TOTAL = col(R.PARAMS, R.P_TOTAL)
HEAD_PARAMS = col(R.PARAMS, R.P_HEAD)
# Memory. MEASURED is the exact peak of live tensor bytes over one training step; CUDA_MAX and
# RSS_GROWTH are process-level figures (the allocator's maximum; the CPU resident set's growth,
# sampled and approximate), which no view calls the peak.
MEASURED = col(R.MEMORY, R.MEASURED_PEAK_BYTES)
MEASURED_AT_PEAK = col(R.MEMORY, R.MEASURED_AT_PEAK)  # + ".<category>": bytes live at the peak
MEASURED_STATE = col(R.MEMORY, R.MEASURED_STATE_PEAK_BYTES)
STATE_VS_PREDICTED = col(R.MEMORY, R.STATE_VS_PREDICTED)
WEIGHT_CASTS = col(R.MEMORY, R.WEIGHT_CASTS_BYTES)
MEASURED_METHOD = col(R.MEMORY, R.MEASURED_METHOD)
CUDA_MAX = col(R.MEMORY, R.CUDA_MAX_ALLOCATED_BYTES)
RSS_GROWTH = col(R.MEMORY, R.RSS_GROWTH_BYTES)
PEAK = col(R.MEMORY, R.PEAK_BYTES)
DEVICE_PEAK = col(R.MEMORY, R.DEVICE_PEAK_BYTES)
PEAK_METHOD = col(R.MEMORY, R.PEAK_METHOD)
WEIGHTS = col(R.MEMORY, R.WEIGHTS_BYTES)
GRADS = col(R.MEMORY, R.GRADS_BYTES)
OPTIMIZER = col(R.MEMORY, R.OPTIMIZER_BYTES)
ACTIVATIONS = col(R.MEMORY, R.ACTIVATIONS_PEAK_BYTES)
PREDICTED = col(R.MEMORY, R.PREDICTED_BYTES)
PREDICTED_FORMULA = col(R.MEMORY, R.PREDICTED_FORMULA)
TRAIN_S = col(R.TIME, R.TRAIN_S)
PREPARE_S = col(R.TIME, R.PREPARE_S)
FIT_S = col(R.TIME, R.FIT_S)  # derived: see with_derived
EVAL_S = col(R.TIME, R.EVAL_S)
TOTAL_S = col(R.TIME, R.TOTAL_S)
SAMPLES_PER_S = col(R.TIME, R.SAMPLES_PER_S)
SEED = col(R.CONFIG, R.C_SEED)
GIT_COMMIT = col(R.ENV, R.GIT_COMMIT)
# Columns analysis adds to each row: where it came from.
SOURCE = "source"
RECORD_FILE = "record_file"
DUPLICATE_OF = "duplicate_of"  # the run_id that counts instead of this one (mark_duplicates)

# What `aggregate` summarises across seeds (those present; older records lack the new memory
# keys), plus every `memory.measured_at_peak.<category>` column.
STAT_COLUMNS = (
    ACCURACY, VAL_ACCURACY, VAL_BEST, MACRO_F1, F1, MCC, MEASURED, MEASURED_STATE, WEIGHT_CASTS,
    CUDA_MAX,
    RSS_GROWTH, WEIGHTS, GRADS, OPTIMIZER, ACTIVATIONS, PREDICTED, TRAIN_S, PREPARE_S, FIT_S,
    EVAL_S, TOTAL_S, SAMPLES_PER_S,
)
Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


DEFAULT_METRIC = "accuracy"  # records from before `selection_metric` selected on accuracy


def selected_metric(fin: pd.DataFrame, name: str = "", warn: Warn = _stderr) -> str:
    """The metric finished runs selected on (their `selection_metric`; older records:
    accuracy); where they disagree, the most common, with a warning naming `name`."""
    if fin.empty:
        return DEFAULT_METRIC
    said = (fin[R.SELECTION_METRIC] if R.SELECTION_METRIC in fin
            else pd.Series(None, index=fin.index, dtype=object))
    said = said.where(said.isin(R.SELECT_METRICS), DEFAULT_METRIC)
    counts = said.value_counts()
    picked = min(counts.index, key=lambda m: (-counts[m], R.SELECT_METRICS.index(m)))
    if len(counts) > 1:
        found = ", ".join(f"{m} ({counts[m]})" for m in sorted(counts.index))
        warn(f"warning: the runs{f' of task {name}' if name else ''} selected on different "
             f"metrics ({found}); they are compared by {picked}")
    return str(picked)


def read_record(path: Path, warn: Warn = _stderr) -> R.Record | None:
    """One record as a dict, or None (after one warning line) if it cannot be used."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        warn(f"warning: skipping {path}: unreadable ({type(exc).__name__}: {reason})")
        return None
    if not isinstance(record, dict):
        warn(f"warning: skipping {path}: not a JSON object")
        return None
    schema = record.get(R.SCHEMA_KEY)
    if schema not in R.SUPPORTED_SCHEMAS:
        warn(f"warning: skipping {path}: schema {schema!r} is not one of "
             f"{list(R.SUPPORTED_SCHEMAS)} (update analysis/ to read it)")
        return None
    missing = [k for k in R.REQUIRED_KEYS if not record.get(k)]
    if missing:
        warn(f"warning: skipping {path}: missing {', '.join(missing)}")
        return None
    return record


def _frame(rows: list[dict[str, Any]], warn: Warn = _stderr) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[R.RUN_ID, R.METHOD, R.CONFIG_HASH, R.STATUS])
    df = df.sort_values(R.RUN_ID, kind="stable").reset_index(drop=True)
    return mark_duplicates(with_derived(df), warn)


def mark_duplicates(df: pd.DataFrame, warn: Warn = _stderr) -> pd.DataFrame:
    """Set DUPLICATE_OF on finished runs of a (config_hash, seed) that has a newer finished run.

    A configuration's seeds are its replicates: the same seed run twice is one replicate
    measured twice, and counting both would shrink its interval and fake a second seed. The
    newest finished run counts (finished_at, then started_at, then run_id); the others are
    named in one warning each and left out by `finished`.
    """
    df = df.assign(**{DUPLICATE_OF: None})
    if df.empty or SEED not in df or R.STATUS not in df:
        return df
    done = df[(df[R.STATUS] == R.FINISHED) & df[SEED].notna()]
    when = [c for c in (R.FINISHED_AT, R.STARTED_AT, R.RUN_ID) if c in done]
    for (chash, seed), group in done.groupby([R.CONFIG_HASH, SEED], sort=False):
        if len(group) < 2:
            continue
        newest = group.sort_values(when, kind="stable", na_position="first").index[-1]
        kept = df.at[newest, R.RUN_ID]
        for i in group.index.drop(newest):
            df.at[i, DUPLICATE_OF] = kept
            warn(f"warning: {df.at[i, R.RUN_ID]} duplicates {kept} (config {chash}, seed "
                 f"{format_value(seed)}): counted once, as the newer run")
    return df


def load_records(runs_dir: str | Path | None = None, warn: Warn = _stderr) -> pd.DataFrame:
    """Every usable `runs_dir/*/record.json` as one row; bad files are skipped with a warning."""
    runs_dir = R.runs_dir(runs_dir)
    rows = []
    for path in sorted(runs_dir.glob(f"*/{R.RECORD_FILE}")):
        record = read_record(path, warn)
        if record is not None:
            rows.append({**flatten(record), SOURCE: "records", RECORD_FILE: str(path)})
    return _frame(rows, warn)


def load_wandb(entity: str | None = None, project: str | None = None, api: Any = None,
               history: bool = True, warn: Warn = _stderr) -> pd.DataFrame:
    """The same columns from the W&B API (analysis.wandb_runs: config, summary, val curves)."""
    from analysis import wandb_runs  # imports this module: loaded on first use

    return wandb_runs.load_wandb(entity, project, api, history, warn)


def load(source: str = "records", runs_dir: str | Path | None = None,
         **kwargs: Any) -> pd.DataFrame:
    """source="records" reads runs_dir; source="wandb" asks the W&B API (kwargs: load_wandb's)."""
    if source == "records":
        return load_records(runs_dir, **kwargs)
    if source == "wandb":
        return load_wandb(**kwargs)
    raise ValueError(f"source={source!r}; use 'records' or 'wandb'")


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """Only runs that finished (failed, cancelled and running ones have no final metrics),
    one per (config_hash, seed): duplicates (`mark_duplicates`) are left out."""
    if df.empty or R.STATUS not in df:
        return df
    keep = df[R.STATUS] == R.FINISHED
    if DUPLICATE_OF in df:
        keep &= df[DUPLICATE_OF].isna()
    return df[keep].reset_index(drop=True)


def duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs not counted because a newer run has their config_hash and seed."""
    if DUPLICATE_OF not in df:
        return df.iloc[0:0]
    return df[df[DUPLICATE_OF].notna()].reset_index(drop=True)


# ---------------------------------------------------------------- statistics across seeds


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """mean, sample std (ddof=1), n, and the t-distribution CI half-width (NaN when n < 2)."""
    x = np.asarray([v for v in map(number, values) if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": math.nan, "n": 1, "ci": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci": half}


def _first(series: pd.Series) -> Any:
    valid = series.dropna()
    return valid.iloc[0] if len(valid) else None


def aggregate(df: pd.DataFrame, columns: Iterable[str] = STAT_COLUMNS,
              confidence: float = 0.95) -> pd.DataFrame:
    """One row per config_hash: `<col>` is the mean over seeds, with `<col>.std`, `<col>.ci95`
    and the range, `<col>.min` and `<col>.max`.

    Other columns take the first run's value (they are equal across seeds of one configuration),
    `n` counts runs, `seeds` and `run_ids` list them, `label` names the configuration, `smoke`
    says whether it ran on a subsample or stopped early.
    """
    if df.empty:
        return pd.DataFrame(columns=[R.CONFIG_HASH, R.METHOD, "label", "n"])
    df = with_derived(df)
    at_peak = [c for c in df.columns if c.startswith(f"{MEASURED_AT_PEAK}.")]
    stat = [c for c in (*columns, *at_peak) if c in df]
    labels = config_labels(df)
    rows = []
    for chash, group in df.groupby(R.CONFIG_HASH, sort=False):
        row: dict[str, Any] = {c: _first(group[c]) for c in df.columns
                               if c not in stat and c != R.VAL_HISTORY}
        row.update({R.CONFIG_HASH: chash, "label": labels[chash], "n": len(group),
                    "run_ids": list(group[R.RUN_ID]), "smoke": is_smoke(group.iloc[0])})
        if SEED in group:
            row["seeds"] = sorted(group[SEED].dropna().astype(int).tolist())
        for c in stat:
            s = mean_ci(group[c], confidence)
            row[c], row[f"{c}.std"], row[f"{c}.ci95"] = s["mean"], s["std"], s["ci"]
            values = pd.to_numeric(group[c], errors="coerce")
            row[f"{c}.min"], row[f"{c}.max"] = values.min(), values.max()
        if R.VAL_HISTORY in group:
            row[R.VAL_HISTORY] = list(group[R.VAL_HISTORY])
        rows.append(row)
    out = pd.DataFrame(rows)

    def order(i: int) -> tuple:
        trainable = number(out[TRAINABLE][i]) if TRAINABLE in out else math.nan
        return (method_rank(out[R.METHOD][i]), math.inf if math.isnan(trainable) else trainable,
                natural_key(out["label"][i]))

    return out.iloc[sorted(range(len(out)), key=order)].reset_index(drop=True)


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df:
        return pd.Series(math.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[column], errors="coerce")


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add the columns every view compares runs by, from whichever fields a record has.

    `time.fit_s`: one-off preparation (the head's feature cache) + the training loop.
    `memory.cuda_max_allocated_bytes` and `memory.rss_growth_bytes`: older records kept the
    process-level figure in `device_peak_bytes` / `peak_bytes` whatever the device; `peak_method`
    says which it was. An unlabelled one (a W&B summary) stays unnamed rather than guessed.
    The peak every view plots is `memory.measured_peak_bytes` alone: no fallback to these.
    """
    new: dict[str, pd.Series] = {}
    if FIT_S not in df and TRAIN_S in df:
        prepare = df[PREPARE_S].fillna(0) if PREPARE_S in df else 0.0
        new[FIT_S] = df[TRAIN_S] + prepare
    if PEAK in df or DEVICE_PEAK in df:
        how = (df[PEAK_METHOD].fillna("").astype(str).str.lower() if PEAK_METHOD in df
               else pd.Series("", index=df.index))
        legacy = _numeric(df, DEVICE_PEAK).fillna(_numeric(df, PEAK))
        on_cuda = how.str.contains("cuda", na=False)
        on_cpu = how.str.contains("resident|rss", na=False) & ~on_cuda
        new[CUDA_MAX] = _numeric(df, CUDA_MAX).fillna(legacy.where(on_cuda))
        new[RSS_GROWTH] = _numeric(df, RSS_GROWTH).fillna(legacy.where(on_cpu))
    return df.assign(**new) if new else df


def natural_key(text: str) -> list[Any]:
    """'r=8' before 'r=32': digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def mean_curve(histories: Iterable[Any], key: str = R.H_ACCURACY) -> pd.DataFrame:
    """Seeds' validation histories -> step, mean, std, n (steps where any seed evaluated)."""
    points = [(h[R.H_STEP], h[key]) for hist in histories if isinstance(hist, list)
              for h in hist if isinstance(h, dict) and h.get(key) is not None]
    if not points:
        return pd.DataFrame(columns=["step", "mean", "std", "n"])
    frame = pd.DataFrame(points, columns=["step", "value"])
    out = frame.groupby("step")["value"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"})
