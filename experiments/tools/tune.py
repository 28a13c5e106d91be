"""Tuning: one Optuna study per (data, model, method) on validation only; the picks as data.

    make tune METHOD=lora [DATA=d] [MODEL=x] [TRIALS=12] [WORKERS=1] [ARGS="k=v ..."]
    python -m experiments.tools.tune lora --trials 12 --workers 2 train_size=400
    python -m experiments.tools.tune --cost [--write BENCHMARKS.md]   # what the studies cost

Every trial is one harness run (`experiments.train.run`, a record like any run's) at the real
budget: the whole train split unless ARGS say otherwise, EPOCHS epochs for every method (the head
keeps its own on cached features), the learning rate drawn log-uniformly by a seeded TPE sampler,
the method's other settings at its code PRESET, and `test_split=false`: the test split is never
loaded. Validation is reported REPORTS times per run and Optuna's successive-halving pruner
stops the weak trials early. The study lives in a journal file under the runs folder (or
$TUNE_STORAGE, any Optuna storage URL, so workers on several machines share one study); a rerun
continues it, and a trial whose process died is retried with the same learning rate, resuming
its run from the run's checkpoint. When the best rate lies in the outer tenth of the log range,
the range is widened and the study continues. The pick goes to a presets file
(`experiments/presets/<data>-<model>.yaml`) that the harness then applies (`preset=auto`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from experiments.contract import record as R
from experiments.contract.tasks import task_budget
from experiments.harness.cli import EXIT_FAILED, EXIT_OK, run_main, split
from experiments.harness.config import (
    UserError,
    applied_preset,
    parse_overrides,
    preset_path,
    resolve,
)
from experiments.tools.executors import make_executor
from experiments.tools.tune_workers import CLAIM, claim_attr, drive, retry

TRIALS = 12  # the same for every method
EPOCHS = 2  # the tuning budget's epochs, the same for every method but those below
OWN_EPOCHS = ("head",)  # trains on cached features: its many cheap epochs stay its PRESET's
REPORTS = 8  # validations per run, reported to the pruner
DECADES = 3.0  # the first lr range: this many decades centred on the code PRESET's rate
EDGE = 0.1  # a best rate in this outer fraction of the log range widens the range
WIDEN_DECADES = 1.0  # how far a widening moves the edge out
MAX_WIDEN = 2
SAMPLER = {"n_startup_trials": 4}
PRUNER = {"min_resource": 2, "reduction_factor": 3}  # rungs at the 2nd and 6th of 8 reports
METRIC = R.VAL_SELECTED_SCORE  # the validation score of the state a run selects and tests
BUDGET_KEYS = ("train_size", "eval_size", "max_steps", "max_length")  # ARGS that shrink a run

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def beyond_task(data: str, args: dict[str, str]) -> dict[str, str]:
    """The ARGS that differ from the task's own budget (experiments/contract/tasks.py)."""
    budget = task_budget(data)
    return {k: v for k, v in args.items() if k not in budget or str(budget[k]) != str(v)}


def with_task_budget(data: str, args: dict[str, str]) -> dict[str, str]:
    """ARGS over the task's budget: a study runs at the task's budget unless ARGS say otherwise."""
    return {**{k: str(v) for k, v in task_budget(data).items()}, **args}


def study_name(method: str, data: str, model: str, args: dict[str, str], seed: int = 0) -> str:
    """<data>-<model>-<method>, plus a hash of the ARGS beyond the task's budget (another budget
    is another study) and the seed when it is not 0."""
    base = f"{preset_path(data, model).stem}-{method}" + (f"-s{seed}" if seed else "")
    args = beyond_task(data, args)
    if not args:
        return base
    text = json.dumps(args, sort_keys=True)
    return f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def open_storage(url: str) -> Any:
    """A journal file (a path) or an Optuna storage URL (sqlite:///..., postgresql://...)."""
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    # The open lock (O_EXCL file) works on network filesystems, unlike the symlink default.
    return optuna.storages.JournalStorage(JournalFileBackend(url, JournalFileOpenLock(url)))


def _sampler(seed: int, number: int) -> optuna.samplers.BaseSampler:
    # Seeded per trial number, not per process: a rerun or another worker draws what the
    # uninterrupted study would have drawn for that trial (sequentially; parallel trials see
    # whichever results have come in).
    return optuna.samplers.TPESampler(seed=seed + number, **SAMPLER)


def load_study(name: str, storage: str) -> optuna.Study:
    """The study, with its pruner (a sampler is set per trial)."""
    return optuna.load_study(study_name=name, storage=open_storage(storage),
                             pruner=optuna.pruners.SuccessiveHalvingPruner(**PRUNER))


