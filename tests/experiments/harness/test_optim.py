"""8-bit AdamW: it steps on CPU, follows torch's AdamW, and its state is the bytes counted."""

from __future__ import annotations

import pytest
import torch

from experiments.harness.config import UserError
from experiments.harness.optim import (
    MIN_8BIT_SIZE,
    adamw8bit_state_bytes,
    make_adamw,
    optimizer_impl,
)
from experiments.memory.ledger import optimizer_state_tensors, unique_bytes


def _params() -> list[torch.nn.Parameter]:
    """A matrix over the 8-bit threshold, one under it, and a bias (fp32 moments)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(96, 64), (32, 64), (96,)]  # 6144 >= 4096 > 2048, 96
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _train(impl: str, steps: int = 5) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    params = _params()
    opt = make_adamw([{"params": params, "weight_decay": 0.01}], 1e-2, "fp32", impl)
    gen = torch.Generator().manual_seed(1)
    targets = [torch.randn(p.shape, generator=gen) for p in params]
    for _ in range(steps):
        opt.zero_grad()
        sum(((p - t) ** 2).sum() for p, t in zip(params, targets, strict=True)).backward()
        opt.step()
    return [p.detach() for p in params], opt


def test_adamw8bit_steps_on_cpu_close_to_torch_adamw() -> None:
    """Same updates as torch's AdamW up to the 8-bit moments' rounding (a few percent of the
    distance travelled, exact for the tensors with fp32 moments)."""
    mine, opt = _train("adamw8bit")
    ref, _ = _train("loop")
    assert optimizer_impl(opt) == "adamw8bit"
    for a, b, start in zip(mine, ref, _params(), strict=True):
        moved = (b - start.detach()).norm()
        assert (a - b).norm() < 0.05 * moved


def test_adamw8bit_state_is_the_counted_bytes() -> None:
    """8-bit moments (uint8) for the big tensor, fp32 for the small ones, and exactly the bytes
    `adamw8bit_state_bytes` predicts (absmax per 256 and the shared maps included)."""
    params, opt = _train("adamw8bit", steps=1)
    per_param, _ = optimizer_state_tensors(opt)
    total, by_dtype = unique_bytes(per_param)
    numels = [p.numel() for p in params]
    assert total == adamw8bit_state_bytes(numels)
    assert by_dtype["uint8"] == 2 * numels[0] and numels[0] >= MIN_8BIT_SIZE
    assert adamw8bit_state_bytes([100]) == 800 and adamw8bit_state_bytes([]) == 0


def test_adamw8bit_refuses_mixed_12n() -> None:
    """Its own layout: not combinable with the 12N layout (bf16 gradients and momentum)."""
    with pytest.raises(UserError, match="adamw8bit does not apply to precision=mixed-12n"):
        make_adamw([{"params": _params()}], 1e-3, "mixed-12n", "adamw8bit")
