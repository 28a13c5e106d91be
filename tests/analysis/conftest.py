"""Real run records for the analysis tests: tiny-bert, two methods x two seeds, made once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from experiments.contract import record as R

METHODS = ("head", "full")
SEEDS = (0, 1)


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with 4 finished records written by the real harness (a few seconds each).

    Session-scoped so that every analysis test file reads the same records and the runs are paid
    for once; tests that change records work on a copy (`runs_copy`).
    """
    from experiments.harness.config import resolve
    from experiments.train import run

    runs_dir = tmp_path_factory.mktemp("analysis") / "runs"
    for method in METHODS:
        for seed in SEEDS:
            run(resolve([f"method={method}", "model=tiny-bert", "train_size=64", "eval_size=32",
                         "max_steps=4", "eval_every=2", "batch_size=16", f"seed={seed}",
                         "wandb=disabled", "progress=false", f"runs_dir={runs_dir}"]))
    return runs_dir


@pytest.fixture
def runs_copy(real_runs: Path, tmp_path: Path) -> Path:
    """A private copy of the real runs that a test may add to or damage."""
    dst = tmp_path / "runs_copy"
    shutil.copytree(real_runs, dst)
    return dst


@pytest.fixture
def one_record(real_runs: Path) -> dict:
    """One real record as a dict (a template for synthetic records)."""
    path = sorted(real_runs.glob("*full*/record.json"))[0]
    return json.loads(path.read_text())


@pytest.fixture
def make_record(one_record: dict):  # noqa: ANN201 (a factory)
    """A factory: make_record(runs_dir, method, seed, acc, config=..., memory=...) -> record path.

    Synthetic records (the real one with fields changed) cover what tiny real runs cannot
    cheaply: LoRA rank sweeps, the memory fields, per-example predictions (`predictions`: a
    frame with the record's prediction columns, written beside the record).
    """
    import copy
    import hashlib

    def make(runs_dir: Path, method: str, seed: int, acc: float, config: dict | None = None,
             memory: dict | None = None, status: str = "finished",
             predictions: pd.DataFrame | None = None) -> Path:
        rec = copy.deepcopy(one_record)
        for key, value in {R.METHOD: method, R.C_SEED: seed, **(config or {})}.items():
            if isinstance(value, dict):  # a method's options: merge, as the harness resolves
                rec[R.CONFIG][key] = {**rec[R.CONFIG].get(key, {}), **value}
            else:
                rec[R.CONFIG][key] = value
        key = json.dumps({k: v for k, v in rec[R.CONFIG].items() if k not in R.NOT_HASHED},
                         sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        rec.update({R.METHOD: method, R.STATUS: status, R.EXPERIMENT: method,
                    R.CONFIG_HASH: digest[:12],
                    R.RUN_ID: f"20260101-{method}-{digest[:6]}-{seed}"})
        rec[R.METRICS][R.TEST_ACCURACY] = acc
        rec[R.VAL_HISTORY] = [{R.H_STEP: s, R.H_ACCURACY: acc - 0.1 / s, "n": 32}
                              for s in (1, 2, 4)]
        if memory is not None:  # replaces the section: a record from before the ledger has none
            rec[R.MEMORY] = memory
        path = runs_dir / rec[R.RUN_ID] / R.RECORD_FILE
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(rec))
        if predictions is not None:
            predictions.to_parquet(path.parent / R.PREDICTIONS_FILE, index=False)
        return path

    return make


@pytest.fixture
def predictions_frame():  # noqa: ANN201 (a factory)
    """A factory: predictions_frame(labels, predicted, examples=None) -> a predictions file's
    frame as the harness writes it (two classes, example = index in the test split)."""
    return predictions


