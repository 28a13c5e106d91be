"""Naming configurations: a label from what differs, smoke runs, each method's main experiment.

Analysis groups runs by config_hash; this module says what a reader calls each group: the
method, plus the options that set it apart (`lora r=16`, `lora quantize=nf4`), whether it is a
smoke run (a subsample, or stopped early, other than its task's own budget), and which
configuration is a method's main one (the experiment named like it, or `<method>-all`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from experiments.contract import record as R
from experiments.contract.record import col, method_rank
from experiments.contract.tasks import task_budget


def number(value: Any) -> float:
    """A record value as a float: NaN for None, NaN, text and anything else that is no number."""
    try:
        return float(value)
    except (TypeError, ValueError):  # None, pd.NA, lists, words
        return math.nan


# Config keys that make a run a smoke run (a subsample, or stopped early): its accuracy is not
# the method's, and its label says so. A task's own budget (experiments/contract/tasks.py) is no
# smoke run: it is the size that task's comparison runs at.
SMOKE_KEYS = (R.C_TRAIN_SIZE, R.C_EVAL_SIZE, R.C_MAX_STEPS)
_TARGETS = {"all": "all layers", "attention": "attention", "mlp": "MLP"}
# How a differing option reads in a label, by its last key (method options nest under the
# method: `lora.rank`, `dora.rank`). Other options read `key=value`. These are the methods'
# option names (methods/*.py), not record keys.
_WORDS: dict[str, Callable[[Any], str]] = {
    "rank": lambda v: f"r={format_value(v)}",
    "alpha": lambda v: f"α={number(v):.4g}",  # 4 sqrt(2) reads 5.657, not 5.656854
    "targets": lambda v: _TARGETS.get(str(v), str(v)),
    "prompt_length": lambda v: f"{format_value(v)} tokens",
    "lr": lambda v: f"lr={number(v):g}",
    "epochs": lambda v: f"{format_value(v)} epochs",
    "batch_size": lambda v: f"batch {format_value(v)}",
    "pooling": lambda v: f"{v} pooling",
    "model": str, "data": str, "precision": str, "dist": str,
}


def format_value(value: Any) -> str:
    """A config value for a label: 8.0 -> '8' (a column with gaps turns ints into floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe(key: str, value: Any) -> str:
    """One differing option in words a reader knows: rank 16 -> 'r=16', targets -> 'attention'."""
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, bool | np.bool_):
        return f"{name}={'on' if value else 'off'}"
    if name in _WORDS:
        return _WORDS[name](value)
    return f"{name}={format_value(value)}"


def is_missing(value: Any) -> bool:
    """None, NaN or pd.NA: a value the record does not have (a list or dict is present)."""
    if isinstance(value, list | dict | tuple | np.ndarray):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # an object pandas cannot judge: present
        return False


def varies(values: pd.Series) -> bool:
    """Whether a config column holds more than one value (8 and 8.0 alike; missing counts)."""
    return values.map(lambda v: "\0missing" if is_missing(v) else format_value(v)).nunique() > 1


def is_smoke(row: pd.Series | dict[str, Any]) -> bool:
    """Whether a run trained or tested on a subsample, or stopped early (train_size etc. > 0),
    other than its task's own budget (Reuters R8's 2,000 train rows are its comparison's size)."""
    budget = task_budget(str(row.get(col(R.CONFIG, R.C_DATA)) or ""))
    sizes = {k: number(row.get(col(R.CONFIG, k))) for k in SMOKE_KEYS}
    return any(v > 0 and v != budget.get(k) for k, v in sizes.items())


# A method's main experiment: named like the method, or `<method>-all` (every linear layer)
# for the methods with target sets; the first name found wins.
MAIN_SUFFIXES = ("", "-all")


