"""How a run spreads over processes: one `Strategy` per `dist=` value (none, ddp, fsdp).

A strategy owns everything that differs between them: wrapping the model for training, the
model evaluation calls, full weights for an export, the checkpoint's gather onto rank 0 and its
restore, how many ways the training state is split (the memory ledger), the methods it supports
(`experiments.harness.config.validate` refuses the others) and how a process exits. The harness
asks `of(info)` and never compares strategy names; adding a strategy is a subclass and an entry
in `STRATEGIES` (docs/DESIGN.md, "Adding a distributed strategy").
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, ClassVar, NoReturn

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from experiments.dist.process import DistInfo, cleanup, env_world
from experiments.harness.checkpoint import restore, set_rng_state, trainable_state

# (trainable weights, optimizer state) as full CPU tensors: what a checkpoint holds.
States = tuple[dict[str, torch.Tensor], dict[str, Any]]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: items of each outermost ModuleList of same-type modules."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(t + ".") for t in taken) or not isinstance(module, nn.ModuleList):
            continue
        items = list(module)
        if items and len({type(m) for m in items}) == 1 and list(items[0].parameters()):
            blocks.extend(items)
            taken.append(name)
    return blocks


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 modifies the model in place: itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class Strategy:
    """One process (`dist=none`); the base every strategy overrides where it differs."""

    name: ClassVar[str] = "none"
    methods: ClassVar[frozenset[str] | None] = None  # the methods it can run; None: every one

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as training calls it."""
        return model

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model as evaluation calls it."""
        return unwrap(model)

    @contextlib.contextmanager
    def full_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside, the model's parameters are full tensors (what an export writes)."""
        yield unwrap(model)

    def full_states(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo) -> States | None:
        """(trainable weights, optimizer state) on rank 0 for a checkpoint; None elsewhere."""
        if not info.main:
            return None
        return trainable_state(unwrap(model)), optimizer.state_dict()

    def restore(self, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> dict[str, Any]:
        """Put a checkpoint back into the (wrapped) model and the rest; returns its progress."""
        return restore(state, unwrap(model), optimizer, scheduler)

    def shards(self, world: int) -> int:
        """How many ways weights, gradients and optimizer state are split."""
        return 1

    def exit(self, code: int) -> NoReturn:
        """End the process with `code`, leaving the process group first."""
        cleanup()
        sys.exit(code)


class _SeveralProcesses(Strategy):
    """What every strategy over several torchrun processes shares: the exit path."""

    def exit(self, code: int) -> NoReturn:
        """Leave the process group and end the process without the interpreter's teardown.

        Gloo's worker threads can outlive `destroy_process_group` (FSDP's device mesh still
        refers to the group). One that touches a Python object while the interpreter finalizes
        is ended by Python mid-C++, which aborts the process ("terminate called without an
        active exception", SIGABRT; seen once in CI on a 2-rank FSDP resume), and torchrun then
        fails the whole job. Nothing is left to flush but stdio: the record is written
        atomically and W&B is finished before this point."""
        cleanup()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class DDP(_SeveralProcesses):
    """Every rank holds the whole model; gradients are averaged (`dist=ddp`, any method)."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel on the model's device."""
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # Every trainable parameter reaches the loss in each method, so DDP needs no extra
        # pass to find unused ones.
        return DistributedDataParallel(model, device_ids=ids)


class FSDP(_SeveralProcesses):
    """FSDP2: weights, gradients and optimizer state sharded over the ranks (`dist=fsdp`)."""

    name = "fsdp"
    # The two a test trains to the single-process result (tests/experiments/dist); the others
    # add modules and hooks that sharding per transformer block has not been checked with.
    methods = frozenset({"full", "lora"})

    def wrap(self, model: nn.Module) -> nn.Module:
        """`fully_shard` per transformer block, then the root (in place)."""
        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The sharded model itself: its forward gathers each block's weights."""
        return model

    @contextlib.contextmanager
    def full_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Every rank unshards, so an export such as `methods.lora.export_peft` works on rank 0
        unchanged."""
        sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in sharded:
            m.unshard()
        try:
            yield model
        finally:
            for m in reversed(sharded):
                m.reshard()

    def full_states(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                    info: DistInfo) -> States | None:
        """Every rank takes part in the gather; the optimizer state is then keyed by parameter
        name (torch.distributed.checkpoint's full state dict)."""
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        weights = get_model_state_dict(model, options=opts)
        optim = get_optimizer_state_dict(model, optimizer, options=opts)
        if not info.main:
            return None
        return {k: v for k, v in weights.items() if k in trainable}, optim

    def restore(self, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> dict[str, Any]:
        """The full tensors scattered into this rank's shards."""
        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, state["model"], options=opts)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return state["progress"]

    def shards(self, world: int) -> int:
        """G ways."""
        return world


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Strategy(), DDP(), FSDP())}


def resolve_name(requested: str) -> str:
    """The strategy a run uses: under torchrun (WORLD_SIZE>1) `none` means DDP."""
    return DDP.name if requested == Strategy.name and env_world() > 1 else requested


def of(info: DistInfo) -> Strategy:
    """The strategy this process runs."""
    return STRATEGIES[info.strategy]


def supports(name: str, method: str) -> bool:
    """Whether strategy `name` can run `method`."""
    allowed = STRATEGIES[name].methods
    return allowed is None or method in allowed


def exit_process(code: int) -> NoReturn:
    """End this process with `code` by the exit path of the strategy its environment runs (the
    default one: a single process, or several under torchrun)."""
    STRATEGIES[resolve_name(Strategy.name)].exit(code)
