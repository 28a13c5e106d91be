"""Run records -> one pandas DataFrame (from runs/*/record.json or W&B), and seed statistics.

    from analysis import results
    df = results.load()                          # $RUNS_DIR or ./runs
    df = results.load(source="wandb")            # $WANDB_ENTITY / $WANDB_PROJECT
    agg = results.aggregate(results.finished(df))  # one row per config_hash, mean/std/n/95% CI

Columns are the record's keys flattened with dots: `metrics.test/accuracy`, `params.trainable`,
`memory.optimizer_bytes`, `config.lora.rank`. Lists (`val_history`) stay as Python objects.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.style import method_rank

# The record versions this code reads; a newer schema is skipped with a warning, not misread.
SUPPORTED_SCHEMAS = (1,)
REQUIRED_KEYS = ("run_id", "method", "config_hash")
ACCURACY = "metrics.test/accuracy"
MEASURED = "memory.measured_bytes"  # derived: see with_derived
# What `aggregate` summarises across seeds (those present; the memory ledger may be absent).
STAT_COLUMNS = (
    "metrics.test/accuracy", "metrics.val/accuracy", "metrics.val/best_accuracy",
    "metrics.test/macro_f1", MEASURED, "memory.peak_bytes", "memory.device_peak_bytes",
    "memory.weights_bytes", "memory.grads_bytes", "memory.optimizer_bytes",
    "memory.activations_peak_bytes", "memory.predicted_bytes", "time.train_s", "time.prepare_s",
    "time.fit_s", "time.eval_s", "time.total_s", "time.train_samples_per_s",
)
# Config keys that say where a run was reported, not what it computed (as config_hash ignores).
UNHASHED_CONFIG = ("seed", "name", "runs_dir", "wandb", "wandb_project", "progress")
Warn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def default_runs_dir() -> Path:
    """$RUNS_DIR, else ./runs (where the harness writes)."""
    return Path(os.environ.get("RUNS_DIR") or "runs")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are kept as values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))  # an empty section adds no column
        else:
            out[name] = value
    return out


def read_record(path: Path, warn: Warn = _stderr) -> dict[str, Any] | None:
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
    if record.get("schema") not in SUPPORTED_SCHEMAS:
        warn(f"warning: skipping {path}: schema {record.get('schema')!r} is not one of "
             f"{list(SUPPORTED_SCHEMAS)} (update analysis/ to read it)")
        return None
    missing = [k for k in REQUIRED_KEYS if not record.get(k)]
    if missing:
        warn(f"warning: skipping {path}: missing {', '.join(missing)}")
        return None
    return record


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "method", "config_hash", "status"])
    df = df.sort_values("run_id", kind="stable").reset_index(drop=True)
    return with_derived(df)


def load_records(runs_dir: str | Path | None = None, warn: Warn = _stderr) -> pd.DataFrame:
    """Every usable `runs_dir/*/record.json` as one row; bad files are skipped with a warning."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    rows = []
    for path in sorted(runs_dir.glob("*/record.json")):
        record = read_record(path, warn)
        if record is not None:
            rows.append({**flatten(record), "source": "records", "record_file": str(path)})
    return _frame(rows)


_WANDB_STATUS = {"finished": "finished", "crashed": "failed", "failed": "failed",
                 "killed": "cancelled", "running": "running"}
# Summary keys `<group>/<name>` that belong to a record section rather than to `metrics`.
_SUMMARY_SECTIONS = ("params", "memory", "time")


