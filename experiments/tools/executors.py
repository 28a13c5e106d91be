"""Where a suite's jobs run: one after another here (the default), or as Ray tasks on a cluster.

The suite keeps its plan, resume and "already done" logic; an executor only places and runs the
pending jobs it is given and reports each one as it ends. `RayExecutor` hands every job to Ray
(https://docs.ray.io), an engine people already run on clusters, rather than a scheduler of our
own: Ray picks a node with the resources the job asks for, and retries a job whose node died on
another node. The job itself runs `suite.run_job` there, which writes its record into the runs
folder as any run does, so that folder must be shared storage (NFS, a mounted bucket) on a real
cluster. Ray is an optional extra; only `RayExecutor` imports it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from experiments.contract import record as R
from experiments.harness.config import UserError

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'tunebench[ray]' (in this repo: .venv/bin/pip install ray)"
# A suite file's `resources:` keys, as Ray's task options spell them.
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources")
# Ray retries a task whose worker or node died this many times, on whichever node has room.
MAX_RETRIES = 3


class Job(Protocol):
    """What an executor needs of a suite job (experiments.tools.suite.Job)."""

    name: str
    seed: int
    status: str
    detail: dict[str, Any]


RunOne = Callable[[Any, Path], None]  # suite.run_job: runs a job, fills its status and detail
Report = Callable[[Any], None]  # called once per job, as it ends, with its outcome filled in


class LocalExecutor:
    """Each job in turn, in its own process on this machine; needs no Ray."""

    name = "local"

    def run(self, jobs: Sequence[Job], runs_dir: Path, run_one: RunOne, report: Report) -> None:
        """Run the jobs in order, reporting each as it ends."""
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.name} seed={job.seed}", flush=True)
            run_one(job, runs_dir)
            report(job)

    def drive(self, study: Any, storage: str, workers: int) -> None:
        """A tuning study's trials as `workers` processes here (the tuner's own driver)."""
        from experiments.tools.tune_workers import drive

        drive(study, storage, workers)


def import_ray() -> Any:
    """The ray module, or a UserError naming the install command."""
    try:
        import ray
    except ImportError:
        raise UserError(f"the ray executor needs Ray, an optional extra: {RAY_INSTALL}") from None
    return ray


def job_options(spec: dict[str, Any] | None, cluster_has_gpu: bool) -> dict[str, Any]:
    """Ray task options for one job: the suite's `resources:`, else one GPU where the cluster
    has GPUs, else one CPU core."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(RESOURCE_KEYS))
    if unknown:
        raise UserError(f"resources: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(RESOURCE_KEYS)}")
    if "num_gpus" not in spec:
        spec["num_gpus"] = 1 if cluster_has_gpu else 0
    spec.setdefault("num_cpus", 1)
    return spec


def _check_reachable(address: str) -> None:
    """A UserError at once when RAY_ADDRESS's host:port refuses connections (Ray itself keeps
    retrying for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # ray://, auto: Ray's own to resolve
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc}); start "
                        f"it (`ray start --head --port={port}`) or unset RAY_ADDRESS for a "
                        f"local Ray") from None


def _on_node(run_one: RunOne, job: Job, runs_dir: Path) -> Job:
    """The Ray task's body: run the job on this node, telling its record where it ran."""
    import ray

    # The run's process inherits these; environment variables, not config keys, so a job's
    # config hash is the same wherever it lands.
    os.environ[R.EXECUTOR_ENV] = "ray"
    os.environ[R.RAY_NODE_ID_ENV] = ray.get_runtime_context().get_node_id()
    run_one(job, runs_dir)
    return job


