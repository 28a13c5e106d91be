"""Model selection within a run, the same for every method: the best validation state is tested.

The loop validates at each epoch end (and every `eval_every` steps). `BestState` keeps a copy of
the trainable tensors at the best validation score so far (the earliest on a tie), in the
metric `select_metric` names (auto: the task's, experiments/contract/tasks.py); the loop
puts it back before the test evaluation and the saved model, and the record says which step
(`selected_step`). The copy lives on the CPU, so the device's memory figures stay training's;
under FSDP each rank keeps its own shard where it is (a checkpoint then does not carry it: a
resumed FSDP run selects among the validations after the resume).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from experiments.contract.tasks import task_metric
from experiments.harness.config import Config


def metric(cfg: Config) -> str:
    """The validation metric a run selects by: `select_metric`, or the task's when auto."""
    return task_metric(cfg.data, cfg.select_metric)


def rule(name: str) -> str:
    """How the state a run tests was chosen, for the record."""
    return (f"the state with the best validation {name} (the earliest on a tie), validated at "
            "each epoch end and every eval_every steps")


def _sharded(p: torch.Tensor) -> bool:
    return hasattr(p, "full_tensor")  # a DTensor: FSDP's shard of a parameter


def _like(p: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in `p`'s layout: FSDP may hold a parameter unsharded when validation ends (the
    copy is then whole) and sharded when the state is put back, or the other way round."""
    if _sharded(p) and not _sharded(value):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
    if _sharded(value) and not _sharded(p):
        return value.full_tensor()
    return value


class BestState:
    """The trainable state at the best validation score seen so far."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.score = -math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, model: nn.Module, step: int, score: float) -> bool:
        """Keep the model's trainable state when `score` beats the best so far."""
        if not score > self.score:
            return False
        with torch.no_grad():
            self.state = {n: p.detach().clone() if _sharded(p) else p.detach().to("cpu", copy=True)
                          for n, p in model.named_parameters() if p.requires_grad}
        self.step, self.score = step, score
        return True

    def restore(self, model: nn.Module) -> None:
        """Put the kept state back into the model (the same module it was taken from)."""
        if self.state is None:
            return
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.state:
                    p.copy_(_like(p, self.state[name]))

    def to_checkpoint(self) -> dict[str, Any] | None:
        """What a checkpoint stores (nothing for sharded state: see the module's docstring)."""
        if self.state is None or any(_sharded(t) for t in self.state.values()):
            return None
        return {"step": self.step, "score": self.score, "state": self.state}

    def load(self, saved: dict[str, Any] | None) -> None:
        """Take back what `to_checkpoint` stored."""
        if saved:
            self.step, self.score, self.state = saved["step"], saved["score"], saved["state"]
