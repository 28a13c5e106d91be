"""Publish finished runs: their records, histories and predictions, with no absolute paths.

    python -m experiments.tools.publish RUNS_DIR DEST        # e.g. runs/published results/<task>
    python -m experiments.tools.publish RUNS_DIR DEST --allow-dirty --allow-commits

A published comparison is code at one commit: the finished runs are refused, before anything is
written, when any ran from a tree with uncommitted changes to tracked files (`env.git_dirty`)
or when they ran from more than one commit, unless `--allow-dirty` / `--allow-commits` says
that is meant.

Copies, for every finished run in RUNS_DIR, `record.json`, `metrics.jsonl` and
`predictions.parquet` into DEST/<run_id>/ (never checkpoints, saved models or W&B folders), so
a comparison can be committed and regenerated with `make plots RUNS_DIR=DEST`. Paths in the
records are rewritten so nothing points at the machine that ran them: the run's own folder
becomes DEST/<run_id>, files inside the repository or an installed package become relative
(`site-packages/...`), anything else keeps only its name. Class probabilities in the copied
predictions are rounded to PROB_DECIMALS (the record's `published` section says so, and its
`artifacts` give the copies' sizes); labels and predicted classes are copied exactly.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.contract import record as R
from experiments.contract.io import atomic_write_json
from experiments.harness.cli import EXIT_OK, EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[2]
COPIED = (R.METRICS_FILE,)
# A committed comparison travels with the repository to the GPU machine, whose calls carry 64
# MiB; float32 class probabilities (20 per test example on 20 Newsgroups) barely compress and
# were most of it. Three decimals keep them useful (calibration, ranking) at a quarter of the
# size; the paired tests read only labels and predicted classes, which are never rounded.
PROB_DECIMALS = 3


def portable(value: Any, run_dir: Path, dest_run: Path) -> Any:
    """The value with every absolute path made portable (recursively through dicts and lists)."""
    if isinstance(value, dict):
        return {k: portable(v, run_dir, dest_run) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, run_dir, dest_run) for v in value]
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path = Path(value)
    for base, new in ((run_dir.resolve(), dest_run), (REPO, Path("."))):
        if path == base or base in path.parents:
            return str(new / path.relative_to(base))
    if "site-packages" in path.parts:
        return str(Path(*path.parts[path.parts.index("site-packages"):]))
    return path.name


def compact_predictions(src: Path, out: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Write `src`'s predictions file to `out` with its class probabilities rounded (`out` may
    be `src`); returns the record with its `published` section and `artifacts` sizes saying so
    (unchanged when `src` has no predictions file)."""
    if not (src / R.PREDICTIONS_FILE).is_file():
        return rec
    frame = pd.read_parquet(src / R.PREDICTIONS_FILE)
    probs = [c for c in frame.columns if c.startswith(R.PRED_PROB_PREFIX)]
    frame[probs] = frame[probs].round(PROB_DECIMALS)
    path, tmp = out / R.PREDICTIONS_FILE, out / f".{R.PREDICTIONS_FILE}.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    artifacts = dict(rec.get(R.ARTIFACTS) or {})
    files = {**artifacts.get(R.ARTIFACT_FILES, {}), R.PREDICTIONS_FILE: path.stat().st_size}
    artifacts.update({R.ARTIFACT_FILES: files, R.ARTIFACT_TOTAL_BYTES: sum(files.values())})
    return {**rec, R.ARTIFACTS: artifacts, R.PUBLISHED: {R.PUB_PROB_DECIMALS: PROB_DECIMALS}}


def _shown(dest: Path) -> Path:
    """How a record names DEST: relative to the repository when inside it, else by name."""
    dest = dest.resolve()
    return dest.relative_to(REPO) if REPO in dest.parents else Path(dest.name)


def finished_runs(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(record path, record) of every finished run in RUNS_DIR, in run-id order."""
    found = []
    for path in sorted(runs_dir.glob(f"*/{R.RECORD_FILE}")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get(R.STATUS) == R.FINISHED:
            found.append((path, rec))
    return found


def provenance_problem(records: list[dict[str, Any]], allow_dirty: bool = False,
                       allow_commits: bool = False) -> str | None:
    """Why these records are not one clean commit's runs (None when they are, or allowed)."""
    env = [rec.get(R.ENV) or {} for rec in records]
    dirty = [rec.get(R.RUN_ID) for rec, e in zip(records, env, strict=True)
             if e.get(R.GIT_DIRTY) is not False]
    if dirty and not allow_dirty:
        return (f"{len(dirty)} of {len(records)} runs did not run from a clean commit "
                f"(env.git_dirty true or unknown; e.g. {dirty[0]}); rerun them from a clean tree, "
                "or pass --allow-dirty")
    commits = sorted({str(e.get(R.GIT_COMMIT)) for e in env})
    if len(commits) > 1 and not allow_commits:
        return (f"the runs come from {len(commits)} commits ({', '.join(c[:7] for c in commits)}); "
                "a comparison is one commit's code: rerun them at one commit, or pass "
                "--allow-commits")
    return None


def publish(runs_dir: Path, dest: Path) -> list[str]:
    """Copy every finished run; returns their ids. Runs already in DEST are replaced."""
    done = []
    for path, rec in finished_runs(runs_dir):
        run_dir, out = path.parent, dest / path.parent.name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        rec = portable(rec, run_dir, _shown(dest) / run_dir.name)
        rec.pop(R.LAST_CHECKPOINT, None)  # checkpoints are never published
        for name in COPIED:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, out / name)
        atomic_write_json(out / R.RECORD_FILE, compact_predictions(run_dir, out, rec))
        done.append(run_dir.name)
    return done


FLAGS = ("--allow-dirty", "--allow-commits")


def main(argv: list[str] | None = None) -> int:
    """Command line: RUNS_DIR DEST [--allow-dirty] [--allow-commits]."""
    argv = sys.argv[1:] if argv is None else argv
    flags = {a for a in argv if a.startswith("--")}
    argv = [a for a in argv if not a.startswith("--")]
    if len(argv) != 2 or not Path(argv[0]).is_dir() or flags - set(FLAGS):
        print("error: usage: python -m experiments.tools.publish RUNS_DIR DEST [--allow-dirty] "
              "[--allow-commits] (RUNS_DIR must be a folder of runs)", file=sys.stderr)
        return EXIT_USER_ERROR
    runs = finished_runs(Path(argv[0]))
    if not runs:
        print(f"error: no finished run in {argv[0]}", file=sys.stderr)
        return EXIT_USER_ERROR
    problem = provenance_problem([rec for _, rec in runs], "--allow-dirty" in flags,
                                 "--allow-commits" in flags)
    if problem:
        print(f"error: {argv[0]}: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    done = publish(Path(argv[0]), Path(argv[1]))
    print(f"published {len(done)} runs to {argv[1]}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
