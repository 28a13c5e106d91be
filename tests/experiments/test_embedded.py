"""End to end on the embedded MiniLM and rotten_tomatoes, small subsamples (what a user runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.config import resolve
from experiments.train import run

SMALL = ["train_size=256", "eval_size=128", "progress=false"]


@pytest.mark.slow
def test_full_on_minilm_learns(runs_dir: Path) -> None:
    rec = run(resolve(["method=full", *SMALL, "epochs=1", "lr=1e-4"]))
    assert rec["model"]["source"] == "embedded" and rec["model"]["architecture"] == "bert"
    assert 22_000_000 < rec["params"]["total"] < 23_000_000
    assert rec["params"]["trainable"] == rec["params"]["total"]
    # 8 steps of full fine-tuning already beat chance on this balanced-ish task
    assert rec["metrics"]["test/accuracy"] > 0.6
    saved = json.loads(Path(rec["record_path"]).read_text())
    assert saved["metrics"] == rec["metrics"]


@pytest.mark.slow
def test_head_on_minilm_beats_majority_class() -> None:
    rec = run(resolve(["method=head", *SMALL, "wandb=disabled"]))
    assert rec["params"]["trainable"] == rec["params"]["head"] == 384 * 2 + 2
    assert rec["method_info"]["path"] == "cached_features"
    # the majority class (fresh) is 0.578 of the test split
    assert rec["metrics"]["test/accuracy"] > 0.62
