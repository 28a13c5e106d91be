"""End to end on the embedded MiniLM and rotten_tomatoes, small subsamples (what a user runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.harness.config import resolve
from experiments.train import run

SMALL = ["train_size=256", "eval_size=128", "progress=false"]


@pytest.mark.slow
def test_full_on_minilm_learns(runs_dir: Path) -> None:
    rec = run(resolve(["method=full", *SMALL, "epochs=2", "lr=1e-4", "log_every=1"]))
    assert rec["model"]["source"] == "embedded" and rec["model"]["architecture"] == "bert"
    assert 22_000_000 < rec["params"]["total"] < 23_000_000
    assert rec["params"]["trainable"] == rec["params"]["total"]
    run_dir = Path(rec["record_path"]).parent
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 16
    # 16 steps are too few for the final accuracy; the loss must already be falling
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.03
    saved = json.loads((run_dir / "record.json").read_text())
    assert saved["metrics"] == rec["metrics"] and saved["status"] == "finished"


@pytest.mark.slow
def test_head_on_minilm_beats_majority_class() -> None:
    rec = run(resolve(["method=head", *SMALL, "wandb=disabled"]))
    assert rec["params"]["trainable"] == rec["params"]["head"] == 384 * 2 + 2
    assert rec["method_info"]["path"] == "cached_features"
    # the majority class (fresh) is 0.578 of the test split
    assert rec["metrics"]["test/accuracy"] > 0.62
