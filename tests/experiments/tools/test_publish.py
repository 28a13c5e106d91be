"""Publishing runs: records, histories and predictions only, and no absolute path left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.contract import record as R
from experiments.tools.publish import REPO, main


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _run(runs: Path, name: str, status: str) -> Path:
    run = runs / name
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.pt").write_bytes(b"x")
    (run / "model").mkdir()
    (run / R.METRICS_FILE).write_text('{"step": 1}\n')
    (run / R.PREDICTIONS_FILE).write_bytes(b"parquet")
    rec = {R.RUN_ID: name, R.STATUS: status, R.RECORD_PATH: str(run / R.RECORD_FILE),
           R.LAST_CHECKPOINT: {"path": str(run / "checkpoint")},
           R.MODEL: {"location": "/opt/py/lib/python3.11/site-packages/pkg/model"},
           R.ENV: {"argv": [str(REPO / "experiments" / "train.py"), "method=lora"]},
           R.CONFIG: {"runs_dir": str(runs), "data": "/home/someone/data.csv"}}
    (run / R.RECORD_FILE).write_text(json.dumps(rec))
    return run


def test_publish_copies_finished_runs_without_absolute_paths(tmp_path: Path) -> None:
    runs, dest = tmp_path / "runs", tmp_path / "results"
    _run(runs, "a", R.FINISHED)
    _run(runs, "b", R.FAILED)
    assert main([str(runs), str(dest)]) == 0
    assert [p.name for p in dest.iterdir()] == ["a"]
    assert sorted(p.name for p in (dest / "a").iterdir()) == sorted(
        [R.RECORD_FILE, R.METRICS_FILE, R.PREDICTIONS_FILE])
    rec = json.loads((dest / "a" / R.RECORD_FILE).read_text())
    assert not [s for s in _strings(rec) if s.startswith("/")]
    assert rec[R.RECORD_PATH] == f"results/a/{R.RECORD_FILE}"
    assert rec[R.MODEL]["location"] == "site-packages/pkg/model"
    assert rec[R.ENV]["argv"][0] == "experiments/train.py"
    assert rec[R.CONFIG]["data"] == "data.csv" and R.LAST_CHECKPOINT not in rec


def test_publish_needs_a_runs_folder(tmp_path: Path) -> None:
    assert main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