def _frozen(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """What the storage holds of a live trial (its inherited reports, its retry marks)."""
    return trial.study._storage.get_trial(trial._trial_id)


class Reporter:
    """The harness's validation observer: reports each validation to the trial and says
    whether the pruner stops the run."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.done = set(_frozen(trial).intermediate_values)

    def __call__(self, history: list[dict[str, Any]]) -> bool:
        """Report the latest validation (a resumed run's earlier ones were inherited)."""
        index = len(history)
        if index not in self.done:
            self.trial.report(history[-1][self.metric], index)
            self.done.add(index)
        return self.trial.should_prune()


def trial_overrides(spec: dict[str, Any], lr: float, study: str, number: int) -> dict[str, Any]:
    """The harness config of one trial: the study's budget, this learning rate, no test."""
    return {"wandb": "disabled", **spec["args"], "method": spec["method"], "data": spec["data"],
            "model": spec["model"], "lr": lr, "epochs": spec["epochs"], "seed": spec["seed"],
            "eval_every": spec["eval_every"], "preset": "code", "test_split": False,
            "save": "none", "progress": False, "name": f"tune-{study}"}


def run_trial(study_name: str, storage: str, runs_dir: str | None = None) -> dict[str, Any]:
    """Ask the study for one trial, run it as a harness run, tell the study its outcome.

    The unit a worker runs (a local process here; a Ray task can call it the same way). A
    retried trial resumes its killed run from the run's checkpoint (resume=auto finds it: the
    same config and seed)."""
    from experiments import train
    from experiments.tools import tune_presets as P

    study = load_study(study_name, storage)
    spec, rng = study.user_attrs["spec"], study.user_attrs["range"]
    trial = study.ask()
    study.sampler = _sampler(spec["seed"], trial.number)  # used by the suggestion below
    lr = trial.suggest_float("lr", rng["low"], rng["high"], log=True)
    trial.set_user_attr(CLAIM, claim_attr(trial.number))  # one write: see tune_workers
    for key, value in {"threads": _threads(), "run_id": None, "error": None,
                       "killed": False}.items():  # a retry starts from the killed one's
        trial.set_user_attr(key, value)
    overrides = trial_overrides(spec, lr, study_name, trial.number)
    # A study's runs sit apart (runs/tune/<study>/): suites and plots over runs/ never mistake
    # a validation-only trial for a run of theirs.
    trial_runs = trial_runs_dir(study_name, runs_dir)
    overrides["runs_dir"] = str(trial_runs)
    retried = "failed_trial" in _frozen(trial).system_attrs
    info = {"study": study_name, "trial": trial.number}
    t0 = time.perf_counter()
    try:
        record = _run(train, overrides, Reporter(trial, P.metric(spec)), retried, info)
    except KeyboardInterrupt:  # Ctrl-C: the run keeps its checkpoint; a rerun resumes it
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        retry(study, trial.number)
        raise
    except Exception:  # the run failed and wrote its record saying why
        record = _find_record(trial_runs, info)
    trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 1))
    return _tell(study, trial, record, P.metric(spec))


def _run(train: Any, overrides: dict[str, Any], observe: Any, retried: bool,
         info: dict[str, Any]) -> dict[str, Any]:
    """The harness run of a trial; a retried trial first tries to resume its killed run."""
    if retried:
        try:
            return train.run(resolve({**overrides, "resume": "auto"}), observe=observe,
                             extra={R.TUNE: info})
        except UserError:
            pass  # no checkpoint to continue from: the run starts again, as seeded
    return train.run(resolve(overrides), observe=observe, extra={R.TUNE: info})


def _tell(study: optuna.Study, trial: optuna.Trial, record: dict[str, Any],
          metric: str) -> dict[str, Any]:
    """Finished: its best validation; pruned: pruned; diverged (a non-finite loss): the best
    validation before it, else 0, so the sampler learns the rate is bad; else failed."""
    trial.set_user_attr("run_id", record[R.RUN_ID])
    status = record[R.STATUS]
    if status == R.FINISHED:
        value = record[R.METRICS][METRIC]
        study.tell(trial, value)
        return {"trial": trial.number, "state": "complete", "value": value}
    if status == R.PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return {"trial": trial.number, "state": "pruned"}
    trial.set_user_attr("error", record.get(R.ERROR))
    if "NonFiniteLoss" in str(record.get(R.ERROR)):
        value = max((h[metric] for h in record.get(R.VAL_HISTORY) or []), default=0.0)
        trial.set_user_attr("diverged", True)
        study.tell(trial, value)
        return {"trial": trial.number, "state": "diverged", "value": value}
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return {"trial": trial.number, "state": "failed", "error": record.get(R.ERROR)}


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def trial_runs_dir(study_name: str, runs_dir: str | None = None) -> Path:
    """Where a study's trial runs go: <runs folder>/tune/<study>/."""
    return R.runs_dir(runs_dir) / "tune" / study_name


