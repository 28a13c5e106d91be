"""Section 6: where a default LoRA step spends its time, from torch's profiler, by kind of op.

LoRA (the default run's method and preset) on the bench's fixed batch, at the precision a default
run picks on this device (`precision=auto`: bf16-mixed on CUDA and on CPUs with native bf16):
warm-up steps, then `torch.profiler` over a few of the harness's own training steps. Each aten
op's self time (its own, without its children's, so nothing is counted twice) goes to one kind;
what no aten op accounts for (Python, the autograd engine, dispatch) is the step's wall time
less their sum. This is where the next lever has to come from.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from torch.profiler import ProfilerActivity, profile

from bench.timing import sync
from bench.workloads import Settings, build
from experiments.harness.runtime import pick_precision

# (kind, exact aten names, name prefixes). The first kind that matches an op wins.
KINDS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("matrix multiplies", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                           "aten::matmul", "aten::linear"),
     ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention")),
    ("random numbers for dropout", ("aten::bernoulli_", "aten::uniform_", "aten::random_",
                                    "aten::rand", "aten::rand_like", "aten::native_dropout"),
     ()),
    ("copies and dtype casts", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone",
                                "aten::contiguous"), ()),
    ("optimizer update", (), ("aten::_fused_adam", "aten::_foreach_")),
)
OTHER = "other aten ops (elementwise, norms, softmax, reductions)"
OUTSIDE = "outside aten ops (Python, autograd engine, dispatch)"


def kind_of(name: str) -> str:
    """The kind an aten op's time is counted under."""
    for kind, names, prefixes in KINDS:
        if name in names or name.startswith(prefixes):
            return kind
    return OTHER


def _self_us(evt: Any, cuda: bool) -> float:
    """An event's own time in microseconds: on the device under CUDA, else on the CPU."""
    if cuda:
        return float(getattr(evt, "self_device_time_total", 0.0))
    return float(evt.self_cpu_time_total)


def run(s: Settings) -> dict[str, Any]:
    """Profile `s.profile_steps` default LoRA steps; time per step by kind and the top ops."""
    cuda = s.device.type == "cuda"
    precision = pick_precision("auto", s.device)
    w = build("lora", "lora", [], dataclasses.replace(s, precision=precision))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    steps = s.profile_steps
    with profile(activities=activities) as prof:
        sync(s.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            w.step()
        sync(s.device)
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    ops = [(e.key, _self_us(e, cuda) / 1e3 / steps, e.count / steps)
           for e in prof.key_averages() if e.key.startswith("aten::")]
    by_kind: dict[str, float] = {k: 0.0 for k, _, _ in KINDS} | {OTHER: 0.0}
    for name, ms, _ in ops:
        by_kind[kind_of(name)] += ms
    if not cuda:  # on a GPU the device time and the host's wall time are different clocks
        by_kind[OUTSIDE] = max(0.0, wall_ms - sum(by_kind.values()))
    total = wall_ms if not cuda else sum(by_kind.values())
    kinds = [{"kind": k, "ms_per_step": ms, "share": ms / total if total else 0.0}
             for k, ms in by_kind.items()]
    top = sorted(ops, key=lambda o: -o[1])[:8]
    return {"method": "lora", "precision": precision, "steps": steps,
            "batch": list(w.batch["input_ids"].shape), "step_wall_ms": wall_ms,
            "clock": "device" if cuda else "cpu", "kinds": kinds,
            "top_ops": [{"op": n, "ms_per_step": ms, "calls_per_step": c, "kind": kind_of(n)}
                        for n, ms, c in top]}