class RayExecutor:
    """Every job as a Ray task on the cluster named by RAY_ADDRESS, else on a local Ray."""

    name = "ray"

    def __init__(self, resources: dict[str, Any] | None = None) -> None:
        self.ray = import_ray()  # fail early, before anything is planned or written
        self.resources = resources
        job_options(resources, False)  # reject a bad `resources:` before Ray starts
        if os.environ.get("RAY_ADDRESS"):
            _check_reachable(os.environ["RAY_ADDRESS"])

    def _connect(self) -> str:
        """Join RAY_ADDRESS's cluster, or start a local Ray for this command; say which."""
        address = os.environ.get("RAY_ADDRESS")
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address:
            self.ray.init(address=address, **quiet)
            return f"the Ray cluster at {address}"
        self.ray.init(address="local", include_dashboard=False, **quiet)
        return "a local Ray (set RAY_ADDRESS to use a cluster)"

    def run(self, jobs: Sequence[Job], runs_dir: Path, run_one: RunOne, report: Report) -> None:
        """Submit every job at once; report each as it ends, whichever node ran it."""
        if not jobs:
            return
        where = self._connect()
        try:
            options = self._options()
            print(f"ray: {len(jobs)} jobs on {where}, each asking {options}", flush=True)
            task = self.ray.remote(_on_node).options(
                **options, max_retries=MAX_RETRIES, retry_exceptions=False,
                scheduling_strategy="SPREAD")
            runs_dir = runs_dir.resolve()  # the same path on every node: shared storage
            pending = {task.remote(run_one, job, runs_dir): job for job in jobs}
            for i in range(1, len(jobs) + 1):
                [ref], _ = self.ray.wait(list(pending), num_returns=1)
                job = self._outcome(ref, pending.pop(ref))
                print(f"[{i}/{len(jobs)}] {job.name} seed={job.seed} {job.status}", flush=True)
                report(job)
        finally:
            self.ray.shutdown()

    def _options(self) -> dict[str, Any]:
        return job_options(self.resources, self.ray.cluster_resources().get("GPU", 0) > 0)

    def _outcome(self, ref: Any, job: Job) -> Job:
        """The job with its task's outcome (a copy came back from the node), or marked failed
        when Ray gave up on it."""
        try:
            ran = self.ray.get(ref)
            job.status, job.detail = ran.status, ran.detail
        except self.ray.exceptions.RayError as exc:
            job.status = "failed"
            job.detail = {"returncode": None, "output": f"ray: {str(exc)[-2000:]}"}
        return job

    def drive(self, study: Any, storage: str, workers: int) -> None:
        """A tuning study's trials as Ray tasks until the study has them all; `workers` > 1
        caps how many run at once, else as many as the cluster holds.

        The study, not Ray, is the record of what is left: a task gets no Ray retry, and a
        trial whose node died is failed and queued again with its learning rate (the tuner's
        retry), which the next task picks up."""
        from optuna.trial import TrialState

        from experiments.tools import tune_workers as W

        where = self._connect()
        try:
            options = self._options()
            cap = workers if workers > 1 else self._slots(options)
            print(f"ray: trials on {where}, up to {cap} at once, each asking {options}",
                  flush=True)
            task = self.ray.remote(_trial_on_node).options(
                **options, max_retries=0, scheduling_strategy="SPREAD")
            if "://" not in storage:  # a journal file: the same path on every node
                storage = str(Path(storage).resolve())
            args = (study.study_name, storage, str(R.runs_dir().resolve()))
            inflight: list[Any] = []
            bad = 0  # trial processes in a row that exited non-zero or died
            while True:
                if inflight:
                    done, inflight = self.ray.wait(inflight, num_returns=len(inflight),
                                                   timeout=1.0)
                    bad = self._trials_ended(done, bad)
                # Nodes that cannot start a trial at all must not make this loop resubmit
                # forever; the tuner then reports what the study has.
                if bad >= cap + MAX_RETRIES:
                    print(f"error: {bad} trial processes in a row failed; see their output "
                          f"above and the Ray logs", file=sys.stderr, flush=True)
                    return
                W.fail_dead_trials(study)  # trial processes of this host that died
                self._fail_trials_of_dead_nodes(study, W.retry)
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                # submitted tasks whose trial process has not asked for its trial yet
                waiting = max(0, len(inflight) - running)
                pending = W.to_run(study) - waiting
                if pending <= 0 and not inflight:
                    return
                inflight += [task.remote(*args)
                             for _ in range(max(0, min(cap - len(inflight), pending)))]
                if not inflight:
                    time.sleep(1.0)
        finally:
            self.ray.shutdown()

    def _slots(self, options: dict[str, Any]) -> int:
        """How many jobs with these options the cluster holds at once."""
        total = self.ray.cluster_resources()
        fits = [total.get(k, 0) / options[o] for k, o in (("CPU", "num_cpus"),
                                                          ("GPU", "num_gpus")) if options[o]]
        return max(1, int(min(fits, default=1)))

    def _trials_ended(self, refs: list[Any], bad: int) -> int:
        """Say which ended trial tasks went wrong; the count of bad ones in a row."""
        for ref in refs:
            try:
                code = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                code = f"lost ({type(exc).__name__}); its trial is queued again"
            if code == 0:
                bad = 0
            else:
                bad += 1
                print(f"ray: a trial process exited {code}", flush=True)
        return bad

    def _fail_trials_of_dead_nodes(self, study: Any, retry: Callable[[Any, int], None]) -> None:
        """Running trials on hosts Ray has lost (a journal file has no heartbeat): failed and
        queued again; this host's own dead trials are the tuner's pid check's."""
        from optuna.trial import TrialState

        nodes = self.ray.nodes()
        alive = {n["NodeManagerHostname"] for n in nodes if n["Alive"]}
        lost = {n["NodeManagerHostname"] for n in nodes if not n["Alive"]} - alive
        storage = study._storage  # Optuna's retry callback works on the storage too
        from experiments.tools.tune_workers import claim_of

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (claim_of(t) or {}).get("host") not in lost:
                continue
            storage.set_trial_user_attr(t._trial_id, "killed", True)  # before: FAIL is final
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                retry(study, t.number)


def _trial_on_node(study_name: str, storage: str, runs_dir: str) -> int:
    """The Ray task of one trial: the tuner's own trial process, on this node."""
    import ray

    env = {**os.environ, "RUNS_DIR": runs_dir, R.EXECUTOR_ENV: "ray",
           R.RAY_NODE_ID_ENV: ray.get_runtime_context().get_node_id()}
    cmd = [sys.executable, "-m", "experiments.tools.tune", "--trial", study_name,
           "--storage", storage]
    return subprocess.run(cmd, env=env).returncode


def make_executor(name: str | None, resources: dict[str, Any] | None = None) -> Any:
    """The executor a command line named (local when none)."""
    name = name or "local"
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(resources)
    raise UserError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
