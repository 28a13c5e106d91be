"""Runs from the W&B API as rows of the records' frame (`results.load(source="wandb")`)."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from analysis.results import SOURCE, Warn, _frame, _stderr, flatten
from experiments.contract import record as R
from experiments.contract.record import col

_WANDB_STATUS = {"finished": R.FINISHED, "crashed": R.FAILED, "failed": R.FAILED,
                 "killed": R.CANCELLED, "running": R.RUNNING}
# Summary keys `<section>/<name>` that belong to a record section rather than to `metrics`.
_SUMMARY_SECTIONS = (R.PARAMS, R.MEMORY, R.TIME)


def _wandb_row(run: Any, history: bool) -> dict[str, Any]:
    config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
    summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
    row: dict[str, Any] = {
        # The W&B id is the run id; the display name and group also carry the data and seed.
        R.SCHEMA_KEY: R.SCHEMA, R.RUN_ID: run.id or run.name, R.METHOD: config.get(R.METHOD),
        R.EXPERIMENT: config.pop(R.EXPERIMENT, None) or getattr(run, "group", None)
        or config.get(R.METHOD),
        R.CONFIG_HASH: config.pop(R.CONFIG_HASH, None) or run.id,
        R.STATUS: _WANDB_STATUS.get(getattr(run, "state", ""), getattr(run, "state", None)),
        **flatten(config, f"{R.CONFIG}."), SOURCE: "wandb",
        col(R.ENV, col(R.WANDB, "path")): "/".join(getattr(run, "path", []) or []) or None,
        col(R.ENV, col(R.WANDB, "url")): getattr(run, "url", None),
    }
    for key, value in summary.items():
        if isinstance(value, dict):  # W&B keeps histograms and tables as dicts; not results
            continue
        section, _, name = key.partition("/")
        row[col(section, name) if section in _SUMMARY_SECTIONS and name
            else col(R.METRICS, key)] = value
    if history:
        rows = run.scan_history(keys=[R.VAL_ACCURACY])
        row[R.VAL_HISTORY] = [{R.H_STEP: int(r["_step"]), R.H_ACCURACY: r[R.VAL_ACCURACY]}
                              for r in rows if r.get(R.VAL_ACCURACY) is not None]
    return row


def load_wandb(entity: str | None = None, project: str | None = None, api: Any = None,
               history: bool = True, warn: Warn = _stderr) -> pd.DataFrame:
    """The same columns from the W&B API (config, summary and, optionally, val curves).

    W&B holds what the harness logs there: the config, the summary (accuracy, trainable and total
    parameters, the `memory/*` entries, train time) and the logged curves. Record-only fields
    (method_info, model, data, provenance, per-example predictions) are absent, and the views
    skip what is missing.
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
        if not row.get(R.METHOD):
            warn(f"warning: skipping W&B run {row[R.RUN_ID]}: no `method` in its config")
            continue
        rows.append(row)
    return _frame(rows, warn)