def _main_index(rows: pd.DataFrame, method: str) -> Any | None:
    """The index of the method's main experiment among its rows (MAIN_SUFFIXES, the first name
    found): of several such configurations the one with the most seeds (`n`); without seed
    counts, only a single one is the main one. None when no main experiment ran."""
    if R.EXPERIMENT not in rows:
        return None
    for suffix in MAIN_SUFFIXES:
        named = rows[rows[R.EXPERIMENT] == f"{method}{suffix}"]
        if "n" in named and len(named):
            return named["n"].astype(int).idxmax()
        if len(named) == 1:
            return named.index[0]
    return None


def same_value(a: Any, b: Any) -> bool:
    """Whether two config values read alike (8 and 8.0; both missing)."""
    if is_missing(a) or is_missing(b):
        return is_missing(a) and is_missing(b)
    return format_value(a) == format_value(b)


def config_labels(df: pd.DataFrame) -> dict[str, str]:
    """config_hash -> a readable label: the method, plus what differs from its other configs.

    `lora r=8` and `lora r=16` when only the rank differs, `lora attention` when the targets do,
    plain `head` when a method has one configuration. Where the method's main experiment ran
    (MAIN_SUFFIXES: `full`, `lora-all`), it is the plain method and each other configuration
    names only what it changes: `lora quantize=nf4`, `full optimizer_impl=adamw8bit`. `(smoke)`
    marks a subsampled or shortened configuration when others are not (when every one is, the
    summary's notes say so).
    """
    labels: dict[str, str] = {}
    prefix = f"{R.CONFIG}."
    sizes = [col(R.CONFIG, k) for k in SMOKE_KEYS]
    skip = {col(R.CONFIG, k) for k in (*R.NOT_HASHED, R.METHOD)} | set(sizes)
    configs = df.drop_duplicates(R.CONFIG_HASH).set_index(R.CONFIG_HASH, drop=False)
    smoke = {h: is_smoke(row) for h, row in configs.iterrows()}
    mark_smoke = len(set(smoke.values())) > 1
    for method, firsts in configs.groupby(R.METHOD, sort=False):
        cols = [c for c in firsts.columns if c.startswith(prefix) and c not in skip]
        varying = [c for c in cols if varies(firsts[c])]
        # The method's own options first (rank before lr), each group in the record's order.
        varying.sort(key=lambda c: not c.startswith(f"{prefix}{method}."))
        main = _main_index(firsts, str(method))
        base = {h: " ".join([str(method), *(describe(c.removeprefix(prefix), row[c])
                                             for c in varying if not is_missing(row[c])
                                             and not (main is not None
                                                      and same_value(row[c], firsts.at[main, c])))])
                for h, row in firsts.iterrows()}
        marked = {h: mark_smoke and smoke[h] for h in base}
        for h, row in firsts.iterrows():
            inner = ["smoke"] if marked[h] else []
            twins = firsts.loc[[k for k in base if (base[k], marked[k]) == (base[h], marked[h])]]
            if len(twins) > 1:  # alike but for the smoke sizes: name those
                inner += [describe(c.removeprefix(prefix), row[c]) for c in sizes
                          if c in twins and varies(twins[c])]
            labels[h] = base[h] + (f" ({', '.join(inner)})" if inner else "")
        counts = Counter(labels[h] for h in base)
        for h in base:
            if counts[labels[h]] > 1:  # options no word tells apart: the hash does
                labels[h] = f"{labels[h]} #{h[:6]}"
    return labels


def main_configurations(agg: pd.DataFrame) -> pd.DataFrame:
    """One row per method: its main configuration (MAIN_SUFFIXES; of several configurations of
    that experiment, the one with the most seeds), in the methods' order."""
    if agg.empty or R.EXPERIMENT not in agg:
        return agg.iloc[0:0]
    picked = [_main_index(agg[agg[R.METHOD] == m], str(m))
              for m in sorted(agg[R.METHOD].dropna().unique(), key=method_rank)]
    return agg.loc[[i for i in picked if i is not None]].reset_index(drop=True)
