"""What a tuning study leaves: its summary, the presets-file entry, and the tuning-cost table.

A presets file (`experiments/presets/<data>-<model>.yaml`) holds, per method, the values the
harness applies (`values`, over the method's code PRESET) and where they came from: the search
range, whether it was widened, the trials run, pruned and failed, the best validation score, the
study's seed, sampler and pruner. Nothing in it was computed on the test split.
"""

from __future__ import annotations

import fcntl
import os
import statistics
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

from experiments.contract import record as R
from experiments.contract.io import atomic_write_text
from experiments.contract.tasks import task_metric

HEADER = ("# Presets chosen by `make tune` (experiments/tools/tune.py) on the validation split\n"
          "# only; the harness applies a method's `values` for this data and model (preset=auto).\n"
          "# Written by the tuner: edit by rerunning it, not by hand.\n")
MARK_BEGIN, MARK_END = "<!-- tuning-cost:begin -->", "<!-- tuning-cost:end -->"
STATE = optuna.trial.TrialState


def _sig(x: float) -> float:
    """Three significant digits: what a learning rate needs, and no false precision."""
    return float(f"{x:.3g}")


def summary(study: optuna.Study) -> dict[str, Any]:
    """Trials, pruned, failed, best trial and machine time of a study."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("killed")]
    done = [t for t in trials if t.state == STATE.COMPLETE]
    cores = study.user_attrs.get("cores") or os.cpu_count() or 1

    def machine_s(t: optuna.trial.FrozenTrial) -> float:  # a trial's share of the machine
        return t.user_attrs.get("wall_s", 0.0) * t.user_attrs.get("threads", cores) / cores

    full = [machine_s(t) for t in done if not t.user_attrs.get("diverged")]
    best = max(done, key=lambda t: (t.value, -t.number)) if done else None
    return {"trials": len(trials), "complete": len(done),
            "pruned": sum(t.state == STATE.PRUNED for t in trials),
            "failed": sum(t.state == STATE.FAIL for t in trials),
            "diverged": sum(bool(t.user_attrs.get("diverged")) for t in trials),
            "retried": sum(bool(t.system_attrs.get("failed_trial") is not None) for t in trials),
            "best": best, "machine_s": round(sum(machine_s(t) for t in trials), 1),
            "full_run_s": round(statistics.median(full), 1) if full else None}


def entry(study: optuna.Study, interior: bool, storage: str) -> dict[str, Any]:
    """The presets-file entry of a finished study."""
    spec, s = study.user_attrs["spec"], summary(study)
    best = s["best"]
    values = {"lr": _sig(best.params["lr"]), "epochs": spec["epochs"],
              "eval_every": spec["eval_every"]}
    rng = study.user_attrs["range"]
    return {"values": values,
            "search": {"lr": {"low": _sig(rng["low"]), "high": _sig(rng["high"]), "log": True}},
            "interior": interior, "widened": study.user_attrs.get("widened", []),
            "trials": s["trials"], "pruned": s["pruned"], "failed": s["failed"],
            "diverged": s["diverged"], "best_validation": round(best.value, 4),
            "metric": f"val/{metric(spec)} of the state the run selects",
            "best_trial": best.number, "best_run": best.user_attrs.get("run_id"),
            "seed": spec["seed"], "sampler": study.user_attrs["sampler"],
            "pruner": study.user_attrs["pruner"],
            "budget": {k: yaml.safe_load(str(v)) for k, v in spec["args"].items()},
            "study": study.study_name, "storage": storage,
            "machine_s": s["machine_s"], "full_run_s": s["full_run_s"],
            "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_entry(path: Path, data: str, model: str, method: str, item: dict[str, Any]) -> None:
    """Put one method's entry into a presets file (under a lock: studies of other methods may
    write the same file at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc: dict[str, Any] = {}
        if path.is_file():
            doc = yaml.safe_load(path.read_text()) or {}
        doc.update({"data": data, "model": model})
        doc.setdefault("methods", {})[method] = item
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
        atomic_write_text(path, HEADER + text)


def cost_rows(storages: list[str]) -> list[dict[str, Any]]:
    """One row per study in the given storages (journal files or URLs)."""
    from experiments.tools.tune import open_storage

    rows = []
    for url in storages:
        storage = open_storage(url)
        for name in sorted(optuna.get_all_study_names(storage)):
            study = optuna.load_study(study_name=name, storage=storage)
            if "spec" not in study.user_attrs:
                continue
            s = summary(study)
            spec = study.user_attrs["spec"]
            rows.append({"study": name, "task": spec["data"], "method": spec["method"],
                         "metric": metric(spec), "budget": budget(spec), **s})
    return sorted(rows, key=lambda r: (r["task"], R.method_rank(r["method"]), r["study"]))


def metric(spec: dict[str, Any]) -> str:
    """The validation metric the study maximised (studies made before it was recorded: accuracy)."""
    return task_metric(spec["data"], spec["args"].get("select_metric", "auto"))


def budget(spec: dict[str, Any]) -> str:
    """What one trial trains, as resolved (a study made before the task's budget was written
    into its ARGS trained at the same defaults): its rows, max_length, other ARGS and epochs."""
    from experiments.harness.config import resolve

    args = spec["args"]
    cfg = resolve({"method": spec["method"], "data": spec["data"], **args})
    rows = f"train_size={cfg.train_size}" if cfg.train_size else "whole train split"
    rest = [f"{k}={v}" for k, v in args.items() if k not in ("train_size", "max_length")]
    return ", ".join([rows, f"max_length={cfg.max_length}", *rest, f"{spec['epochs']} epochs"])


def cost_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per study, trials, pruned, machine-minutes and that in full runs."""
    out = ["| task | method | budget per trial | trials | pruned | failed | best val | "
           "machine-min | one full run (min) | study ÷ full run |", "| --- | --- | --- | ---: | "
           "---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        full = r["full_run_s"]
        ratio = f"{r['machine_s'] / full:.1f}" if full else "—"
        best = f"{r['best'].value:.4f}" if r["best"] is not None else "—"
        out.append(f"| {r.get('task', '')} | {r['method']} | {r.get('budget', '')} | "
                   f"{r['trials']} | {r['pruned']} | {r['failed']} | {best} "
                   f"({r.get('metric', 'accuracy')}) | {r['machine_s'] / 60:.1f} | "
                   f"{'—' if not full else f'{full / 60:.1f}'} | {ratio} |")
    return "\n".join(out)


INTRO = ("## Tuning cost\n\n"
         "What `make tune` cost per study (docs/tuning.md): trials run, pruned and failed, the "
         "best validation score in the task's metric, the machine-minutes the study took (each "
         "trial's wall time times its share of the cores) and that in full runs (a trial that "
         "ran to the end). "
         "Regenerate with `python -m experiments.tools.tune --cost --write BENCHMARKS.md`; "
         "`make bench` keeps this section.\n\n")


def write_block(path: Path, body: str) -> None:
    """Replace the marked tuning-cost block of a markdown file (the section appended, last,
    when absent: `make bench` carries it over from there)."""
    text = path.read_text() if path.is_file() else ""
    block = f"{MARK_BEGIN}\n{body.rstrip()}\n{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + INTRO + block + "\n"
    atomic_write_text(path, text)