def _wandb_row(run: Any, history: bool) -> dict[str, Any]:
    config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
    summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
    row: dict[str, Any] = {
        "schema": 1, "run_id": run.name or run.id, "method": config.get("method"),
        "experiment": getattr(run, "group", None) or config.get("method"),
        "config_hash": config.pop("config_hash", None) or run.id,
        "status": _WANDB_STATUS.get(getattr(run, "state", ""), getattr(run, "state", None)),
        **flatten(config, "config."), "source": "wandb",
        "env.wandb.path": "/".join(getattr(run, "path", []) or []) or None,
        "env.wandb.url": getattr(run, "url", None),
    }
    for key, value in summary.items():
        if isinstance(value, dict):  # W&B keeps histograms and tables as dicts; not results
            continue
        section, _, name = key.partition("/")
        row[f"{section}.{name}" if section in _SUMMARY_SECTIONS and name else f"metrics.{key}"] = (
            value)
    if history:
        rows = run.scan_history(keys=["val/accuracy"])
        row["val_history"] = [{"step": int(r["_step"]), "accuracy": r["val/accuracy"]}
                              for r in rows if r.get("val/accuracy") is not None]
    return row


def load_wandb(entity: str | None = None, project: str | None = None, api: Any = None,
               history: bool = True, warn: Warn = _stderr) -> pd.DataFrame:
    """The same columns from the W&B API (config, summary and, optionally, val curves).

    W&B holds what the harness logs there: the config, the summary (accuracy, trainable and total
    parameters, the `memory/*` ledger entries, train time) and the logged curves. Record-only
    fields (method_info, model, data, provenance) are absent, and the plots skip what is missing.
    """
    entity = entity or os.environ.get("WANDB_ENTITY")
    project = project or os.environ.get("WANDB_PROJECT") or "tunebench"
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    rows = []
    for run in api.runs(path):
        try:
            row = _wandb_row(run, history)
        except Exception as exc:  # one odd run (deleted, no config) must not hide the others
            warn(f"warning: skipping W&B run {getattr(run, 'id', '?')}: "
                 f"{type(exc).__name__}: {exc}")
            continue
        if not row.get("method"):
            warn(f"warning: skipping W&B run {row['run_id']}: no `method` in its config")
            continue
        rows.append(row)
    return _frame(rows)


def load(source: str = "records", runs_dir: str | Path | None = None,
         **kwargs: Any) -> pd.DataFrame:
    """source="records" reads runs_dir; source="wandb" asks the W&B API (kwargs: load_wandb's)."""
    if source == "records":
        return load_records(runs_dir, **kwargs)
    if source == "wandb":
        return load_wandb(**kwargs)
    raise ValueError(f"source={source!r}; use 'records' or 'wandb'")


def finished(df: pd.DataFrame) -> pd.DataFrame:
    """Only runs that finished (failed, cancelled and running ones have no final metrics)."""
    if df.empty or "status" not in df:
        return df
    return df[df["status"] == "finished"].reset_index(drop=True)


# ---------------------------------------------------------------- statistics across seeds


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """Student's t cumulative distribution function."""
    tail = 0.5 * _betai(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """Student's t quantile (scipy.stats.t.ppf) by bisection on the CDF; no scipy needed."""
    if not 0.0 < p < 1.0 or dof <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and dof > 0, got p={p}, dof={dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, dof) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, float]:
    """mean, sample std (ddof=1), n, and the t-distribution CI half-width (NaN when n < 2)."""
    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": math.nan, "n": 1, "ci": math.nan}
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci": half}


def config_labels(df: pd.DataFrame) -> dict[str, str]:
    """config_hash -> a readable label: the method, plus the config keys that differ within it.

    `lora (rank=8)` and `lora (rank=16)` when only the rank differs; plain `head` when a method
    has one configuration.
    """
    labels: dict[str, str] = {}
    skip = {f"config.{k}" for k in UNHASHED_CONFIG} | {"config.method"}
    for method, group in df.groupby("method", sort=False):
        firsts = group.drop_duplicates("config_hash")
        cols = [c for c in firsts.columns if c.startswith("config.") and c not in skip]
        varying = [c for c in cols if firsts[c].astype(str).nunique() > 1]
        for _, row in firsts.iterrows():
            parts = []
            for c in varying:
                key = c.removeprefix("config.").removeprefix(f"{method}.")
                parts.append(f"{key}={format_value(row[c])}")
            if len(parts) > 3:  # a label must stay short enough for a legend
                parts = [*parts[:3], row["config_hash"][:6]]
            labels[row["config_hash"]] = f"{method} ({', '.join(parts)})" if parts else str(method)
    return labels