def predictions(labels: list[int] | np.ndarray, predicted: list[int] | np.ndarray,
                examples: list[int] | np.ndarray | None = None) -> pd.DataFrame:
    """A predictions file's frame, as the harness writes it (two classes)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    examples = np.arange(len(labels)) if examples is None else np.asarray(examples)
    p1 = np.where(predicted == 1, 0.8, 0.2)
    return pd.DataFrame({R.PRED_EXAMPLE: examples, R.PRED_LABEL: labels,
                         R.PRED_PREDICTED: predicted, f"{R.PRED_PROB_PREFIX}0": 1 - p1,
                         f"{R.PRED_PROB_PREFIX}1": p1})


@pytest.fixture
def ledger():  # noqa: ANN201 (a factory)
    """A factory: ledger(N, M) -> a memory section as the harness writes it (CPU, fp32, Adam).

    The ledger's counts, the measured step (its peak, what was live then by category, the state
    peak) and the process-level RSS growth, which is larger and only approximate.
    """
    return _ledger


def _ledger(n_params: int, trainable: int) -> dict:
    at_peak = {R.CAT_PARAMETERS: 4 * n_params, R.CAT_BUFFERS: 8192, R.CAT_INPUTS: 20_000,
               R.CAT_OPTIMIZER_STATE: 8 * trainable, R.CAT_GRADIENTS: 0, R.CAT_WEIGHT_CASTS: 0,
               R.CAT_ACTIVATIONS: 3_000_000, R.CAT_OPTIMIZER_TEMPORARIES: 0,
               R.CAT_TEMPORARIES: 250_000}
    return {R.RSS_GROWTH_BYTES: 4 * n_params + 12 * trainable + 9_500_000,
            R.RSS_METHOD: "approximate, not a peak of tensor memory: CPU resident-set growth",
            R.WEIGHTS_BYTES: 4 * n_params, R.GRADS_BYTES: 4 * trainable,
            R.OPTIMIZER_BYTES: 8 * trainable, R.ACTIVATIONS_PEAK_BYTES: 3_000_000,
            R.WEIGHT_CASTS_BYTES: 0,
            R.MEASURED_PEAK_BYTES: sum(at_peak.values()), R.MEASURED_AT_PEAK: at_peak,
            R.MEASURED_STATE_PEAK_BYTES: 4 * n_params + 12 * trainable,
            R.MEASURED_METHOD: "exact for what it sees: live tensor storages during one step",
            R.PREDICTED_BYTES: 4 * n_params + 16 * trainable,
            R.PREDICTED_FORMULA: "4N + 16M (fp32 weights; grads and Adam state for M)",
            R.STATE_VS_PREDICTED: (4 * n_params + 12 * trainable) / (4 * n_params
                                                                      + 16 * trainable),
            R.LEDGER_VS_PREDICTED: 1.0}


class FakeRun(SimpleNamespace):
    """The parts of wandb.apis.public.Run that load_wandb reads."""

    def scan_history(self, keys: list[str]) -> list[dict]:
        return [{"_step": s, **{k: v for k, v in row.items() if k in keys}}
                for s, row in self.rows]


class FakeApi:
    """wandb.Api stand-in: records the path asked for, returns the given runs."""

    def __init__(self, runs: list) -> None:
        self._runs, self.paths = runs, []

    def runs(self, path: str) -> list:
        self.paths.append(path)
        return self._runs


@pytest.fixture
def fake_wandb_api() -> FakeApi:
    """A wandb.Api stand-in holding a LoRA run, a crashed full run and a run with no config."""
    lora = FakeRun(
        # as the tracker names runs: the W&B id is the run id, name and group carry the data
        name="sweep-rotten_tomatoes-s1", id="20260101-lora-aa", state="finished",
        group="sweep-rotten_tomatoes", path=["ent", "proj", "20260101-lora-aa"],
        url="https://wandb.ai/ent/proj/runs/20260101-lora-aa",
        config={"method": "lora", "experiment": "sweep", "seed": 1, "lr": 1e-3,
                "lora": {"rank": 8, "alpha": 16},
                "config_hash": "h-lora", "_wandb": {"x": 1}},
        summary={"test/accuracy": 0.81, "val/accuracy": 0.8, "params/trainable": 1000,
                 "params/total": 100000, f"{R.MEMORY}/{R.MEASURED_PEAK_BYTES}": 2**20,
                 f"{R.MEMORY}/{R.RSS_GROWTH_BYTES}": 5 * 2**20, "time/train_s": 3.5,
                 "_runtime": 4, "confusion": {"_type": "table"}},
        rows=[(10, {"val/accuracy": 0.7}), (15, {"train/loss": 0.3}), (20, {"val/accuracy": 0.8})])
    crashed = FakeRun(name="full-rotten_tomatoes-s0", id="20260101-full-bb", state="crashed",
                      group="full-rotten_tomatoes", path=["ent", "proj", "20260101-full-bb"],
                      url="u", rows=[],
                      config={"method": "full", "seed": 0, "config_hash": "h-full"}, summary={})
    no_method = FakeRun(name="n", id="20260101-x-cc", state="finished", group=None, path=[],
                        url=None, config={}, summary={}, rows=[])
    return FakeApi([lora, crashed, no_method])


# Three published task folders for the cross-task page (analysis.tasks, analysis.tasks_page):
# task -> (config.data, selection_metric or None for records from before the key,
# experiment -> per seed (test accuracy, test macro-F1 or None)). LoRA's main configuration is
# lora-all; lora-attention is a variant with fewer trainable parameters, so it sorts first.
THREE_TASKS = {
    "alpha-minilm": ("rotten_tomatoes", None, {
        "head": [(0.70, None), (0.72, None), (0.74, None)],
        "lora-all": [(0.80, None), (0.82, None), (0.84, None)],
        "lora-attention": [(0.78, None)] * 3,
        "full": [(0.90, None), (0.92, None), (0.94, None)]}),
    "beta-minilm": ("reuters_r8", "macro_f1", {
        "head": [(0.60, 0.50), (0.62, 0.52), (0.64, 0.57)],
        "lora-all": [(0.75, 0.70), (0.75, 0.71), (0.75, 0.72)],
        "full": [(0.80, 0.65), (0.80, 0.66), (0.80, 0.70)]}),
    "gamma-minilm": ("newsgroups20", "accuracy", {
        "head": [(0.85, None)] * 3,
        "lora-all": [(0.84, None), (0.85, None), (0.86, None)],
        "full": [(0.86, None)] * 3}),
}
TRAINABLE = {"head": 770, "lora-all": 3000, "lora-attention": 1000, "full": 100_000}
TEST_EXAMPLES = 400


@pytest.fixture
def three_tasks(tmp_path: Path, make_record, ledger) -> Path:  # noqa: ANN001
    """A results folder of three task folders (THREE_TASKS), 3 seeds each, with predictions:
    a configuration with accuracy a gets the first a x 400 test examples right (nested, so
    larger gaps are significant), fit time 10 + seed seconds, measured on a 16 x 64 batch
    (the head: 16 x 384 features)."""
    root = tmp_path / "results"
    labels = np.arange(TEST_EXAMPLES) % 2
    for task, (data, metric, experiments) in THREE_TASKS.items():
        for experiment, scores in experiments.items():
            method, _, targets = experiment.partition("-")
            config = {R.C_DATA: data, **({method: {"targets": targets}} if targets else {})}
            for seed, (acc, macro_f1) in enumerate(scores):
                right = np.arange(TEST_EXAMPLES) < round(acc * TEST_EXAMPLES)
                path = make_record(root / task, method, seed, acc, config=config,
                                   memory=ledger(1_000_000, TRAINABLE[experiment]),
                                   predictions=predictions(labels,
                                                           np.where(right, labels, 1 - labels)))
                rec = json.loads(path.read_text())
                rec[R.EXPERIMENT] = experiment
                rec.pop(R.SELECTION_METRIC, None)
                if metric is not None:
                    rec[R.SELECTION_METRIC] = metric
                rec[R.METRICS].pop(R.TEST_MACRO_F1, None)
                if macro_f1 is not None:
                    rec[R.METRICS][R.TEST_MACRO_F1] = macro_f1
                    for point in rec[R.VAL_HISTORY]:  # the history carries every val metric
                        point["macro_f1"] = macro_f1 - 0.1 / point[R.H_STEP]
                rec[R.PARAMS][R.P_TRAINABLE] = TRAINABLE[experiment]
                rec[R.TIME] = {R.TRAIN_S: 10.0 + seed, R.PREPARE_S: 0.0}
                # The head measures rows x its feature width; token methods rows x tokens.
                wide = [16, 384] if method == "head" else [16, 64]
                rec[R.MEMORY][R.MEASURED_BATCH] = wide
                rec[R.MEMORY][R.MEASURED_BATCH_SHAPES] = {
                    "features" if method == "head" else "input_ids": wide, "labels": [16]}
                path.write_text(json.dumps(rec))
    return root
