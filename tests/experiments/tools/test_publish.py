"""Publishing runs: records, histories and predictions only, and no absolute path left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.contract import record as R
from experiments.tools.publish import PROB_DECIMALS, REPO, main

PREDICTIONS = pd.DataFrame({R.PRED_EXAMPLE: [0, 1, 2], R.PRED_LABEL: [0, 1, 1],
                            R.PRED_PREDICTED: [0, 1, 0],
                            f"{R.PRED_PROB_PREFIX}0": [0.912345, 0.1234567, 0.5004999],
                            f"{R.PRED_PROB_PREFIX}1": [0.087655, 0.8765433, 0.4995001]})


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _run(runs: Path, name: str, status: str, dirty: bool | None = False,
         commit: str = "c0ffee") -> Path:
    run = runs / name
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.pt").write_bytes(b"x")
    (run / "model").mkdir()
    (run / R.METRICS_FILE).write_text('{"step": 1}\n')
    PREDICTIONS.to_parquet(run / R.PREDICTIONS_FILE, index=False)
    rec = {R.RUN_ID: name, R.STATUS: status, R.RECORD_PATH: str(run / R.RECORD_FILE),
           R.LAST_CHECKPOINT: {"path": str(run / "checkpoint")},
           R.MODEL: {"location": "/opt/py/lib/python3.11/site-packages/pkg/model"},
           R.ENV: {"argv": [str(REPO / "experiments" / "train.py"), "method=lora"],
                   R.GIT_COMMIT: commit, R.GIT_DIRTY: dirty},
           R.CONFIG: {"runs_dir": str(runs), "data": "/home/someone/data.csv"},
           R.ARTIFACTS: {R.ARTIFACT_FILES: {R.PREDICTIONS_FILE: 1, "model/x": 5},
                         R.ARTIFACT_TOTAL_BYTES: 6}}
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


def test_publish_refuses_dirty_or_mixed_commit_runs_before_writing(
        tmp_path: Path, capsys: Any) -> None:
    runs, dest = tmp_path / "runs", tmp_path / "results"
    _run(runs, "a", R.FINISHED)
    _run(runs, "b", R.FINISHED, dirty=True)
    _run(runs, "c", R.FAILED, dirty=True)  # not published, so never judged
    assert main([str(runs), str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of 2 runs" in err and "--allow-dirty" in err
    assert not dest.exists()
    assert main([str(runs), str(dest), "--allow-dirty"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b"]

    mixed = tmp_path / "mixed"
    _run(mixed, "a", R.FINISHED, commit="aaaaaaa1")
    _run(mixed, "b", R.FINISHED, commit="bbbbbbb2")
    assert main([str(mixed), str(tmp_path / "out")]) == 2
    assert "2 commits (aaaaaaa, bbbbbbb)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([str(mixed), str(tmp_path / "out"), "--allow-commits"]) == 0

    unknown = tmp_path / "unknown"  # outside a git checkout: git_dirty is None, not clean
    _run(unknown, "a", R.FINISHED, dirty=None)
    assert main([str(unknown), str(tmp_path / "out2")]) == 2
    assert main([str(unknown), str(tmp_path / "out2"), "--bogus"]) == 2


def test_published_predictions_round_probabilities_and_keep_classes_exact(
        tmp_path: Path) -> None:
    """The committed copy's probabilities are rounded (the record says to how many decimals,
    and its artifacts give the copy's size); labels and predicted classes are untouched."""
    runs, dest = tmp_path / "runs", tmp_path / "results"
    _run(runs, "a", R.FINISHED)
    assert main([str(runs), str(dest)]) == 0
    out = pd.read_parquet(dest / "a" / R.PREDICTIONS_FILE)
    probs = [c for c in PREDICTIONS if c.startswith(R.PRED_PROB_PREFIX)]
    pd.testing.assert_frame_equal(out.drop(columns=probs), PREDICTIONS.drop(columns=probs))
    assert (out[probs] - PREDICTIONS[probs]).abs().to_numpy().max() <= 0.5 * 10**-PROB_DECIMALS
    assert out[f"{R.PRED_PROB_PREFIX}0"].tolist() == [0.912, 0.123, 0.5]
    rec = json.loads((dest / "a" / R.RECORD_FILE).read_text())
    assert rec[R.PUBLISHED] == {R.PUB_PROB_DECIMALS: PROB_DECIMALS}
    size = (dest / "a" / R.PREDICTIONS_FILE).stat().st_size
    assert rec[R.ARTIFACTS][R.ARTIFACT_FILES] == {R.PREDICTIONS_FILE: size, "model/x": 5}
    assert rec[R.ARTIFACTS][R.ARTIFACT_TOTAL_BYTES] == size + 5
    # The run's own files are left as they were.
    assert pd.read_parquet(runs / "a" / R.PREDICTIONS_FILE).equals(PREDICTIONS)
