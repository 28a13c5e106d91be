"""Section 5: what made the default run faster, lever by lever, as ratios to the plain run.

Each row is a real, short run of the harness (`experiments.train.run`, LoRA on the bench's
model and Rotten Tomatoes): the plain run (fp32, random batches, torch's foreach AdamW), each
lever alone on top of it, and the default with every lever on. Batching cannot be shown on a
fixed batch (padding is what it removes), so the step time here is the run's training time per
step, and the end-to-end time is the run's whole wall time (load, tokenize, train, evaluate).
Rows run in rotated order each round, so machine drift hits all alike.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from typing import Any

from bench.workloads import Settings
from experiments.contract import record as R

PLAIN = ["precision=fp32", "group_by_length=0", "optimizer_impl=foreach"]


def levers(s: Settings) -> list[tuple[str, list[str]]]:
    """(label, overrides) of every row: plain, each lever alone, then all of them."""
    bf16 = "bf16-mixed"
    return [
        ("plain: fp32, random batches, foreach AdamW", PLAIN),
        ("+ length-grouped batches", [*PLAIN, "group_by_length=50"]),
        (f"+ {bf16} autocast", [*PLAIN, f"precision={bf16}"]),
        ("+ fused AdamW", [*PLAIN, "optimizer_impl=fused"]),
        ("default (all levers)", [f"precision={bf16}", "group_by_length=50",
                                  "optimizer_impl=fused"]),
    ]


def _one(s: Settings, overrides: list[str], sizes: list[str]) -> dict[str, float]:
    """One short run of the harness; its steps, training time and wall time."""
    from experiments.harness.config import resolve
    from experiments.train import run

    with tempfile.TemporaryDirectory() as runs:
        t0 = time.perf_counter()
        rec = run(resolve(["method=lora", f"model={s.model}", f"seed={s.seed}", *sizes,
                           "wandb=disabled", "progress=false", "save=none",
                           f"device={s.device}", f"runs_dir={runs}", *overrides]))
        wall = time.perf_counter() - t0
    return {"steps": rec[R.STEPS], "train_s": rec[R.TIME][R.TRAIN_S], "wall_s": wall,
            "step_s": rec[R.TIME][R.TRAIN_S] / max(1, rec[R.STEPS]),
            "accuracy": rec[R.METRICS][R.TEST_ACCURACY]}


def run(s: Settings) -> dict[str, Any]:
    """Every lever's step time and end-to-end time, medians over rounds, against plain."""
    rows = levers(s)
    sizes = list(s.lever_sizes)
    samples: dict[str, list[dict[str, float]]] = {label: [] for label, _ in rows}
    for r in range(s.lever_rounds):
        shift = r % len(rows)
        for label, overrides in rows[shift:] + rows[:shift]:
            print(f"  levers round {r + 1}/{s.lever_rounds}: {label}", file=sys.stderr,
                  flush=True)
            samples[label].append(_one(s, overrides, sizes))
    plain = rows[0][0]

    def med(label: str, key: str) -> float:
        return statistics.median(x[key] for x in samples[label])

    table = [{"lever": label, "overrides": overrides, "step_s": med(label, "step_s"),
              "wall_s": med(label, "wall_s"), "accuracy": med(label, "accuracy"),
              "step_vs_plain": med(label, "step_s") / med(plain, "step_s"),
              "wall_vs_plain": med(label, "wall_s") / med(plain, "wall_s")}
             for label, overrides in rows]
    return {"rows": table, "sizes": sizes, "rounds": s.lever_rounds, "samples": samples}
