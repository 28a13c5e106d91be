"""Suites: expansion, resumable skip logic, failures recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.harness.config import UserError
from experiments.tools import suite

TINY = {"model": "tiny-bert", "train_size": 64, "eval_size": 32, "max_steps": 2,
        "batch_size": 16, "progress": False, "wandb": "disabled"}


def _suite_file(tmp_path: Path, experiments: list[dict], seeds: list[int]) -> str:
    import yaml

    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({"seeds": seeds, "defaults": TINY,
                                    "experiments": experiments}))
    return str(path)


def test_committed_suites_resolve() -> None:
    """Every committed suite file parses and every config in it is valid."""
    for path in sorted(suite.SUITES_DIR.glob("*.yaml")):
        jobs = suite.plan(suite.load_suite(path.stem), Path("/nonexistent"))
        assert jobs and all(j.hash for j in jobs)
    quick = suite.load_suite("quick")
    assert len({j.seed for j in quick}) >= 3  # a t-interval on 1 degree of freedom says little
    # seeds of one experiment share the config hash (the W&B group), experiments do not
    hashes = {j.name: j.hash for j in suite.plan(quick, Path("/nonexistent"))}
    assert len(set(hashes.values())) == len(hashes)
    paper = suite.load_suite("paper")
    ranks = sorted({j.overrides["lora.rank"] for j in paper if "lora.rank" in j.overrides})
    assert ranks == [1, 2, 4, 8, 16, 32, 64]


def test_each_comparison_suite_runs_its_task_at_the_task_budget() -> None:
    """The three comparison suites: all nine methods, at least 3 seeds each, on their task at
    the task's own budget (experiments/contract/tasks.py), at the tuned presets (preset=auto)."""
    from experiments.contract.tasks import TASKS
    from methods import METHODS

    for task, protocol in TASKS.items():
        jobs = suite.load_suite(f"compare-{task}")
        assert {j.overrides["method"] for j in jobs} == set(METHODS), task
        for job in jobs:
            assert job.overrides["data"] == task
            assert {k: job.overrides[k] for k in protocol.budget} == protocol.budget
            assert job.overrides.get("preset", "auto") == "auto"
        seeds = {}
        for job in jobs:
            seeds.setdefault(job.name, set()).add(job.seed)
        assert min(len(s) for s in seeds.values()) >= 3, task
    rt = suite.load_suite("compare-rotten_tomatoes")
    sweep = {j.overrides["lora.rank"]: j for j in rt if j.name.startswith("lora-rslora")}
    assert sorted(sweep) == [1, 2, 4, 8, 16, 32, 64]
    from methods.lora import scale_factor

    r8 = sweep[8].overrides  # the sweep's r=8 has LoRA's default scale, alpha 16 / r 8
    assert scale_factor(r8["lora.alpha"], 8, r8["lora.scaling"]) == pytest.approx(2.0, abs=1e-6)


def test_the_committed_comparison_is_what_its_suites_ran_at_the_tuned_presets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """results/<task>-minilm/ holds a finished record for every job of the task's comparison
    suite (so a preset or suite changed without rerunning shows up here), each at the learning
    rate of the committed presets file, every method but the head for the same epochs, one
    canonical measured batch per task, and all from one clean commit."""
    import yaml

    from experiments.contract import record as R
    from experiments.contract.tasks import TASKS

    repo = Path(__file__).resolve().parents[3]
    # The committed presets, as `preset=auto` reads them outside the tests' sandbox.
    monkeypatch.setenv("TUNEBENCH_PRESETS_DIR", str(repo / "experiments" / "presets"))
    commits, dirty = set(), set()
    for task in TASKS:
        jobs = suite.plan(suite.load_suite(f"compare-{task}"), repo / "results" / f"{task}-minilm")
        assert [j.name for j in jobs if j.status != "done"] == [], task
        presets_file = repo / "experiments" / "presets" / f"{task}-minilm.yaml"
        presets = yaml.safe_load(presets_file.read_text())["methods"]
        # One canonical batch per task: rows x tokens for every method on tokens; the head,
        # which trains on cached features, measures the same rows of its feature width.
        batches: dict[bool, set[tuple[int, ...]]] = {False: set(), True: set()}
        for job in jobs:
            rec, method = job.detail, job.overrides["method"]
            assert rec[R.PRESET][R.PRESET_FROM].endswith(presets_file.name), job.name
            tuned = presets[method]["values"]["lr"]
            assert rec[R.CONFIG]["lr"] == job.overrides.get("lr", tuned), job.name
            if method != "head":
                assert rec[R.EPOCHS] == 2, job.name
            batches[method == "head"].add(tuple(rec[R.MEMORY][R.MEASURED_BATCH]))
            commits.add(rec[R.ENV][R.GIT_COMMIT])
            dirty.add(rec[R.ENV][R.GIT_DIRTY])
        assert len(batches[False]) == 1 and len(batches[True]) == 1, (task, batches)
        assert next(iter(batches[True]))[0] == next(iter(batches[False]))[0], task
    assert len(commits) == 1 and dirty == {False}, (commits, dirty)


