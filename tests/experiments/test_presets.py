"""The committed presets files (experiments/presets/): each entry follows the tuning protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.contract.tasks import task_budget, task_metric
from experiments.harness.config import resolve
from experiments.tools import tune
from methods import METHODS

PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "presets"
FILES = sorted(PRESETS.glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_a_committed_presets_file_is_a_full_budget_study_per_method(path: Path) -> None:
    """All nine methods, each pick inside its searched range and not at its edge, from the
    protocol's number of trials at the task's own budget, by the task's metric on validation."""
    doc = yaml.safe_load(path.read_text())
    data, methods = doc["data"], doc["methods"]
    assert sorted(methods) == sorted(METHODS), path.name
    for name, e in methods.items():
        rng, lr = e["search"]["lr"], e["values"]["lr"]
        assert rng["low"] < lr < rng["high"] and e["interior"] is True, name
        assert tune.position(lr, rng) >= tune.EDGE and tune.position(lr, rng) <= 1 - tune.EDGE
        assert e["trials"] >= tune.TRIALS and e["failed"] == 0, name
        if name not in tune.OWN_EPOCHS:  # the head keeps its own epochs on cached features
            assert e["values"]["epochs"] == tune.EPOCHS, name
        # The task's budget (a key left out is at its default), and nothing shrunk beyond it.
        cfg = resolve({"data": data, **e["budget"]})
        assert {k: getattr(cfg, k) for k in task_budget(data)} == task_budget(data), name
        assert not set(e["budget"]) - set(task_budget(data)), name
        assert e["metric"].startswith(f"val/{task_metric(data)} "), name
        assert 0 < e["best_validation"] <= 1 and e["study"].startswith(f"{path.stem}-{name}")
