"""Wrapping the model for several processes: DDP for every method, FSDP2 for full and LoRA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from experiments.dist.process import DistInfo


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


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` per transformer block, then the root)."""
    if info.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # Every trainable parameter reaches the loss in each method, so DDP needs no extra
        # pass to find unused ones.
        return DistributedDataParallel(model, device_ids=ids)
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 modifies the model in place: itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def eval_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """What evaluation calls: the bare model under DDP (no collective in its forward)."""
    return unwrap(model) if info.strategy == "ddp" else model


@contextlib.contextmanager
def full_weights(model: nn.Module, info: DistInfo) -> Iterator[nn.Module]:
    """Inside, the model's parameters are full tensors on every rank (FSDP all-gathers them),
    so an export such as `methods.lora.export_peft(model, dir)` works on rank 0 unchanged."""
    if info.strategy != "fsdp":
        yield unwrap(model)
        return
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        yield model
    finally:
        for m in reversed(sharded):
            m.reshard()
