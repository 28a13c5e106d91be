"""Where and how a run computes: device, precision, seeds, tokenization (used by the harness)."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from experiments.dist import process as distributed
from experiments.harness.config import UserError


@dataclass
class Context:
    """Where and how tensors run: device and precision."""

    device: torch.device
    precision: str
    dist: distributed.DistInfo = distributed.SINGLE

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the mixed-precision modes, a no-op for fp32."""
        enabled = self.precision in ("bf16-mixed", "mixed-12n")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move a batch to the device."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


def pick_device(name: str) -> torch.device:
    """auto -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available here; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"device={name!r} is not a device; use auto, cpu or cuda[:N]") from exc


def pick_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16-mixed on CUDA and on CPUs that compute bf16 natively, else fp32.

    On such CPUs (avx512_bf16 or AMX) bf16 autocast runs a LoRA step about 2.3x faster than
    fp32, and 3 seeds of LoRA and of full fine-tuning on all of rotten_tomatoes reached the
    same test accuracy in both (README, "Speed"; `make suite SUITE=precision`). Elsewhere bf16
    on a CPU is emulated and slower than fp32, so auto keeps fp32 there."""
    if precision == "auto":
        if device.type == "cuda" or cpu_has_native_bf16():
            return "bf16-mixed"
        return "fp32"
    return precision


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (avx512_bf16 or AMX), from the kernel's
    flags: torch reports only its vector ISA level (`torch.backends.cpu.get_cpu_capability`),
    which does not say whether bf16 is native or emulated. $TUNEBENCH_CPU_BF16=0|1 overrides
    the reading (the test suite pins it, so results do not depend on the CI machine's CPU)."""
    forced = os.environ.get("TUNEBENCH_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def tokenize(splits: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Token ids per split, unpadded (the collator pads each batch to its longest row)."""
    import datasets

    datasets.disable_progress_bars()
    out = {}
    for name, ds in splits.items():
        # A sentence pair (a `text_pair` column) is encoded as the tokenizer pairs texts: BERT's
        # [CLS] a [SEP] b [SEP] with token types 0 and 1, RoBERTa's <s> a </s></s> b </s>, ...
        pair = "text_pair" in ds.column_names
        texts = [c for c in ("text", "text_pair") if c in ds.column_names]
        ds = ds.map(lambda b, pair=pair: tokenizer(
            b["text"], b["text_pair"] if pair else None, truncation=True,
            max_length=max_length), batched=True, remove_columns=texts)
        out[name] = ds.rename_column("label", "labels").with_format("torch")
    return out
