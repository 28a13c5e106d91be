"""CUDA path: bf16 autocast by default and the allocator's peak in the record (needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from experiments.config import resolve
from experiments.train import run

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["head", "full"])
def test_cuda_run_uses_bf16_and_cuda_peak(method: str) -> None:
    rec = run(resolve([f"method={method}", "train_size=512", "eval_size=256", "epochs=1",
                       "wandb=disabled", "progress=false"]))
    assert rec["precision"] == "bf16-mixed"
    assert rec["env"]["device"].startswith("cuda")
    assert "max_memory_allocated" in rec["memory"]["peak_method"]
    assert rec["memory"]["peak_bytes"] > 0
    assert torch.cuda.is_available()
