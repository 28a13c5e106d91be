"""Section 1: the cost of a training step per method, as a ratio to full fine-tuning."""

from __future__ import annotations

import sys
from typing import Any

from bench.timing import interleaved, median_ratio
from bench.workloads import Settings, build
from experiments.contract import record as R

BASELINE = "full"


def variants(s: Settings) -> list[tuple[str, str, list[str]]]:
    """(label, method, options) of every row; `full` at the device's training precision is
    the baseline (fp32 on CPU, bf16-mixed on CUDA)."""
    return [
        ("head (cached features)", "head", ["head.cache_features=true"]),
        ("head (uncached)", "head", ["head.cache_features=false"]),
        ("embedding", "embedding", []),
        ("soft_prompt (20 tokens)", "soft_prompt", ["soft_prompt.prompt_length=20"]),
        ("lora attention r=8", "lora", ["lora.targets=attention", "lora.rank=8"]),
        ("lora mlp r=8", "lora", ["lora.targets=mlp", "lora.rank=8"]),
        ("lora all r=8", "lora", ["lora.targets=all", "lora.rank=8"]),
        ("dora all r=8", "dora", ["dora.targets=all", "dora.rank=8"]),
        (BASELINE, "full", []),
        ("full mixed-12n", "full", ["precision=mixed-12n"]),
    ]


def run(s: Settings) -> dict[str, Any]:
    """Build every variant, time them interleaved, and put each beside full fine-tuning."""
    workloads = []
    for label, method, options in variants(s):
        print(f"  building {label}", file=sys.stderr, flush=True)
        workloads.append(build(label, method, options, s))
    times = interleaved({w.label: w.step for w in workloads}, s.rounds, s.device,
                        desc="method steps", progress=s.progress)
    base = next(w for w in workloads if w.label == BASELINE)
    rows = []
    for w in workloads:
        row = w.summary(times[w.label])
        row["step_vs_full"] = median_ratio(times[w.label], times[BASELINE])
        row["ledger_vs_full"] = row[R.LEDGER_BYTES] / base.memory[R.LEDGER_BYTES]
        rows.append(row)
    return {"rows": rows, "baseline": BASELINE, "rounds": s.rounds,
            "batch": [s.batch_size, s.seq_len], "times_s": times}
