"""Real run records for the analysis tests: tiny-bert, two methods x two seeds, made once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

METHODS = ("head", "full")
SEEDS = (0, 1)


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with 4 finished records written by the real harness (a few seconds each).

    Session-scoped so that every analysis test file reads the same records and the runs are paid
    for once; tests that change records work on a copy (`runs_copy`).
    """
    from experiments.config import resolve
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
    cheaply: LoRA rank sweeps and the memory ledger fields.
    """
    import copy
    import hashlib

    def make(runs_dir: Path, method: str, seed: int, acc: float, config: dict | None = None,
             memory: dict | None = None, status: str = "finished") -> Path:
        rec = copy.deepcopy(one_record)
        rec["config"].update({"method": method, "seed": seed, **(config or {})})
        key = json.dumps({k: v for k, v in rec["config"].items() if k != "seed"}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        rec.update({"method": method, "status": status, "experiment": method,
                    "config_hash": digest[:12], "run_id": f"20260101-{method}-{digest[:6]}-{seed}"})
        rec["metrics"]["test/accuracy"] = acc
        rec["val_history"] = [{"step": s, "accuracy": acc - 0.1 / s, "n": 32} for s in (1, 2, 4)]
        if memory is not None:  # replaces the section: a record from before the ledger has none
            rec["memory"] = memory
        path = runs_dir / rec["run_id"] / "record.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(rec))
        return path

    return make


@pytest.fixture
def ledger():  # noqa: ANN201 (a factory)
    """A factory: ledger(N, M) -> memory ledger fields as the harness writes them."""
    return _ledger


def _ledger(n_params: int, trainable: int) -> dict:
    return {"peak_bytes": 4 * n_params + 12 * trainable + 3_500_000,
            "peak_method": "CPU resident-set growth (approximate)",
            "weights_bytes": 4 * n_params, "grads_bytes": 4 * trainable,
            "optimizer_bytes": 8 * trainable, "activations_peak_bytes": 3_000_000,
            "device_peak_bytes": 4 * n_params + 12 * trainable + 3_500_000,
            "predicted_bytes": 4 * n_params + 16 * trainable,
            "predicted_formula": "4N + 16M (fp32 weights; grads and Adam state for M)",
            "ledger_vs_predicted": 1.0}


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
        name="20260101-lora-aa", id="aa", state="finished", group="sweep",
        path=["ent", "proj", "aa"], url="https://wandb.ai/ent/proj/runs/aa",
        config={"method": "lora", "seed": 1, "lr": 1e-3, "lora": {"rank": 8, "alpha": 16},
                "config_hash": "h-lora", "_wandb": {"x": 1}},
        summary={"test/accuracy": 0.81, "val/accuracy": 0.8, "params/trainable": 1000,
                 "params/total": 100000, "memory/peak_bytes": 2**20, "time/train_s": 3.5,
                 "_runtime": 4, "confusion": {"_type": "table"}},
        rows=[(10, {"val/accuracy": 0.7}), (15, {"train/loss": 0.3}), (20, {"val/accuracy": 0.8})])
    crashed = FakeRun(name="20260101-full-bb", id="bb", state="crashed", group="full",
                      path=["ent", "proj", "bb"], url="u", rows=[],
                      config={"method": "full", "seed": 0, "config_hash": "h-full"}, summary={})
    no_method = FakeRun(name="n", id="cc", state="finished", group=None, path=[], url=None,
                        config={}, summary={}, rows=[])
    return FakeApi([lora, crashed, no_method])