def test_resume_skips_finished_runs(tmp_path: Path, runs_dir: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    path = _suite_file(tmp_path, [{"name": "a", "method": "full"},
                                  {"name": "b", "method": "head"}], seeds=[0, 1])
    assert suite.main([path, "--no-reports"]) == 0
    records = sorted(runs_dir.glob("*/record.json"))
    assert len(records) == 4
    # an interrupted suite: one run's folder is gone (killed before its record was written)
    victim = json.loads(records[0].read_text())
    shutil.rmtree(records[0].parent)
    capsys.readouterr()
    assert suite.main([path, "--dry"]) == 0
    assert "3 already done, 1 to run" in capsys.readouterr().out
    assert suite.main([path, "--no-reports"]) == 0
    assert "[1/1] " + victim["experiment"] in capsys.readouterr().out
    assert len(list(runs_dir.glob("*/record.json"))) == 4


def test_a_failing_run_is_logged_and_the_suite_goes_on(tmp_path: Path, runs_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _suite_file(tmp_path, [{"name": "bad", "method": "full", "lr": 1e-3},
                                  {"name": "good", "method": "head"}], seeds=[0])
    real = suite.run_job

    def flaky(job: suite.Job, runs: Path) -> None:
        if job.name == "bad":
            job.overrides = {**job.overrides, "data": str(tmp_path / "vanished.csv")}
        real(job, runs)

    monkeypatch.setattr(suite, "run_job", flaky)
    assert suite.main([path, "--no-reports"]) == 1
    log = [json.loads(x) for x in (runs_dir / "suite-mini.jsonl").read_text().splitlines()]
    assert [(x["name"], x["status"]) for x in log] == [("bad", "failed"), ("good", "finished")]


def test_bad_suite_is_one_line() -> None:
    known = ("compare-newsgroups20, compare-reuters_r8, compare-rotten_tomatoes, paper, "
             "precision, precision-subsample, quick, smoke")
    with pytest.raises(UserError, match=f"known: {known}"):
        suite.load_suite("nosuch")


@pytest.mark.slow
def test_make_suite_smoke_runs_every_method(tmp_path: Path, runs_dir: Path) -> None:
    """`make suite SUITE=smoke` as a user types it: every method on MiniLM, then reports; with
    `import ray` failing, as where the optional extra is not installed."""
    import os
    import subprocess

    from methods import METHODS

    repo = Path(__file__).resolve().parents[3]
    no_ray = tmp_path / "no-ray"
    no_ray.mkdir()
    (no_ray / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = {**os.environ, "REPORTS_DIR": str(tmp_path / "reports"), "PYTHONPATH": str(no_ray)}
    res = subprocess.run(["make", "-s", "suite", "SUITE=smoke"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in runs_dir.glob("*/record.json")]
    assert sorted(r["method"] for r in records) == sorted(METHODS)
    assert all(r["status"] == "finished" for r in records)
    assert {r["env"]["executor"] for r in records} == {"local"}  # docs/distributed.md
    assert (tmp_path / "reports" / "summary.md").exists()
    assert "lora-all" in res.stdout  # the closing table
