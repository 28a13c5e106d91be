"""Two suites started together into one runs folder run each job once: a job is claimed (a lock
in the runs folder) before it starts, and a suite that finds a job claimed waits for it and
takes that run's record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SUITE = """
seeds: [0, 1]
defaults: {model: tiny-bert, train_size: 64, eval_size: 32, max_steps: 2, progress: false,
           wandb: disabled, save: none}
experiments:
  - {name: head, method: head}
"""


def test_two_concurrent_suites_run_each_job_once(tmp_path: Path, runs_dir: Path) -> None:
    suite = tmp_path / "two.yaml"
    suite.write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNS_DIR": str(runs_dir)}
    cmd = [sys.executable, "-m", "experiments.tools.suite", str(suite), "--no-reports"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    records = [json.loads(p.read_text()) for p in runs_dir.glob("*/record.json")]
    keys = [(r["config_hash"], r["config"]["seed"]) for r in records]
    assert len(keys) == 2 and len(set(keys)) == 2  # 2 jobs, each run once (not 4 runs)
    # Both suites' tables show both jobs with the one run of each.
    for out, _ in outs:
        assert out.count(" finished ") + out.count(" done ") >= 2, out