def _find_record(runs_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The newest record of a trial's run (a failed run raises before returning it)."""
    for path in sorted(runs_dir.glob(f"*/{R.RECORD_FILE}"), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(path.read_text())
            if rec.get(R.TUNE) == info:
                return rec
    return {R.RUN_ID: None, R.STATUS: R.FAILED, R.ERROR: "the run left no record"}


def position(lr: float, rng: dict[str, float]) -> float:
    """Where lr lies in the log range: 0 at low, 1 at high."""
    return (math.log(lr) - math.log(rng["low"])) / (math.log(rng["high"]) - math.log(rng["low"]))


def maybe_widen(study: optuna.Study, extra: int) -> bool:
    """Widen the range at the edge the best rate sits at, and queue `extra` more trials."""
    best, rng = _best(study), dict(study.user_attrs["range"])
    widened = list(study.user_attrs.get("widened", []))
    if best is None or len(widened) >= MAX_WIDEN:
        return False
    where = position(best.params["lr"], rng)
    if EDGE <= where <= 1 - EDGE:
        return False
    edge = "low" if where < EDGE else "high"
    factor = 10 ** (-WIDEN_DECADES if edge == "low" else WIDEN_DECADES)
    new = {**rng, edge: rng[edge] * factor}
    widened.append({"after_trials": len(study.trials), "best_lr": best.params["lr"],
                    "from": rng, "to": new})
    study.set_user_attr("range", new)
    study.set_user_attr("widened", widened)
    study.set_user_attr("target", study.user_attrs["target"] + extra)
    print(f"tune: best lr {best.params['lr']:.3g} in the outer tenth of [{rng['low']:.3g}, "
          f"{rng['high']:.3g}]: widened to [{new['low']:.3g}, {new['high']:.3g}], "
          f"{extra} more trials", flush=True)
    return True


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,))]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _budget(spec: dict[str, Any]) -> dict[str, int]:
    """epochs and eval_every of the study's runs: REPORTS validations per run."""
    from experiments.inputs.data import load_data

    cfg = resolve(trial_overrides({**spec, "eval_every": 0}, 1e-3, "check", 0))
    rows = len(load_data(cfg).splits["train"])
    total = spec["epochs"] * math.ceil(rows / cfg.batch_size)
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    return {"eval_every": max(1, math.ceil(total / REPORTS)), "train_rows": rows}


def open_study(method: str, data: str, model: str, args: dict[str, str], trials: int,
               seed: int, storage: str) -> optuna.Study:
    """The study of (data, model, method, ARGS): created on first use, else continued."""
    name = study_name(method, data, model, args, seed)
    existing = optuna.get_all_study_names(open_storage(storage)) if "://" in storage or \
        Path(storage).is_file() else []
    if name in existing:
        study = load_study(name, storage)
        if study.user_attrs.get("trials") != trials:  # more trials asked: the target grows
            study.set_user_attr("target", study.user_attrs["target"] + trials
                                - study.user_attrs["trials"])
            study.set_user_attr("trials", trials)
        return study
    code, _ = applied_preset(method, data, model, "code")
    own = method in OWN_EPOCHS and "epochs" not in args
    epochs = int(args.get("epochs", code.get("epochs", EPOCHS) if own else EPOCHS))
    spec = {"method": method, "data": data, "model": model, "seed": seed, "epochs": epochs,
            "args": {k: v for k, v in args.items() if k != "epochs"}}
    spec.update(_budget(spec))  # also checks ARGS: a bad key is one line before any study
    lr = float(code.get("lr", resolve({"method": method}).lr))
    half = 10 ** (DECADES / 2)
    study = optuna.create_study(study_name=name, storage=open_storage(storage),
                                direction="maximize", load_if_exists=True)
    attrs = {"spec": spec, "range": {"low": lr / half, "high": lr * half}, "widened": [],
             "trials": trials, "target": trials, "cores": os.cpu_count() or 1,
             "sampler": f"TPESampler(seed={seed} + trial number, {_kw(SAMPLER)})",
             "pruner": f"SuccessiveHalvingPruner({_kw(PRUNER)}) over {REPORTS} validations"}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    # The first trial is the code PRESET's rate: the study starts from what it may replace.
    study.enqueue_trial({"lr": lr}, user_attrs={"anchor": "code PRESET"})
    return load_study(name, storage)


