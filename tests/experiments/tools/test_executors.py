"""Suites on Ray: a real two-node cluster on loopback runs the smoke suite and survives losing a
node; without Ray the default executor runs and EXECUTOR=ray is one line naming the install."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from experiments.contract import record as R
from experiments.tools import executors, suite

REPO = Path(__file__).resolve().parents[3]
RAY = Path(sys.executable).parent / "ray"  # the CLI beside the Python that runs the tests
# Tiny runs: the test is about placement, not training.
TINY = "model=tiny-bert train_size=64 eval_size=32 max_steps=2 batch_size=16 save=none " \
       "progress=false wandb=disabled"
# A throwaway loopback cluster: no auth token, no usage report, a dead node noticed in ~2 s.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
           "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}
NODE = ["--num-cpus=1", "--object-store-memory=100000000", "--node-ip-address=127.0.0.1",
        "--disable-usage-stats"]


def _start_node(args: list[str]) -> int:
    """`ray start` in a process group of its own (its id is returned): the node's daemons
    stay in it, so the node can be stopped without touching anyone else's Ray."""
    proc = subprocess.Popen([str(RAY), "start", *NODE, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **RAY_ENV}, start_new_session=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        _kill_node(proc.pid)
        pytest.fail(f"ray start failed: {out[-2000:]}")
    return proc.pid


def _node_processes(pgid: int) -> list[psutil.Process]:
    """A node's daemons and everything they started (Ray's workers and the runs they run have
    process groups of their own)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found[proc.pid] = proc
                found.update({c.pid: c for c in proc.children(recursive=True)})
        except (OSError, psutil.Error):
            continue
    return list(found.values())


def _kill_node(pgid: int) -> None:
    """SIGKILL every process of a node: what a machine that dies looks like to the others."""
    for proc in _node_processes(pgid):
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A Ray head node on loopback (1 CPU); its address."""
    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's socket paths must stay short, so not under pytest's deep tmp folders.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    pgid = _start_node(["--head", f"--port={port}", "--include-dashboard=false",
                        f"--temp-dir={temp_dir}"])
    try:
        yield f"127.0.0.1:{port}"
    finally:
        _kill_node(pgid)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def worker(head: str) -> Iterator[int]:
    """A second node (1 CPU, a `worker` resource) joined to the head; its process group."""
    pgid = _start_node([f"--address={head}", '--resources={"worker": 1}'])
    try:
        yield pgid
    finally:
        _kill_node(pgid)


def _make_suite(args: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen:
    """`make suite ...` as a user types it (the venv is already set up)."""
    return subprocess.Popen(["make", "-s", "-o", ".venv/.stamp", "suite", *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def _finished(runs_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(p.read_text()) for p in runs_dir.glob(f"*/{R.RECORD_FILE}")]
    return [r for r in records if r[R.STATUS] == R.FINISHED]


def test_make_suite_smoke_on_a_two_node_cluster(head: str, worker: int,
                                                 runs_dir: Path) -> None:
    """Every job of the smoke suite finishes once, placed on both nodes, and says where."""
    proc = _make_suite(["SUITE=smoke", "EXECUTOR=ray", f"ARGS={TINY} --no-reports"],
                       {**RAY_ENV, "RAY_ADDRESS": head})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    records = _finished(runs_dir)
    runs = Counter((r[R.EXPERIMENT], r[R.CONFIG]["seed"]) for r in records)
    assert sorted(runs) == sorted((j.name, j.seed) for j in suite.load_suite("smoke"))
    assert set(runs.values()) == {1}, runs
    env = [r[R.ENV] for r in records]
    assert {e[R.EXECUTOR] for e in env} == {"ray"} and all(e[R.HOST] for e in env)
    assert len({e[R.RAY_NODE_ID] for e in env}) == 2, "jobs were not placed on both nodes"


def test_a_node_that_dies_mid_suite_loses_no_job_and_runs_none_twice(
        head: str, worker: int, tmp_path: Path, runs_dir: Path) -> None:
    """The worker node is killed while it trains a job: Ray retries it on the head, and every
    job finishes exactly once."""
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0, 1], "experiments": [
        {"name": "head", "method": "head"}, {"name": "lora", "method": "lora"}]}))
    proc = _make_suite([f"SUITE={path}", "EXECUTOR=ray", f"ARGS={TINY} --no-reports"],
                       {**RAY_ENV, "RAY_ADDRESS": head})
    killed = False
    while not killed and proc.poll() is None:
        training = [p for p in _node_processes(worker)
                    if "experiments.train" in " ".join(_cmdline(p))]
        if training:
            _kill_node(worker)
            killed = True
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=300)
    assert killed, "the worker node never trained a job; nothing was tested\n" + out[-2000:]
    assert proc.returncode == 0, out[-3000:]
    runs = Counter((r[R.EXPERIMENT], r[R.CONFIG]["seed"]) for r in _finished(runs_dir))
    assert runs == {(n, s): 1 for n in ("head", "lora") for s in (0, 1)}, runs


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def test_without_ray_the_ray_executor_is_one_line(tmp_path: Path, runs_dir: Path) -> None:
    """With `import ray` failing, EXECUTOR=ray is one line naming the install command, exit 2,
    nothing written (test_suite.py runs `make suite SUITE=smoke` itself without Ray)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    proc = _make_suite(["SUITE=smoke", "EXECUTOR=ray"], {"PYTHONPATH": str(site)})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the ray executor needs Ray, an optional extra: "
                      f"{executors.RAY_INSTALL}"], out
    assert not runs_dir.exists()


def test_resources_key_unknown_executor_and_unreachable_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite's `resources:` become the task's options; a GPU cluster gets one GPU a job; a
    RAY_ADDRESS nobody listens on is one line at once (Ray would retry for minutes)."""
    from experiments.harness.config import UserError

    assert executors.job_options(None, False) == {"num_gpus": 0, "num_cpus": 1}
    assert executors.job_options(None, True) == {"num_gpus": 1, "num_cpus": 1}
    assert executors.job_options({"num_cpus": 4}, False) == {"num_gpus": 0, "num_cpus": 4}
    with pytest.raises(UserError, match="unknown key"):
        executors.job_options({"gpus": 1}, True)
    with pytest.raises(UserError, match="unknown executor"):
        executors.make_executor("dask")
    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(UserError, match="cannot reach the Ray cluster"):
        executors.make_executor("ray")


