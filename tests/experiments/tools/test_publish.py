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


def _run(runs: Path, name: str, status: str, dirty: bool | None = False,
         commit: str = "c0ffee") -> Path:
    run = runs / name
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.pt").write_bytes(b"x")
    (run / "model").mkdir()
    (run / R.METRICS_FILE).write_text('{"step": 1}\n')
    (run / R.PREDICTIONS_FILE).write_bytes(b"parquet")
    rec = {R.RUN_ID: name, R.STATUS: status, R.RECORD_PATH: str(run / R.RECORD_FILE),
           R.LAST_CHECKPOINT: {"path": str(run / "checkpoint")},
           R.MODEL: {"location": "/opt/py/lib/python3.11/site-packages/pkg/model"},
           R.ENV: {"argv": [str(REPO / "experiments" / "train.py"), "method=lora"],
                   R.GIT_COMMIT: commit, R.GIT_DIRTY: dirty},
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