def _kw(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def default_presets(data: str, model: str, args: dict[str, str]) -> Path:
    """experiments/presets/ at the real budget; a shrunk budget's picks stay in the runs folder
    (they must not become the defaults of real runs)."""
    if any(k in beyond_task(data, args) for k in BUDGET_KEYS):
        return R.runs_dir() / "tune" / "presets" / preset_path(data, model).name
    return preset_path(data, model)


def tune(method: str, data: str, model: str, args: dict[str, str], trials: int, workers: int,
         seed: int, storage: str | None, presets: Path | None, executor: Any = None) -> int:
    """Run (or continue) the study, widen while the best rate sits at an edge, write the pick;
    the executor (experiments/tools/executors.py) runs the trial processes, here by default."""
    from experiments.tools import tune_presets as P

    if trials < 1 or workers < 1:
        raise UserError(f"TRIALS={trials} and WORKERS={workers} must be >= 1")
    base = study_name(method, data, model, args, seed)
    storage = storage or str(R.runs_dir() / "tune" / f"{base}.journal")
    study = open_study(method, data, model, args, trials, seed, storage)
    print(f"tune {study.study_name}: {study.user_attrs['target']} trials, {workers} at once, "
          f"storage {storage}", flush=True)
    while True:
        (executor.drive if executor else drive)(study, storage, workers)
        if not maybe_widen(study, max(2, trials // 3)):
            break
    s = P.summary(study)
    spec = study.user_attrs["spec"]
    print(P.cost_table([{"study": study.study_name, "task": data, "method": method,
                         "metric": P.metric(spec), "budget": P.budget(spec), **s}]))
    if s["best"] is None:
        print(f"error: no trial of {study.study_name} finished; see the trials' records",
              file=sys.stderr)
        return EXIT_FAILED
    where = position(s["best"].params["lr"], study.user_attrs["range"])
    out = presets or default_presets(data, model, args)
    P.write_entry(out, data, model, method, P.entry(study, EDGE <= where <= 1 - EDGE, storage))
    print(f"tune: {method} lr={s['best'].params['lr']:.3g} (validation {s['best'].value:.4f}, "
          f"{where:.0%} into the log range{'' if EDGE <= where <= 1 - EDGE else ', at an edge'}"
          f") written to {out}")
    return EXIT_OK


FLAGS = {"data": True, "model": True, "trials": True, "workers": True, "seed": True,
         "storage": True, "presets": True, "trial": True, "cost": False, "write": True,
         "executor": True, "help": False}
USAGE = ("usage: python -m experiments.tools.tune METHOD [--data D] [--model X] [--trials N] "
         "[--workers K] [--seed S] [--presets PATH] [--storage URL] [--executor local|ray] "
         "[key=value ...]\n"
         "       python -m experiments.tools.tune --cost [--write BENCHMARKS.md]\n"
         "       python -m experiments.tools.tune --trial STUDY --storage URL   (one trial)")


def _int(args: Any, name: str, default: int) -> int:
    raw = args.flag(name, default)
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"--{name} {raw!r} is not an integer; e.g. --{name} 4") from None


def _main(argv: list[str]) -> int:
    from experiments.tools import tune_presets as P

    args = split(argv, FLAGS, max_positionals=1)
    if args.flag("help"):
        print(__doc__ + "\n" + USAGE)
        return EXIT_OK
    storage = args.flag("storage") or os.environ.get("TUNE_STORAGE") or None
    if args.flag("trial"):
        result = run_trial(str(args.flag("trial")), str(storage))
        return EXIT_OK if result["state"] != "failed" else EXIT_FAILED
    if args.flag("cost"):
        urls = [str(storage)] if storage else \
            [str(p) for p in sorted((R.runs_dir() / "tune").glob("*.journal"))]
        table = P.cost_table(P.cost_rows(urls))
        print(table)
        if args.flag("write"):
            P.write_block(Path(str(args.flag("write"))), table)
        return EXIT_OK
    if not args.positionals:
        raise UserError("name the method to tune, e.g. make tune METHOD=lora")
    method = args.positionals[0]
    overrides = parse_overrides(args.overrides)
    resolve({**overrides, "method": method})  # an unknown method or bad key: one line, exit 2
    data = str(args.flag("data") or overrides.pop("data", "rotten_tomatoes"))
    model = str(args.flag("model") or overrides.pop("model", "minilm"))
    overrides = with_task_budget(data, overrides)
    presets = Path(str(args.flag("presets"))) if args.flag("presets") else None
    executor = make_executor(str(args.flag("executor") or "local"))  # no Ray: one line here
    return tune(method, data, model, overrides, _int(args, "trials", TRIALS),
                _int(args, "workers", 1), _int(args, "seed", 0), storage, presets, executor)


def main(argv: list[str] | None = None) -> int:
    """Command line: see USAGE."""
    return run_main(lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
