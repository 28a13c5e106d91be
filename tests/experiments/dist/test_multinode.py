"""Several machines: the process-count check is per machine, and two torchrun "nodes" on the
loopback interface (one process each, c10d rendezvous) finish the run one process finishes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from experiments.dist import process as distributed

from experiments.dist import launch
from experiments.contract import record as R
from experiments.harness.config import UserError, resolve
from experiments.train import run

REPO = Path(__file__).resolve().parents[3]


def test_the_process_check_counts_this_machines_processes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """2 machines x 1 process on a 1-core machine: WORLD_SIZE=2, LOCAL_WORLD_SIZE=1 passes; 2
    processes on this machine do not."""
    monkeypatch.setattr(launch, "capacity", lambda kind: (1, "CPU cores"))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # joined: skip init
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    info = distributed.setup("ddp", torch.device("cpu"), 8)
    assert (info.world, info.rank) == (2, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match="NPROC=2 processes but this machine has 1 CPU cores"):
        distributed.setup("ddp", torch.device("cpu"), 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(record: dict[str, Any]) -> list[float]:
    rows = Path(record[R.RECORD_PATH]).with_name(R.METRICS_FILE).read_text().splitlines()
    return [json.loads(r)["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.skipif(launch.capacity("cpu")[0] < 2, reason="needs 2 CPU cores")
def test_two_nodes_on_loopback_match_one_process(nodrop: str, tmp_path: Path) -> None:
    args = [f"model={nodrop}", "method=lora", "train_size=64", "eval_size=32", "batch_size=8",
            "max_steps=4", "log_every=1", "classifier_dropout=0", "lr=1e-3", "wandb=disabled",
            "progress=false"]
    one = run(resolve([*args, f"runs_dir={tmp_path / 'one'}"]))
    many_dir, port = tmp_path / "many", _free_port()
    # One runs folder both "machines" see, as on shared storage; only rank 0 writes into it.
    env = {**os.environ, "RUNS_DIR": str(many_dir), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
         "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
         f"--rdzv-id=tunebench-test-{port}", "-m", "experiments.train", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    (path,) = many_dir.glob(f"*/{R.RECORD_FILE}")
    many = json.loads(path.read_text())
    assert many[R.STATUS] == R.FINISHED
    assert many[R.DIST] == {"world_size": 2, "strategy": "ddp", "backend": "gloo"}
    assert _losses(many) == pytest.approx(_losses(one), rel=1e-4)
    assert many[R.METRICS][R.TEST_ACCURACY] == one[R.METRICS][R.TEST_ACCURACY]
    # the predictions, gathered from both machines, are in the test split's order
    a, b = (pd.read_parquet(Path(r[R.RECORD_PATH]).with_name(R.PREDICTIONS_FILE))
            for r in (one, many))
    assert list(b[R.PRED_EXAMPLE]) == list(range(32))
    pd.testing.assert_frame_equal(a, b, rtol=1e-4, atol=1e-5)
    assert (path.parent / R.MODEL_DIR / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(launch.capacity("cpu")[0] < 2, reason="needs 2 CPU cores")
@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_sharded_run_saves_a_model_that_reloads_to_its_predictions(method: str,
                                                                     tmp_path: Path) -> None:
    """FSDP: rank 0 saves the gathered weights, not its shards (state_dict() would return
    shards); the reloaded model gives the recorded predictions."""
    from experiments.harness import artifacts
    from experiments.inputs.data import load_data
    from experiments.tools.predict import predict_probs

    env = {**os.environ, "RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "experiments.train", f"method={method}", "model=tiny-bert", "dist=fsdp",
         "train_size=64", "eval_size=32", "batch_size=8", "max_steps=3", "lr=1e-2",
         "wandb=disabled", "progress=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = tmp_path.glob(f"*/{R.RECORD_FILE}")
    model, tok, manifest = artifacts.load_model(path.parent / R.MODEL_DIR)
    cfg = artifacts.run_config(manifest)
    probs = predict_probs(model, tok, list(load_data(cfg).splits["test"]["text"]), cfg,
                          torch.device("cpu"), precision=manifest[artifacts.M_PRECISION])
    saved = pd.read_parquet(path.parent / R.PREDICTIONS_FILE)
    assert abs(probs[:, 1] - saved[f"{R.PRED_PROB_PREFIX}1"].to_numpy()).max() < 1e-6
