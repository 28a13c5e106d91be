"""Section 4: step time and memory as LoRA rank grows, and as the sequence grows (lora, full)."""

from __future__ import annotations

import sys
from typing import Any

from bench.timing import interleaved, median_ratio
from bench.workloads import Settings, build
from experiments.contract import record as R


def ranks(s: Settings) -> dict[str, Any]:
    """LoRA on every layer at each rank: step time, ledger and activations."""
    workloads = []
    for r in s.ranks:
        print(f"  building lora r={r}", file=sys.stderr, flush=True)
        workloads.append(build(f"lora r={r}", "lora", ["lora.targets=all", f"lora.rank={r}"], s))
    times = interleaved({w.label: w.step for w in workloads}, s.scale_rounds, s.device,
                        desc="rank scaling", progress=s.progress)
    rows = [{"rank": r, **w.summary(times[w.label])}
            for r, w in zip(s.ranks, workloads, strict=True)]
    return {"rows": rows, "rounds": s.scale_rounds, "times_s": times}


def crossing(points: list[tuple[int, int, int]]) -> dict[str, Any]:
    """Where activations overtake a fixed amount (the optimizer state, the ledger), from
    (seq, activations, amount) points: the sequence length by linear interpolation between the
    two measured points around it, or that it lies outside the measured range."""
    if not points:
        return {"seq": None, "where": "no points"}
    if points[0][1] > points[0][2]:
        return {"seq": None, "where": f"already at {points[0][0]} (the shortest measured)"}
    for (s0, a0, o0), (s1, a1, o1) in zip(points, points[1:], strict=False):
        if a1 > o1:
            # Activations grow with the sequence; the optimizer state does not.
            d0, d1 = a0 - o0, a1 - o1
            seq = s0 + (s1 - s0) * (-d0) / (d1 - d0)
            return {"seq": round(seq, 1), "where": f"between {s0} and {s1}"}
    return {"seq": None, "where": f"beyond {points[-1][0]} (the longest measured)"}


def sequences(s: Settings) -> dict[str, Any]:
    """lora (all, r=8) and full at each sequence length: step time, activations vs optimizer."""
    specs = {"lora": ["lora.targets=all", "lora.rank=8"], "full": []}
    workloads = []
    for seq in s.seqs:
        for method, options in specs.items():
            print(f"  building {method} seq={seq}", file=sys.stderr, flush=True)
            workloads.append((seq, build(f"{method} seq={seq}", method, options, s,
                                         seq_len=seq)))
    times = interleaved({w.label: w.step for _, w in workloads}, s.scale_rounds, s.device,
                        desc="sequence scaling", progress=s.progress)
    rows = [{"seq": seq, **w.summary(times[w.label]),
             "step_vs_full": median_ratio(times[w.label], times[f"full seq={seq}"])}
            for seq, w in workloads]
    def cross(key: str) -> dict[str, Any]:
        return {m: crossing([(r["seq"], r[R.ACTIVATIONS_PEAK_BYTES], r[key]) for r in rows
                             if r["method"] == m]) for m in specs}

    return {"rows": rows, "rounds": s.scale_rounds, "times_s": times,
            "activations_overtake_optimizer": cross(R.OPTIMIZER_BYTES),
            "activations_overtake_ledger": cross(R.LEDGER_BYTES)}


def run(s: Settings) -> dict[str, Any]:
    """Both scaling curves."""
    return {"ranks": ranks(s), "sequences": sequences(s)}
