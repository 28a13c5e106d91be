"""The harness end to end: loop, record schema, metrics history, W&B offline output, CLI."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_wandb_file

from experiments.harness.config import resolve
from experiments.harness.evaluation import classification_metrics
from experiments.train import main, run, warmup_linear

REPO = Path(__file__).resolve().parents[2]
FAST = ["model=tiny-bert", "train_size=96", "eval_size=48", "batch_size=16", "progress=false"]


def test_run_writes_record_history_and_wandb(runs_dir: Path) -> None:
    rec = run(resolve(["method=full", *FAST, "epochs=2", "eval_every=4", "log_every=2"]))
    run_dir = runs_dir / rec["run_id"]
    on_disk = json.loads((run_dir / "record.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["schema"] == 1
    for key in ("run_id", "method", "config", "metrics", "params", "memory", "time", "env"):
        assert key in on_disk
    assert on_disk["config"]["lr"] == 5e-5 and on_disk["config"]["train_size"] == 96
    assert 0.0 <= on_disk["metrics"]["test/accuracy"] <= 1.0
    assert on_disk["metrics"]["test/n"] == 48
    assert on_disk["steps"] == 12  # 96 / 16 * 2 epochs
    assert on_disk["params"]["trainable"] == on_disk["params"]["total"]
    assert on_disk["memory"]["measured_method"] and on_disk["time"]["train_s"] > 0
    env = on_disk["env"]
    assert env["torch"] and env["transformers"] and "git_commit" in env
    # per-step history: train/loss every log_every steps, val/accuracy every eval_every
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(2, 13, 2))
    assert [r["step"] for r in rows if "val/accuracy" in r] == [4, 6, 8, 12]
    # the offline W&B run holds the same numbers
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    assert len(files) == 1
    wb = read_wandb_file(files[0])
    assert wb["run"]["group"] == "full-rotten_tomatoes" and wb["run"]["job_type"] == "train"
    assert wb["summary"]["test/accuracy"] == pytest.approx(on_disk["metrics"]["test/accuracy"])
    assert wb["summary"]["params/trainable"] == on_disk["params"]["trainable"]
    assert wb["config"]["lr"] == 5e-5 and wb["config"]["config_hash"] == on_disk["config_hash"]
    assert any("train/loss" in h for h in wb["history"])


def test_same_seed_same_result_and_loss_decreases() -> None:
    args = ["method=full", *FAST, "epochs=3", "wandb=disabled", "lr=1e-3", "log_every=1"]
    a, b = run(resolve(args)), run(resolve(args))
    assert a["metrics"] == b["metrics"]
    rows = [json.loads(x) for x in Path(a["record_path"]).with_name("metrics.jsonl")
            .read_text().splitlines() if "train/loss" in x]
    first, last = rows[0]["train/loss"], min(r["train/loss"] for r in rows[-6:])
    assert last < first


def test_head_trains_only_the_head_and_records_it() -> None:
    rec = run(resolve(["method=head", *FAST, "epochs=2", "wandb=disabled"]))
    p = rec["params"]
    assert p["trainable"] == p["head"] == 32 * 2 + 2
    assert rec["method_info"]["path"] == "cached_features"


def test_wandb_failure_keeps_the_local_record(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", boom)
    rec = run(resolve(["method=full", *FAST, "max_steps=2", "wandb=online"]))
    assert rec["status"] == "finished"
    assert "no network" in rec["env"]["wandb"]["error"]
    assert Path(rec["record_path"]).exists()


def test_metrics_and_schedule() -> None:
    import numpy as np

    m = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3)
    assert m["accuracy"] == 0.75 and m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    f = warmup_linear(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(55) == pytest.approx(0.5)
    assert f(100) == 0.0


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [
    ["lr=abc"], ["nosuchkey=1"], ["method=nosuch"], ["data=missing.csv"],
    ["model=./no/such/dir"],
])
def test_cli_bad_input_one_line_exit_2_nothing_written(args: list[str], runs_dir: Path,
                                                       tmp_path: Path) -> None:
    res = _cli("method=full", "model=tiny-bert", *args, cwd=tmp_path)
    assert res.returncode == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in res.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_cli_user_csv(tmp_path: Path, runs_dir: Path) -> None:
    rows = ["text,label"] + [f"sample {i} {'great' if i % 2 else 'awful'},{i % 2}"
                             for i in range(120)]
    (tmp_path / "some.csv").write_text("\n".join(rows))
    res = _cli("method=full", "model=tiny-bert", "data=some.csv", "train_size=64",
               "max_steps=2", "progress=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("full: test/accuracy=")
    (rec,) = runs_dir.glob("*/record.json")
    assert json.loads(rec.read_text())["data"]["label_order"] == ["0", "1"]


def test_help_lists_keys(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    assert "train_size" in capsys.readouterr().out
