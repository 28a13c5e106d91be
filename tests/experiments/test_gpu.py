"""CUDA path: bf16 autocast by default and the allocator's peak in the record (needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from experiments.harness.config import resolve
from experiments.train import run

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["head", "full"])
def test_cuda_run_uses_bf16_and_cuda_peak(method: str) -> None:
    rec = run(resolve([f"method={method}", "train_size=512", "eval_size=256", "epochs=1",
                       "wandb=disabled", "progress=false"]))
    assert rec["precision"] == "bf16-mixed"
    assert rec["env"]["device"].startswith("cuda")
    mem = rec["memory"]
    assert "max_memory_allocated" in mem["cuda_run_method"]
    assert mem["cuda_max_allocated_bytes"] >= 0.99 * mem["measured_peak_bytes"] > 0
    assert torch.cuda.is_available()
