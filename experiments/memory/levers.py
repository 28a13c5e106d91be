"""The lecture's formulas extended to the memory levers: a 4-bit frozen base and 8-bit AdamW.

- QLoRA (`lora.quantize=nf4|fp4`, `methods.quantize`): the frozen linear weights cost half a
  byte per element plus their quantisation constants; the rest of the frozen base (embeddings,
  norms, biases) stays at 4 bytes: `4N + 0.5Nq + C + 16M`, N the frozen fp32 parameters, Nq the
  4-bit elements, C the constants in closed form (`methods.quantize.constant_bytes`).
- 8-bit AdamW (`optimizer_impl=adamw8bit`): fp32 weights and gradients and 2 bytes of state per
  element, `4N + 4N + 2N` for full fine-tuning. bitsandbytes keeps 8-bit moments only for tensors
  of at least 4096 elements; smaller ones (biases, norms, small LoRA matrices) keep fp32 moments.
  The formula counts both exactly: `2N8 + 8Ns` for the state (N8 + Ns = N), the absmax of each
  256 elements and the two shared quantile maps inside the 2N8 term's bytes
  (`experiments.harness.optim.adamw8bit_state_bytes`).

Activation checkpointing has no formula here: it moves the activations, which no formula of the
lecture counts; the measurement shows it.
"""

from __future__ import annotations

from typing import Any

import torch

from experiments.contract import record as R
from experiments.harness.optim import adamw8bit_state_bytes, optimizer_impl
from experiments.memory.ledger import BYTES_PER_FROZEN, BYTES_PER_TRAINABLE
from methods import quantize


def predict(model: torch.nn.Module, optimizer: torch.optim.Optimizer, n_total: int,
            n_trainable: int, precision: str) -> tuple[int, str, int, str] | None:
    """(bytes, formula, the formula's N, what it counts) when a lever applies, else None."""
    eight = optimizer_impl(optimizer) == "adamw8bit"
    layout = quantize.layout(model)
    nq = layout["quantized_params"]
    if not eight and not nq:
        return None
    per = BYTES_PER_TRAINABLE[precision]
    if eight:
        numels = [p.numel() for p in model.parameters() if p.requires_grad]
        n8 = sum(n for n in numels if n >= 4096)
        trained_bytes = 4 * n_trainable + 4 * n_trainable + adamw8bit_state_bytes(numels)
    else:
        trained_bytes = per * n_trainable
    full = n_trainable == n_total
    sym = "N" if full else "M"
    trained = (f"4{sym}+4{sym}+2{sym}8+8{sym}s" if eight else f"{per}M")
    frozen_n = n_total - n_trainable - nq
    parts = [] if full else [f"{BYTES_PER_FROZEN}N"]
    frozen_bytes = BYTES_PER_FROZEN * frozen_n
    if nq:
        parts.append("0.5Nq+C")
        frozen_bytes += layout["quantized_weight_bytes"] + layout["quant_constant_bytes"]
    formula = "+".join([*parts, trained])
    detail = []
    if not full:
        detail.append(f"N = frozen parameters kept in fp32 ({frozen_n:,}) at 4 bytes")
    if nq:
        detail.append(f"Nq = frozen linear weights in 4 bits ({nq:,}) at 0.5 bytes, C = their "
                      f"scales, code tables and offsets ({layout['quant_constant_bytes']:,} "
                      "bytes, closed form)")
    if eight:
        detail.append(f"{sym} trained at fp32 weight + grad (4+4) and 8-bit AdamW state: 2 bytes "
                      f"in tensors >= 4096 elements ({sym}8 = {n8:,}, with an fp32 absmax per "
                      f"256 and 2 KiB of shared quantile maps), 8 in smaller ones ({sym}s = "
                      f"{n_trainable - n8:,})")
    else:
        detail.append(f"M = trainable at {per} bytes")
    return (frozen_bytes + trained_bytes, formula, frozen_n if not full else n_total,
            "; ".join(detail) + "; activations and buffers excluded")


def lever_info(model: torch.nn.Module) -> dict[str, Any]:
    """The record's note of a 4-bit base: elements in 4 bits (absent without one)."""
    nq = quantize.layout(model)["quantized_params"]
    return {R.QUANTIZED_PARAMS: nq} if nq else {}