def test_a_trial_on_a_host_ray_lost_is_failed_and_queued_again() -> None:
    """A journal study has no heartbeat: a running trial on a host whose Ray node died is
    failed and handed to the retry; trials on live hosts are left alone."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("ray")

    class Nodes:
        def nodes(self) -> list[dict[str, Any]]:
            return [{"NodeManagerHostname": "gone", "Alive": False},
                    {"NodeManagerHostname": "here", "Alive": True}]

    study = optuna.create_study()
    lost, kept = study.ask(), study.ask()
    lost.set_user_attr("claim", {"trial": lost.number, "host": "gone", "pid": 1, "pid_t": 0})
    kept.set_user_attr("claim", {"trial": kept.number, "host": "here", "pid": 1, "pid_t": 0})
    ray_ex = executors.RayExecutor()
    ray_ex.ray = Nodes()
    retried: list[int] = []
    ray_ex._fail_trials_of_dead_nodes(study, lambda _s, number: retried.append(number))
    states = {t.number: t.state.name for t in study.trials}
    assert retried == [lost.number] and states == {lost.number: "FAIL", kept.number: "RUNNING"}


def test_make_tune_trials_on_a_two_node_cluster(head: str, worker: int, tmp_path: Path,
                                                runs_dir: Path) -> None:
    """`make tune ... EXECUTOR=ray`: one study's trials run as Ray tasks on both nodes, each
    trial once, and the pick is written."""
    words = ["good fine great", "bad awful poor"]
    rows = [f"{words[i % 2]} film number {i},{i % 2}" for i in range(200)]
    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\n" + "\n".join(rows) + "\n")
    presets = tmp_path / "presets.yaml"
    args = f"batch_size=16 eval_batch_size=64 max_length=32 --presets {presets}"
    proc = subprocess.Popen(
        ["make", "-s", "-o", ".venv/.stamp", "tune", "METHOD=lora", f"DATA={texts}",
         "MODEL=tiny-bert", "TRIALS=4", "EXECUTOR=ray", f"ARGS={args}"], cwd=REPO,
        env={**os.environ, **RAY_ENV, "RAY_ADDRESS": head}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    # the tuner keeps its trials' runs in a folder of their own under the runs folder
    records = [json.loads(p.read_text()) for p in runs_dir.rglob(R.RECORD_FILE)]
    trials = Counter(r[R.TUNE]["trial"] for r in records if r.get(R.TUNE))
    assert trials == {n: 1 for n in range(4)}, trials
    env = [r[R.ENV] for r in records]
    assert {e[R.EXECUTOR] for e in env} == {"ray"}
    assert len({e[R.RAY_NODE_ID] for e in env}) == 2, "trials were not placed on both nodes"
    assert presets.is_file()


def test_trial_tasks_that_all_fail_stop_the_driver(capsys: pytest.CaptureFixture) -> None:
    """Nodes where no trial process can start (each exits 1 before asking for a trial) stop
    the driver after a few, rather than resubmitting forever."""
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("ray")

    class FakeRay:  # Ray's calls the driver makes; every task ends at once with exit code 1
        exceptions = type("E", (), {"RayError": RuntimeError})

        def __getattr__(self, name: str) -> Any:
            return {"init": lambda **_: None, "shutdown": lambda: None, "nodes": lambda: [],
                    "cluster_resources": lambda: {"CPU": 2.0}, "get": lambda _ref: 1,
                    "wait": lambda refs, **_: (refs, [])}[name]

        def remote(self, *_: Any) -> FakeRay:
            return self

        def options(self, **_: Any) -> FakeRay:
            return self

    study = optuna.create_study()
    study.set_user_attr("target", 3)
    ray_ex = executors.RayExecutor()
    ray_ex.ray = FakeRay()
    ray_ex.drive(study, "study.journal", 1)
    err = capsys.readouterr().err
    assert "trial processes in a row failed" in err and study.trials == [], err
