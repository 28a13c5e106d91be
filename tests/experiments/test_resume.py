"""Resuming: `resume=auto` finds only a run of the same config and seed, and a resumed run
continues the same W&B run (offline: a second segment with the same id, marked resumed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import on_training_forward, read_wandb_file

from experiments.contract import record as R
from experiments.harness.config import UserError, resolve
from experiments.train import run

BASE = ["method=full", "model=tiny-bert", "train_size=64", "eval_size=16", "batch_size=16",
        "epochs=2", "lr=1e-3", "log_every=1", "checkpoint_every=2", "progress=false",
        "wandb=offline"]


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Ctrl-C on the model's `call`-th training-step forward."""
    def interrupt(out: object) -> None:
        raise KeyboardInterrupt

    on_training_forward(monkeypatch, call, interrupt)


def test_resume_auto_matches_the_seed_and_continues_the_wandb_run(
        monkeypatch: pytest.MonkeyPatch, runs_dir: Path) -> None:
    with monkeypatch.context() as m:
        # Inside step 5: an interrupt raised mid-step (as a second Ctrl-C is) keeps the last
        # boundary checkpoint, step 4 (checkpoint_every=2), not the half-done step.
        _interrupt_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            run(resolve([*BASE, "seed=3"]))
    (cancelled,) = [json.loads(p.read_text()) for p in runs_dir.glob("*/record.json")]
    assert cancelled[R.STATUS] == R.CANCELLED and cancelled[R.LAST_CHECKPOINT]["step"] == 4
    # the config hash leaves the seed out, so another seed's run has the same hash: not it
    with pytest.raises(UserError, match="this config and seed=4"):
        run(resolve([*BASE, "seed=4", "resume=auto"]))
    done = run(resolve([*BASE, "seed=3", "resume=auto"]))
    assert done[R.RUN_ID] == cancelled[R.RUN_ID] and done[R.STATUS] == R.FINISHED
    assert done[R.STEPS] == 8 and len(done[R.RESUMED]) == 1
    assert done[R.ENV][R.WANDB][R.RESUMED] is True
    # W&B: one run id, two segments in the run folder; the second is marked resumed and holds
    # the steps after the checkpoint and the final summary
    files = sorted((runs_dir / done[R.RUN_ID] / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 2
    first, second = (read_wandb_file(f) for f in files)
    assert first["run"]["id"] == second["run"]["id"] == done[R.RUN_ID]
    assert (first["run"]["resume"], second["run"]["resume"]) == (False, True)
    assert [h["_step"] for h in second["history"] if "train/loss" in h] == [5, 6, 7, 8]
    assert second["summary"]["test/accuracy"] == pytest.approx(
        done[R.METRICS][R.TEST_ACCURACY])
    assert done[R.ENV][R.WANDB]["path"].endswith(done[R.RUN_ID])
