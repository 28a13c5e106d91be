"""The record's types (experiments/contract/record.py) fit what the harness writes and results/."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.contract import record as R

REPO = Path(__file__).resolve().parents[3]


def test_typed_keys_are_the_record_constants() -> None:
    assert set(R.Metrics.__annotations__) >= {R.TEST_ACCURACY, R.VAL_ACCURACY, R.TRAIN_LOSS_FINAL}
    assert set(R.Record.__annotations__) >= {R.RUN_ID, R.PARAMS, R.METRICS, R.MEMORY, R.TIME}
    assert not R.Record.__total__ and not R.Metrics.__total__  # tolerant of added keys


def test_every_published_record_fits_the_types() -> None:
    paths = sorted(REPO.glob("results/*/*/record.json"))
    assert paths
    for path in paths:
        assert R.type_errors(json.loads(path.read_text())) == [], path


def test_a_wrong_type_is_named() -> None:
    record = {R.METRICS: {R.TEST_ACCURACY: "high", R.TEST_N: 10}, R.TIME: {R.TOTAL_S: 1}}
    assert R.type_errors(record) == [f"metrics.{R.TEST_ACCURACY}='high' is not float"]


def test_a_run_writes_a_record_that_fits(tmp_path: Path) -> None:
    from experiments.harness.config import resolve
    from experiments.train import run

    record = run(resolve(["method=head", "model=tiny-bert", "train_size=32", "eval_size=16",
                          "max_steps=2", "wandb=disabled", "progress=false", "save=none",
                          f"runs_dir={tmp_path}"]))
    on_disk = json.loads(Path(record[R.RECORD_PATH]).read_text())
    assert R.type_errors(on_disk) == [] and on_disk[R.SCHEMA_KEY] == R.SCHEMA
