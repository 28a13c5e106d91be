"""The tuner's trial processes: started, watched, and retried when one dies.

A trial is its own process (`python -m experiments.tools.tune --trial STUDY --storage URL`), so
a crash or a memory spike in one cannot take the study with it, and several run at once on one
study. Optuna's heartbeat needs `study.optimize`, which one process per trial does not use, so a
trial's liveness is its process id on its host: the trial process writes one `claim` attribute
(host, pid, start time and the trial's own number) in a single write, so no check ever sees a
half-written claim, and a retry, which inherits the killed trial's attributes, is not judged by
the dead process's claim.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import optuna
import psutil

MAX_RETRY = 2  # retries of a trial whose process died
CLAIM = "claim"  # a trial's user attribute: the process that runs it


def claim_attr(number: int) -> dict[str, object]:
    """The claim the calling process puts on trial `number`."""
    me = psutil.Process()
    return {"trial": number, "host": socket.gethostname(), "pid": me.pid,
            "pid_t": me.create_time()}


def claim_of(trial: optuna.trial.FrozenTrial) -> dict[str, object] | None:
    """The trial's own claim: None until its process has written one (an inherited claim, a
    retry's copy of the killed trial's, is not its own)."""
    c = trial.user_attrs.get(CLAIM)
    return c if isinstance(c, dict) and c.get("trial") == trial.number else None


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the running trials whose process on this host is gone (SIGKILL, power), and
    queue each again with the same learning rate (Optuna's retry callback); their numbers.

    Liveness is the trial's process id on its host: a trial that died on another host waits for
    the tuner there (or the Ray executor's own check of lost nodes)."""
    storage, dead = study._storage, []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        c = claim_of(t)  # unclaimed: its process is starting (a launch's own check covers it)
        if c is None or c["host"] != socket.gethostname() or _alive(c["pid"], c["pid_t"]):
            continue
        storage.set_trial_user_attr(t._trial_id, "killed", True)  # a finished trial takes none
        if storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
            retry(study, t.number)
            dead.append(t.number)
    return dead


def retry(study: optuna.Study, number: int) -> None:
    """Queue a failed trial again: same parameters, its reports so far."""
    with warnings.catch_warnings():  # experimental in name only: stable since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        again = optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY,
                                                                 inherit_intermediate_values=True)
        again(study, study.trials[number])


def _states(study: optuna.Study) -> dict[str, int]:
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    # A killed trial's retry stands in for it; a trial that failed on its own counts.
    counts["FAIL_OWN"] = sum(t.state.name == "FAIL" and not t.user_attrs.get("killed")
                             for t in study.get_trials(deepcopy=False))
    return counts


def to_run(study: optuna.Study) -> int:
    """How many trials are still to start: queued ones plus what the target leaves."""
    c = _states(study)
    counted = c["COMPLETE"] + c["PRUNED"] + c["RUNNING"] + c["WAITING"] + c["FAIL_OWN"]
    return c["WAITING"] + max(0, study.user_attrs["target"] - counted)


def _die_with_parent() -> None:
    """Linux: a trial process gets SIGKILL when the tuner dies, so none outlives a kill."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _launch(name: str, storage: str, workers: int) -> subprocess.Popen:
    env = dict(os.environ)
    # Trials at once share the cores: each gets its part (a thread count set by the user wins).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    cmd = [sys.executable, "-m", "experiments.tools.tune", "--trial", name, "--storage", storage]
    return subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509


def drive(study: optuna.Study, storage: str, workers: int) -> None:
    """Keep `workers` trial processes running until the study has its trials."""
    procs: list[subprocess.Popen] = []
    try:
        while True:
            procs = [p for p in procs if p.poll() is None]
            fail_dead_trials(study)
            # A process started but not yet holding its trial will take one of those to run.
            pids = {(claim_of(t) or {}).get("pid") for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
            pending = to_run(study) - sum(p.pid not in pids for p in procs)
            if pending <= 0 and not procs:
                return
            for _ in range(min(workers - len(procs), pending)):
                procs.append(_launch(study.study_name, storage, workers))
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:  # they saw Ctrl-C too when typed; a kill of the tuner alone reaches
            with contextlib.suppress(OSError):  # them here
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
