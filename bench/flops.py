"""FLOPs of a training step: counted from the operations that ran, beside the 6·N·T convention.

The count comes from `torch.utils.flop_counter.FlopCounterMode` over one real step: every
matrix multiply and attention kernel forward and backward, so an adapter method is charged only
for what autograd computes (input gradients through frozen layers, weight gradients of trained
ones) — the honest count for adapters. For full fine-tuning it lands near the usual 6·N·T with
N the non-embedding parameters (embedding lookups do no multiply-adds), plus attention scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

# Dense bf16 tensor-core peak per device (vendor datasheets, without sparsity), for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12, "L4": 121e12}


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix multiplies and attention kernels one call of `fn` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def non_embedding_params(model: nn.Module) -> int:
    """Parameters outside embedding tables (each counted once): the N of 6·N·T."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in embedded:
            seen.add(id(p))
            total += p.numel()
    return total


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for MFU; None on CPU or an unknown GPU.

    $BENCH_PEAK_TFLOPS overrides the table (e.g. for a GPU it does not list)."""
    env = os.environ.get("BENCH_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12, "BENCH_PEAK_TFLOPS"
    if device.type != "cuda":
        return None, "no peak for CPUs: MFU is reported on CUDA only"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value, f"{key} dense bf16 datasheet peak"
    return None, f"unknown peak for {name}; set BENCH_PEAK_TFLOPS"
