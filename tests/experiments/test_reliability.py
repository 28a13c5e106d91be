"""Reliability: kill and resume exactly, faults leave honest records, bad input writes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import methods.model as model_mod
from experiments.harness.config import UserError, resolve
from experiments.train import NonFiniteLoss, run

REPO = Path(__file__).resolve().parents[2]
BASE = ["method=full", "model=tiny-bert", "train_size=320", "eval_size=64", "batch_size=16",
        "epochs=3", "lr=1e-3", "log_every=1", "eval_every=7", "checkpoint_every=5",
        "wandb=disabled", "progress=false"]


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_sigkill_then_resume_equals_an_uninterrupted_run(runs_dir: Path) -> None:
    ref = run(resolve(BASE))
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *BASE], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_dir = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        for progress in runs_dir.glob("*/checkpoint/progress.json"):
            if progress.parent.parent.name != ref["run_id"] and \
                    json.loads(progress.read_text())["step"] >= 15:
                killed_dir = progress.parent.parent
        if killed_dir is not None:
            proc.send_signal(signal.SIGKILL)  # mid-epoch 2 of 3, no chance to clean up
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_dir is not None, "the run finished before it could be killed"
    assert json.loads((killed_dir / "record.json").read_text())["status"] == "running"
    resumed = run(resolve(["resume=auto", *BASE]))
    assert resumed["run_id"] == killed_dir.name and resumed["status"] == "finished"
    assert resumed["metrics"]["test/accuracy"] == ref["metrics"]["test/accuracy"]
    assert resumed["metrics"]["val/accuracy"] == ref["metrics"]["val/accuracy"]
    assert _losses(killed_dir) == _losses(runs_dir / ref["run_id"])  # bit-identical on CPU
    assert not (killed_dir / "checkpoint").exists()  # a finished run drops its checkpoint


def _fail_at(monkeypatch: pytest.MonkeyPatch, call: int, how: str) -> None:
    """Make the model's training forward misbehave on its `call`-th call."""
    real = model_mod.Classifier.forward
    calls = {"n": 0}

    def forward(self: model_mod.Classifier, *a: object, **k: object) -> object:
        out = real(self, *a, **k)
        if self.training:  # a training step (the harness computes the loss from the logits)
            calls["n"] += 1
            if calls["n"] == call:
                if how == "nan":
                    out.logits = out.logits * float("nan")
                elif how == "interrupt":
                    raise KeyboardInterrupt
                else:
                    raise RuntimeError("simulated crash")
        return out

    monkeypatch.setattr(model_mod.Classifier, "forward", forward)


def _only_record() -> tuple[Path, dict]:
    """The path and content of the single run record this test wrote."""
    (record,) = Path(os.environ["RUNS_DIR"]).glob("*/record.json")
    return record, json.loads(record.read_text())


def test_nan_loss_stops_with_a_failed_record(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_at(monkeypatch, 8, "nan")
    with pytest.raises(NonFiniteLoss):
        run(resolve(BASE))
    record, rec = _only_record()
    assert rec["status"] == "failed" and "loss is nan" in rec["error"]
    assert rec["failed_at_step"] == 7 and rec["last_checkpoint"]["step"] == 5
    assert (record.parent / "checkpoint" / "state.pt").exists()


def test_a_crash_mid_run_writes_a_failed_record(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_at(monkeypatch, 3, "crash")
    with pytest.raises(RuntimeError):
        run(resolve(BASE))
    record, rec = _only_record()
    assert rec["status"] == "failed" and rec["config"]["lr"] == 1e-3
    assert "simulated crash" in (record.parent / "error.txt").read_text()


def test_ctrl_c_writes_cancelled_and_a_checkpoint_then_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_at(monkeypatch, 9, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        run(resolve(BASE))
    record, rec = _only_record()
    assert rec["status"] == "cancelled" and rec["last_checkpoint"]["step"] == 8
    monkeypatch.undo()
    monkeypatch.setenv("RUNS_DIR", str(record.parent.parent))
    done = run(resolve([f"resume={rec['run_id']}", "progress=false"]))
    assert done["status"] == "finished" and done["steps"] == 60
    assert [s for s, _ in _losses(record.parent)] == list(range(1, 61))


def test_resume_with_nothing_to_resume_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no unfinished run"):
        run(resolve(["resume=auto", *BASE]))
    with pytest.raises(UserError, match="no run 'nosuch'"):
        run(resolve(["resume=nosuch", *BASE]))


def test_concurrent_runs_get_distinct_ids(runs_dir: Path) -> None:
    args = [sys.executable, "-m", "experiments.train", "method=head", "model=tiny-bert",
            "train_size=64", "eval_size=32", "max_steps=2", "progress=false", "wandb=disabled"]
    procs = [subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    records = [json.loads(p.read_text()) for p in runs_dir.glob("*/record.json")]
    assert len({r["run_id"] for r in records}) == 2
    assert all(r["status"] == "finished" for r in records)


@pytest.mark.parametrize(("args", "needle"), [
    (["method=lora", "lora.rank=0"], "lora.rank=0"),
    (["method=lora", "lora.rank=100"], "exceeds"),
    (["method=lora", "lora.targets=nosuchlayer"], "matches no linear layer"),
    (["method=soft_prompt", "soft_prompt.prompt_length=0"], "prompt_length"),
    (["method=full", "data=nope.jsonl"], "not found"),
    (["method=full", "train_size=8", "batch_size=32"], "fewer than batch_size"),
])
def test_bad_input_exit_2_one_line_nothing_written(args: list[str], needle: str,
                                                   runs_dir: Path, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "experiments.train", "model=tiny-bert", *args],
                         env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("Loading")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_wandb_online_without_a_key_falls_back_to_offline(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no key
    rec = run(resolve(["method=full", "model=tiny-bert", "train_size=64", "eval_size=32",
                       "max_steps=2", "progress=false", "wandb=auto"]))
    assert rec["status"] == "finished"
    wb = rec["env"]["wandb"]
    assert wb["mode"] == "offline" and "online start" in wb["error"]
    assert list(Path(rec["record_path"]).parent.glob("wandb/offline-run-*/*.wandb"))
