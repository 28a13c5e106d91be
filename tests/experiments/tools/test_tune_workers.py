"""The tuner's liveness check: only a trial's own claim, naming a dead process, fails it."""

from __future__ import annotations

import subprocess
import sys

import optuna

from experiments.tools import tune_workers as W


def _dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has exited."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


def test_only_a_trials_own_claim_of_a_dead_process_fails_it() -> None:
    """Unclaimed (its process is starting), alive, and a retry that still carries the killed
    trial's claim: left running. Its own claim naming a dead process: failed and queued again."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    dead_pid, dead_t = _dead_pid()
    unclaimed, alive, dead = study.ask(), study.ask(), study.ask()
    alive.set_user_attr(W.CLAIM, W.claim_attr(alive.number))
    dead.set_user_attr(W.CLAIM, {**W.claim_attr(dead.number), "pid": dead_pid, "pid_t": dead_t})
    assert W.fail_dead_trials(study) == [dead.number]
    states = {t.number: t.state.name for t in study.trials}
    assert states[unclaimed.number] == states[alive.number] == "RUNNING"
    assert states[dead.number] == "FAIL"
    retry = study.ask()  # the queued retry, with the killed trial's attributes copied
    frozen = study.trials[retry.number]
    assert frozen.system_attrs["failed_trial"] == dead.number
    assert frozen.user_attrs[W.CLAIM]["pid"] == dead_pid  # inherited, not its own
    assert W.fail_dead_trials(study) == []
    assert study.trials[retry.number].state.name == "RUNNING"