def format_value(value: Any) -> str:
    """A config value for a label: 8.0 -> '8' (a column with gaps turns ints into floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _first(series: pd.Series) -> Any:
    valid = series.dropna()
    return valid.iloc[0] if len(valid) else None


def aggregate(df: pd.DataFrame, columns: Iterable[str] = STAT_COLUMNS,
              confidence: float = 0.95) -> pd.DataFrame:
    """One row per config_hash: `<col>` is the mean over seeds, with `<col>.std`, `<col>.ci95`.

    Other columns take the first run's value (they are equal across seeds of one configuration),
    `n` counts runs, `seeds` and `run_ids` list them, `label` names the configuration.
    """
    if df.empty:
        return pd.DataFrame(columns=["config_hash", "method", "label", "n"])
    df = with_derived(df)
    stats = [c for c in columns if c in df]
    labels = config_labels(df)
    rows = []
    for chash, group in df.groupby("config_hash", sort=False):
        row: dict[str, Any] = {c: _first(group[c]) for c in df.columns
                               if c not in stats and c != "val_history"}
        row.update({"config_hash": chash, "label": labels[chash], "n": len(group),
                    "run_ids": list(group["run_id"])})
        if "config.seed" in group:
            row["seeds"] = sorted(group["config.seed"].dropna().astype(int).tolist())
        for c in stats:
            s = mean_ci(group[c], confidence)
            row[c], row[f"{c}.std"], row[f"{c}.ci95"] = s["mean"], s["std"], s["ci"]
        if "val_history" in group:
            row["val_history"] = list(group["val_history"])
        rows.append(row)
    out = pd.DataFrame(rows)
    order = sorted(range(len(out)), key=lambda i: (method_rank(out["method"][i]),
                                                   _num(out, "params.trainable", i),
                                                   natural_key(out["label"][i])))
    return out.iloc[order].reset_index(drop=True)


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add the columns every view compares runs by, from whichever fields a record has.

    `memory.measured_bytes`: the ledger's `device_peak_bytes`, else (older records) `peak_bytes`.
    `time.fit_s`: one-off preparation (the head's feature cache) + the training loop.
    """
    new: dict[str, pd.Series] = {}
    if MEASURED not in df:
        measured = pd.Series(math.nan, index=df.index, dtype=float)
        for col in ("memory.device_peak_bytes", "memory.peak_bytes"):
            if col in df:
                measured = measured.fillna(pd.to_numeric(df[col], errors="coerce"))
        new[MEASURED] = measured
    if "time.fit_s" not in df and "time.train_s" in df:
        prepare = df["time.prepare_s"].fillna(0) if "time.prepare_s" in df else 0.0
        new["time.fit_s"] = df["time.train_s"] + prepare
    return df.assign(**new) if new else df


def natural_key(text: str) -> list[Any]:
    """'rank=8' before 'rank=32': digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def _num(df: pd.DataFrame, col: str, i: int) -> float:
    value = df[col][i] if col in df else None
    return float(value) if value is not None and not pd.isna(value) else math.inf


def mean_curve(histories: Iterable[Any], key: str = "accuracy") -> pd.DataFrame:
    """Seeds' validation histories -> step, mean, std, n (steps where any seed evaluated)."""
    points = [(h["step"], h[key]) for hist in histories if isinstance(hist, list)
              for h in hist if isinstance(h, dict) and h.get(key) is not None]
    if not points:
        return pd.DataFrame(columns=["step", "mean", "std", "n"])
    frame = pd.DataFrame(points, columns=["step", "value"])
    out = frame.groupby("step")["value"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "n"})
