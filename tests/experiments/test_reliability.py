"""Reliability: kill and resume exactly, faults leave honest records, bad input writes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import on_training_forward

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
    def act(out: Any) -> None:
        if how == "nan":
            out.logits = out.logits * float("nan")
        elif how == "interrupt":
            raise KeyboardInterrupt
        else:
            raise RuntimeError("simulated crash")

    on_training_forward(monkeypatch, call, act)


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


def _sigint_after_forward(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Send this process a real SIGINT right after the `call`-th training forward: mid-step,
    with that forward's dropout masks already drawn (as a Ctrl-C at a random moment would)."""
    on_training_forward(monkeypatch, call, lambda out: os.kill(os.getpid(), signal.SIGINT))


def test_sigint_mid_step_then_resume_equals_an_uninterrupted_run(runs_dir: Path) -> None:
    # Dropout is on (tiny BERT's 0.1 and the head's 0.1): a checkpoint of a half-done step
    # would resume with other dropout masks, so only a step-boundary checkpoint is exact.
    ref = run(resolve(BASE))
    with pytest.MonkeyPatch.context() as mp:
        _sigint_after_forward(mp, 9)
        with pytest.raises(KeyboardInterrupt):
            run(resolve(BASE))
    (cut,) = [d for d in runs_dir.iterdir() if d.name != ref["run_id"]]
    rec = json.loads((cut / "record.json").read_text())
    done = run(resolve(["resume=auto", *BASE]))
    assert done["run_id"] == cut.name and done["steps"] == ref["steps"] == 60
    pd = pytest.importorskip("pandas")
    mine, theirs = (pd.read_parquet(d / "predictions.parquet") for d in (cut, runs_dir /
                                                                          ref["run_id"]))
    assert mine.equals(theirs)  # every test probability, bit for bit
    assert done["metrics"] == ref["metrics"]
    assert _losses(cut) == _losses(runs_dir / ref["run_id"])
    assert rec["status"] == "cancelled" and rec["last_checkpoint"]["step"] == 9  # step 9 ended


def test_an_interrupt_inside_a_step_keeps_the_last_boundary_checkpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A KeyboardInterrupt that did not wait for the boundary (a second Ctrl-C) leaves the state
    # mid-step: the cancel path must not save it; the last periodic checkpoint stays.
    _fail_at(monkeypatch, 9, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        run(resolve(BASE))
    record, rec = _only_record()
    assert rec["status"] == "cancelled" and rec["last_checkpoint"]["step"] == 5
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


def _crashed_run(monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A run that failed at step 8 with its checkpoint of step 5: something to resume."""
    with pytest.MonkeyPatch.context() as mp:
        _fail_at(mp, 8, "crash")
        with pytest.raises(RuntimeError):
            run(resolve(BASE))
    record, rec = _only_record()
    return record.parent, rec


def test_a_second_writer_of_a_run_exits_2_naming_the_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.harness.lock import RUN_LOCK_FILE, FileLock

    run_dir, _ = _crashed_run(monkeypatch)
    before = (run_dir / "metrics.jsonl").read_text()
    writer = FileLock(run_dir / RUN_LOCK_FILE)  # this process plays the run's running writer
    assert writer.acquire()
    try:
        res = subprocess.run([sys.executable, "-m", "experiments.train", "resume=auto", *BASE],
                             env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        writer.release()
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and f"pid {os.getpid()} on host" in lines[0]
    assert (run_dir / "metrics.jsonl").read_text() == before  # the second writer wrote nothing
    done = run(resolve(["resume=auto", *BASE]))  # once the writer is gone, resume works
    assert done["status"] == "finished"


def test_resume_with_keys_that_differ_from_the_run_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, rec = _crashed_run(monkeypatch)
    before = (run_dir / "record.json").read_text()
    with pytest.raises(UserError) as err:
        run(resolve([f"resume={rec['run_id']}", "epochs=5", "lr=0.5"]))
    assert "epochs=5" in str(err.value) and "lr=0.5" in str(err.value)
    assert (run_dir / "record.json").read_text() == before
    # Keys that only change how the run reports may change; keys equal to the run's are fine.
    done = run(resolve([f"resume={rec['run_id']}", "progress=false", "wandb=disabled",
                        "lr=1e-3", "method=full"]))
    assert done["status"] == "finished" and done["config"]["epochs"] == 3


def test_ctrl_c_before_the_record_exists_says_nothing_was_written(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        runs_dir: Path) -> None:
    import experiments.train as train

    def interrupted(cfg: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_data", interrupted)
    assert train.main(BASE) == 130
    err = capsys.readouterr().err
    assert "nothing was written" in err and "record" not in err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


@pytest.mark.parametrize("where", ["under-a-file", "read-only-fs"])
def test_an_unwritable_runs_folder_fails_before_any_loading(
        where: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    import experiments.train as train

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "runs" if where == "under-a-file" else Path("/proc/tunebench-runs")
    monkeypatch.setenv("RUNS_DIR", str(target))
    monkeypatch.setattr(train, "load_data", lambda cfg: pytest.fail("data loaded first"))
    assert train.main(BASE) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: runs folder"), lines


def test_a_full_disk_leaves_no_half_written_model(monkeypatch: pytest.MonkeyPatch,
                                                  runs_dir: Path) -> None:
    import errno

    import safetensors.torch

    def full_disk(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"\0" * 64)  # part of the file, then no space left
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(resolve(["method=head", "model=tiny-bert", "train_size=64", "eval_size=32",
                     "max_steps=2", "progress=false", "wandb=disabled"]))
    (run_dir,) = runs_dir.iterdir()
    assert json.loads((run_dir / "record.json").read_text())["status"] == "failed"
    assert not (run_dir / ".model.tmp").exists() and not (run_dir / "model").exists()
