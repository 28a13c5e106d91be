"""The tuner: validation only, presets as data the harness applies, resumable studies, and the
best-validation state selected within a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.contract import record as R
from experiments.harness import config as C
from experiments.tools import tune, tune_presets

TINY = {"model": "tiny-bert", "batch_size": 16, "eval_batch_size": 64, "max_length": 32}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def texts(tmp_path: Path) -> str:
    """A small local CSV task (its test split comes from the data layer's own 80/10/10)."""
    words = ["good fine great", "bad awful poor"]
    rows = [{"text": f"{words[i % 2]} film number {i}", "label": i % 2} for i in range(200)]
    path = tmp_path / "texts.csv"
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


class ReadTestSplit(AssertionError):
    """Raised by the poisoned test split: something read it."""


class Poisoned:
    """A test split that raises on any use at all."""

    def __getattr__(self, name: str) -> None:
        raise ReadTestSplit(f"the test split was read ({name})")

    def __len__(self) -> int:
        raise ReadTestSplit("the test split was read (len)")


@pytest.fixture
def poisoned_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every split the data layer builds from a file gets a test split that raises when read."""
    from experiments.inputs import data

    real = data._frame_splits

    def spy(frames):  # noqa: ANN001, ANN202
        splits = real(frames)
        splits["test"] = Poisoned()
        return splits

    monkeypatch.setattr(data, "_frame_splits", spy)


def _records(study: str) -> list[dict]:
    """The records of a study's trial runs."""
    return [json.loads(p.read_text())
            for p in tune.trial_runs_dir(study).glob(f"*/{R.RECORD_FILE}")]


def _study(texts: str, tmp_path: Path, trials: int = 2) -> tuple[str, str]:
    storage = str(tmp_path / "study.journal")
    args = {"model": "tiny-bert", "batch_size": "16", "eval_batch_size": "64",
            "max_length": "32"}
    study = tune.open_study("lora", texts, "tiny-bert", args, trials, 0, storage)
    return study.study_name, storage


def test_a_studys_runs_never_read_the_test_split(texts: str, tmp_path: Path,
                                                 poisoned_test: None) -> None:
    """With a test split that raises on any read, a study is created and its trials run; an
    ordinary run with the same data does read it (the spy bites)."""
    from experiments import train

    name, storage = _study(texts, tmp_path)
    for _ in range(2):
        tune.run_trial(name, storage)
    study = tune.load_study(name, storage)
    assert study.trials[0].state.name == "COMPLETE"  # the first has nothing to lose against
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    records = _records(name)
    assert sorted(r[R.STATUS] for r in records) == sorted(
        {"COMPLETE": R.FINISHED, "PRUNED": R.PRUNED}[t.state.name] for t in study.trials)
    for rec in records:
        assert rec.get(R.TEST_EVALUATED, False) is False and "test_rows" not in rec[R.DATA]
        assert not any(k.startswith("test/") for k in rec[R.METRICS])
        assert rec[R.TUNE]["study"] == name and rec[R.CONFIG]["test_split"] is False
    with pytest.raises(ReadTestSplit):
        train.run(C.resolve({**TINY, "data": texts, "max_steps": 1, "progress": False}))


def test_a_retried_trial_resumes_its_interrupted_run(texts: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in a trial's third step: the trial fails and is queued again with its rate; the
    retry continues the same run from its checkpoint."""
    from methods import model as model_mod

    name, storage = _study(texts, tmp_path, trials=1)
    real, calls = model_mod.Classifier.forward, {"n": 0}

    def forward(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += self.training
        if self.training and calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(model_mod.Classifier, "forward", forward)
        with pytest.raises(KeyboardInterrupt):
            tune.run_trial(name, storage)
    (cancelled,) = _records(name)
    assert cancelled[R.STATUS] == R.CANCELLED and cancelled[R.LAST_CHECKPOINT]
    tune.run_trial(name, storage)
    study = tune.load_study(name, storage)
    first, retry = study.trials
    assert first.state.name == "FAIL" and retry.system_attrs["failed_trial"] == 0
    assert retry.params == first.params and retry.state.name == "COMPLETE"
    (done,) = _records(name)
    assert done[R.RUN_ID] == cancelled[R.RUN_ID] and len(done[R.RESUMED]) == 1
    assert done[R.STATUS] == R.FINISHED and done[R.TUNE] == {"study": name, "trial": 1}


def test_presets_file_applies_for_its_data_and_model_and_the_record_says_so(
        tmp_path: Path) -> None:
    """preset=auto reads experiments/presets/<data>-<model>.yaml (over the code PRESET), a path
    names a file, code ignores files; the record says which applied."""
    from experiments import train

    entry = {"values": {"lr": 0.0123, "epochs": 1}, "search": {"lr": {"low": 1e-4, "high": 1}}}
    tune_presets.write_entry(C.preset_path("rotten_tomatoes", "tiny-bert"), "rotten_tomatoes",
                             "tiny-bert", "ia3", entry)
    auto = C.resolve({"method": "ia3", "model": "tiny-bert"})
    assert (auto.lr, auto.epochs, auto.weight_decay) == (0.0123, 1, 0.0)  # decay: code PRESET
    assert C.resolve({"method": "ia3", "model": "tiny-bert", "lr": 0.5}).lr == 0.5
    assert C.resolve({"method": "ia3", "model": "tiny-bert", "preset": "code"}).lr == 1e-2
    assert C.resolve({"method": "ia3", "model": "minilm"}).lr == 1e-2  # no file for minilm
    assert C.resolve({"method": "lora", "model": "tiny-bert"}).lr == 2e-3  # no entry for lora
    with pytest.raises(C.UserError, match="no such presets file"):
        C.resolve({"method": "ia3", "preset": str(tmp_path / "nope.yaml")})
    rec = train.run(C.resolve({"method": "ia3", **TINY, "train_size": 32, "eval_size": 16,
                               "max_steps": 1, "progress": False, "save": "none"}))
    assert rec[R.PRESET] == {R.PRESET_FROM: str(C.preset_path("rotten_tomatoes", "tiny-bert")),
                             R.PRESET_VALUES: {"lr": 0.0123, "epochs": 1,
                                               "weight_decay": 0.0}}


def test_best_validation_state_is_the_one_tested(tmp_path: Path) -> None:
    """Validation every step at a rate that wrecks the model: the run tests and saves the state
    of its best validation step, and says which."""
    from experiments import train

    rec = train.run(C.resolve({"method": "full", **TINY, "train_size": 64, "eval_size": 32,
                               "max_steps": 4, "eval_every": 1, "lr": 0.5, "warmup_ratio": 0,
                               "progress": False, "save": "none"}))
    hist = rec[R.VAL_HISTORY]
    best = max(hist, key=lambda h: h[R.H_ACCURACY])
    assert rec[R.SELECTED_STEP] == best[R.H_STEP]
    assert rec[R.METRICS][R.VAL_BEST_ACCURACY] == best[R.H_ACCURACY]
    assert "best validation" in rec[R.SELECTION]


def test_the_selected_state_is_the_best_in_the_chosen_metric(tmp_path: Path) -> None:
    """select_metric=macro_f1 on an imbalanced task: the tested state is the step whose
    validation macro-F1 (not accuracy) is best, and the record says the metric and its score."""
    from experiments import train

    words = ["good fine great", "bad awful poor", "odd plain dull"]
    rows = [{"text": f"{words[c]} film number {i}", "label": c}
            for i, c in enumerate([0] * 150 + [1] * 40 + [2] * 30)]
    import pandas as pd

    path = tmp_path / "imbalanced.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    rec = train.run(C.resolve({"method": "full", **TINY, "data": str(path), "max_steps": 6,
                               "eval_every": 1, "lr": 0.05, "warmup_ratio": 0, "seed": 3,
                               "select_metric": "macro_f1", "progress": False,
                               "save": "none"}))
    hist = rec[R.VAL_HISTORY]
    best = max(hist, key=lambda h: h["macro_f1"])  # the earliest on a tie, as max() picks
    # The case that tells the metrics apart: accuracy's best step is another one.
    assert max(hist, key=lambda h: h[R.H_ACCURACY])[R.H_STEP] != best[R.H_STEP]
    assert rec[R.SELECTION_METRIC] == "macro_f1" and "macro_f1" in rec[R.SELECTION]
    assert rec[R.SELECTED_STEP] == best[R.H_STEP]
    assert rec[R.METRICS][R.VAL_SELECTED_SCORE] == best["macro_f1"]


def test_a_task_budget_is_the_real_budget_and_names_no_new_study() -> None:
    """The task's own budget (experiments/contract/tasks.py) in ARGS leaves the study name and
    the presets path as without it; a budget beyond the task's is a small check kept apart."""
    rt = tune.with_task_budget("rotten_tomatoes", {})
    assert rt == {"max_length": "64"}
    assert tune.study_name("lora", "rotten_tomatoes", "minilm", rt) == \
        "rotten_tomatoes-minilm-lora"
    r8 = tune.with_task_budget("reuters_r8", {})
    assert tune.study_name("lora", "reuters_r8", "minilm", r8) == "reuters_r8-minilm-lora"
    assert tune.default_presets("reuters_r8", "minilm", r8) == \
        C.preset_path("reuters_r8", "minilm")
    small = tune.with_task_budget("reuters_r8", {"train_size": "400"})
    assert tune.study_name("lora", "reuters_r8", "minilm", small) != "reuters_r8-minilm-lora"
    assert tune.default_presets("reuters_r8", "minilm", small).parent.name == "presets"
    assert tune.default_presets("reuters_r8", "minilm", small) != \
        C.preset_path("reuters_r8", "minilm")


def test_the_cost_table_states_each_study_budget_as_resolved() -> None:
    """A study made before the task's budget went into its ARGS trained at the same defaults,
    and the cost table says so; a subsample and extra ARGS are named."""
    from experiments.tools import tune_presets as P

    def spec(data: str, args: dict, epochs: int = 2) -> dict:
        return {"method": "lora", "data": data, "args": args, "epochs": epochs}

    same = "whole train split, max_length=64, 2 epochs"
    assert P.budget(spec("rotten_tomatoes", {})) == same
    assert P.budget(spec("rotten_tomatoes", {"max_length": "64"})) == same
    assert P.budget(spec("reuters_r8", {"max_length": "128", "train_size": "2000",
                                        "eval_size": "200"}, 30)) == \
        "train_size=2000, max_length=128, eval_size=200, 30 epochs"


def _tuner(tmp_path: Path, trials: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "experiments.tools.tune", "lora", "--trials", str(trials),
           "--workers", "2", "--presets", str(tmp_path / "presets.yaml"),
           *[f"{k}={v}" for k, v in TINY.items()], "train_size=64", "eval_size=32"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            )


def test_a_killed_study_continues_where_it_stopped(tmp_path: Path) -> None:
    """SIGKILL the tuner while trials run: its trial processes die with it; the rerun
    continues the same study, retries each killed trial with its learning rate, and writes a
    presets entry inside the searched range."""
    proc = _tuner(tmp_path, 4)
    journal = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        journals = list((R.runs_dir() / "tune").glob("*.journal"))
        if journals and '"pid"' in journals[0].read_text():
            journal = journals[0]
            break
        time.sleep(0.5)
    assert journal is not None, "no trial started"
    os.kill(proc.pid, signal.SIGKILL)  # the tuner alone: its trials must die with it
    proc.wait()
    assert _tuner(tmp_path, 4).wait(timeout=600) == 0
    names = tune.optuna.get_all_study_names(tune.open_storage(str(journal)))
    assert len(names) == 1
    study = tune.load_study(names[0], str(journal))
    killed = [t for t in study.trials if t.user_attrs.get("killed")]
    assert killed
    for t in killed:
        retries = [r for r in study.trials if r.system_attrs.get("failed_trial") == t.number]
        assert retries and retries[0].params == t.params
    entry = yaml.safe_load((tmp_path / "presets.yaml").read_text())["methods"]["lora"]
    lo, hi = entry["search"]["lr"]["low"], entry["search"]["lr"]["high"]
    assert lo <= entry["values"]["lr"] <= hi
    assert entry["trials"] >= 4 and entry["seed"] == 0
